"""Parameter and FLOP accounting, and model FLOPs utilisation (MFU)."""

from __future__ import annotations

import jax

from jaxpretrain.model import ModelConfig

# Dense bf16 peak FLOP/s per device, from the vendors' spec sheets. Matched by substring of
# `jax.Device.device_kind`, most specific first.
PEAK_FLOPS_BY_DEVICE_KIND = (
    ("TPU v6 lite", 918e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v4", 275e12),
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
)


def matmul_params(cfg: ModelConfig) -> int:
    """Parameters that take part in a matmul per token (the embedding lookup does not)."""
    attention = 2 * cfg.embed_dim * cfg.num_heads * cfg.head_dim
    attention += 2 * cfg.embed_dim * cfg.num_kv_heads * cfg.head_dim
    mlp = 3 * cfg.embed_dim * cfg.mlp_dim
    output_projection = cfg.embed_dim * cfg.vocab_size  # tied or not, it is a matmul
    return cfg.num_layers * (attention + mlp) + output_projection


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward + backward FLOPs per trained token (PaLM paper, appendix B: 6N + 12 L H Dh T).

    The attention term counts the whole score matrix, as PaLM does, although causal masking
    leaves half of it unused; MFU is therefore comparable with PaLM/MaxText figures.
    """
    attention = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
    return 6.0 * matmul_params(cfg) + attention


def peak_flops_per_device(device: jax.Device, override_tflops: float = 0.0) -> float | None:
    """Peak FLOP/s of one device; None when unknown (e.g. CPU) and no override is configured."""
    if override_tflops > 0:
        return override_tflops * 1e12
    kind = getattr(device, "device_kind", "")
    for name, flops in PEAK_FLOPS_BY_DEVICE_KIND:
        if name.lower() in kind.lower():
            return flops
    return None


def mfu(
    tokens_per_second: float, flops_per_token: float, peak_per_device: float | None, devices: int
) -> float | None:
    """Achieved model FLOP/s over the mesh's peak, in [0, 1]; None when the peak is unknown."""
    if peak_per_device is None:
        return None
    return tokens_per_second * flops_per_token / (peak_per_device * devices)
