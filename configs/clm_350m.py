"""GPT-2 Medium shapes (24 layers, d=1024, seq 1024) as a Llama-style model: the 350M speed target.

Vocabulary 50,304 (GPT-2's, padded to a multiple of 128), tied embeddings, 16 heads of 64,
SwiGLU MLP of 2,816 (8/3 x d rounded up to 128): 359.8M parameters. Sized for benchmarking one
H100 (issue 11's target: 45% MFU): 32 x 1024 tokens per step.

Layers unrolled (`scan_layers=False`): on an H200 (2026-11-27, docs/performance.md) 46.9% MFU
against 37.1% scanned (175 vs 222 ms a step, 43.0 vs 69.0 GiB; two calls); compile 21 s, not 9.

    python tools/benchmark.py train --config=configs/clm_350m.py
"""

from jaxpretrain.config import default_config


def get_config():
    config = default_config()
    config.model.vocab_size = 50304
    config.model.num_layers = 24
    config.model.embed_dim = 1024
    config.model.num_heads = 16
    config.model.num_kv_heads = 16
    config.model.head_dim = 64
    config.model.mlp_dim = 2816
    config.model.max_seq_len = 1024
    config.model.remat_policy = "none"
    config.model.scan_layers = False

    config.train.steps = 20000
    config.train.batch_size = 32
    config.train.seq_len = 1024
    config.train.lr = 3e-4
    config.train.warmup_steps = 700
    config.train.log_every = 50

    config.checkpoint.every = 1000
    config.eval.every = 1000
    config.mesh.data = -1
    config.data.vocab_size = 50304
    return config
