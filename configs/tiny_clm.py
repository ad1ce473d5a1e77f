"""Tiny causal LM (~4M parameters) on the embedded Python-stdlib corpus: CPU, minutes.

    python -m jaxpretrain.main --config=configs/tiny_clm.py --workdir=runs/tiny_clm

float32 compute: on CPU, XLA's bfloat16 matmuls are slower than float32 ones.
"""

from jaxpretrain.config import default_config


def get_config():
    config = default_config()
    config.model.num_layers = 4
    config.model.embed_dim = 256
    config.model.num_heads = 4
    config.model.num_kv_heads = 2
    config.model.head_dim = 64
    config.model.mlp_dim = 704
    config.model.max_seq_len = 256
    config.model.dtype = "float32"

    config.train.steps = 300
    config.train.batch_size = 16
    config.train.seq_len = 256
    config.train.lr = 3e-3
    config.train.warmup_steps = 30
    config.train.log_every = 10

    config.checkpoint.every = 100
    config.eval.every = 100
    config.eval.steps = 8

    config.data.vocab_size = 4096
    return config
