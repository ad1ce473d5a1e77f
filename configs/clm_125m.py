"""125M-parameter causal LM (GPT-3 Small shapes, Llama-style blocks), 0.5M-token batches.

Meant for one 8-GPU node or a small TPU slice (v5e-8 / v4-8), data parallel over every device.
On fewer devices raise `train.grad_accum_steps`: the float32 logits of the 512 x 1024-token
batch alone are 67 GB (524,288 tokens x 32,000 x 4 bytes).

    python -m jaxpretrain.main --config=configs/clm_125m.py --workdir=gs://BUCKET/clm_125m \
        --config.data.dir=gs://BUCKET/data/my_corpus
"""

from jaxpretrain.config import default_config


def get_config():
    config = default_config()
    config.model.vocab_size = 32000
    config.model.num_layers = 12
    config.model.embed_dim = 768
    config.model.num_heads = 12
    config.model.num_kv_heads = 12
    config.model.head_dim = 64
    config.model.mlp_dim = 2048
    config.model.max_seq_len = 2048
    config.model.remat_policy = "dots_no_batch"

    config.train.steps = 20000  # ~10B tokens
    config.train.batch_size = 512
    config.train.seq_len = 1024
    config.train.lr = 6e-4
    config.train.warmup_steps = 700
    config.train.log_every = 50

    config.checkpoint.every = 1000
    config.eval.every = 1000
    config.eval.steps = 50

    config.mesh.data = -1
    config.data.vocab_size = 32000
    return config
