"""GPT-2 Small shapes (12 layers, d=768, seq 1024) as a Llama-style model: the 124M speed target.

Vocabulary 50,304 (GPT-2's 50,257 padded to a multiple of 128, as nanoGPT and llm.c do), tied
embeddings, SwiGLU MLP of 2,048: 123.6M parameters. Sized for benchmarking one H100 (issue 11's
target: 40% MFU): 32 x 1024 tokens per step; for nanoGPT's 0.5M-token batch on one GPU add
`--config.train.grad_accum_steps=16`.

Layers unrolled (`scan_layers=False`): on an H200 (2026-11-27, docs/performance.md) the
scanned step took 1.25x as long (86.9 vs 69.6 ms) and held 33.2 vs 23.7 GiB; unrolled it
compiled in 13.6 s (the scanned program: 7.8 and 11.7 s).

    python tools/benchmark.py train --config=configs/clm_124m.py
"""

from jaxpretrain.config import default_config


def get_config():
    config = default_config()
    config.model.vocab_size = 50304
    config.model.num_layers = 12
    config.model.embed_dim = 768
    config.model.num_heads = 12
    config.model.num_kv_heads = 12
    config.model.head_dim = 64
    config.model.mlp_dim = 2048
    config.model.max_seq_len = 1024
    config.model.remat_policy = "none"
    config.model.scan_layers = False

    config.train.steps = 20000
    config.train.batch_size = 32
    config.train.seq_len = 1024
    config.train.lr = 6e-4
    config.train.warmup_steps = 700
    config.train.log_every = 50

    config.checkpoint.every = 1000
    config.eval.every = 1000
    config.mesh.data = -1
    config.data.vocab_size = 50304
    return config
