"""Llama-2-70B shapes: 80 layers, d=8192, 64 heads sharing 8 kv heads, SwiGLU 28672, untied,
4k context, 4M-token batches; 8-way tensor parallelism inside a host, FSDP across hosts.

Meant for 32+ nodes of 8 H100/H200s, or a TPU v5p-512+ slice (with `mesh.tensor=4`, a v5p
tray): parameters + Adam state are 69.0B x 12 bytes = 771 GiB in all, 3 GiB per device on 256.
Over slow links between hosts add pipeline stages across them, e.g.
`--config.mesh.pipe=4 --config.mesh.microbatches=8` (tensor 8 x FSDP inside each stage).

    python -m jaxpretrain.main --config=configs/clm_70b.py --workdir=gs://BUCKET/clm_70b \
        --config.data.dir=gs://BUCKET/data/my_corpus
    python -m jaxpretrain.main --config=configs/clm_70b.py --workdir=/tmp/x --mode=dry_run
"""

from jaxpretrain.config import MESH_PRESETS, default_config


def get_config():
    config = default_config()
    config.model.vocab_size = 32000
    config.model.num_layers = 80
    config.model.embed_dim = 8192
    config.model.num_heads = 64
    config.model.num_kv_heads = 8
    config.model.head_dim = 128
    config.model.mlp_dim = 28672
    config.model.max_seq_len = 4096
    config.model.tie_embeddings = False
    config.model.remat_policy = "full"

    config.train.steps = 500000  # 2T tokens, as Llama 2
    config.train.batch_size = 1024
    config.train.grad_accum_steps = 4
    config.train.seq_len = 4096
    config.train.lr = 1.5e-4
    config.train.warmup_steps = 2000
    config.train.eps = 1e-5
    config.train.log_every = 10

    config.checkpoint.every = 1000
    config.eval.every = 2000
    config.eval.steps = 50

    config.mesh.update(MESH_PRESETS["fsdp_tp"])
    config.data.vocab_size = 32000
    return config
