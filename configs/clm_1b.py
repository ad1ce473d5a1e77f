"""A 1.3B Llama-style model (24 layers, d=2048, seq 2048; TinyLlama-like widths): the ~1.3B
speed target.

Vocabulary 32,000, untied embeddings, 16 heads of 128, SwiGLU MLP of 5,632: 1.36B parameters.
Sized for benchmarking one H100 (issue 11's target: 48% MFU): 8 x 2048 tokens per step,
activations rematerialised except the matmul outputs (`dots_no_batch`). Layers scanned: on an
H200 (2026-11-27, docs/performance.md) 51.7% MFU; unrolled was within the noise (286 vs 290 ms
a step, ranges overlapping) at +1.8 GiB and 20 s of compile instead of 11.

    python tools/benchmark.py train --config=configs/clm_1b.py
"""

from jaxpretrain.config import default_config


def get_config():
    config = default_config()
    config.model.vocab_size = 32000
    config.model.num_layers = 24
    config.model.embed_dim = 2048
    config.model.num_heads = 16
    config.model.num_kv_heads = 16
    config.model.head_dim = 128
    config.model.mlp_dim = 5632
    config.model.max_seq_len = 2048
    config.model.tie_embeddings = False
    config.model.remat_policy = "dots_no_batch"

    config.train.steps = 50000
    config.train.batch_size = 8
    config.train.seq_len = 2048
    config.train.lr = 3e-4
    config.train.warmup_steps = 2000
    config.train.log_every = 20

    config.checkpoint.every = 1000
    config.eval.every = 2000
    config.mesh.data = -1
    config.data.vocab_size = 32000
    return config
