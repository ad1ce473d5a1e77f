"""Llama-2-7B shapes: 32 layers, d=4096, 32 heads, SwiGLU 11008, untied, 4k context, 4M-token
batches, parameters and optimizer state sharded (FSDP) over every device.

Meant for a TPU v5p-128 / v4-128 slice or 8+ nodes of 8 H100s (64+ devices): parameters + Adam
state are 6.74B x 12 bytes = 75 GiB in all, 1.2 GiB per device on 64. The 1024-sequence batch
runs as `train.grad_accum_steps=4` micro-steps, 4 sequences of 4096 tokens per device per
micro-step on 64 devices; on more devices lower it (it must divide 1024 / device count).

    python -m jaxpretrain.main --config=configs/clm_7b.py --workdir=gs://BUCKET/clm_7b \
        --config.data.dir=gs://BUCKET/data/my_corpus
    python -m jaxpretrain.main --config=configs/clm_7b.py --workdir=/tmp/x --mode=dry_run
"""

from jaxpretrain.config import MESH_PRESETS, default_config


def get_config():
    config = default_config()
    config.model.vocab_size = 32000
    config.model.num_layers = 32
    config.model.embed_dim = 4096
    config.model.num_heads = 32
    config.model.num_kv_heads = 32
    config.model.head_dim = 128
    config.model.mlp_dim = 11008
    config.model.max_seq_len = 4096
    config.model.tie_embeddings = False
    config.model.remat_policy = "full"

    config.train.steps = 500000  # 2T tokens, as Llama 2
    config.train.batch_size = 1024
    config.train.grad_accum_steps = 4
    config.train.seq_len = 4096
    config.train.lr = 3e-4
    config.train.warmup_steps = 2000
    config.train.eps = 1e-5
    config.train.log_every = 10

    config.checkpoint.every = 1000
    config.eval.every = 2000
    config.eval.steps = 50

    config.mesh.update(MESH_PRESETS["fsdp"])
    config.data.vocab_size = 32000
    return config
