"""Parameter and FLOP accounting, and model FLOPs utilisation (MFU)."""

from __future__ import annotations

import jax

from jaxpretrain import hardware
from jaxpretrain.model import ModelConfig


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
    return 6.0 * matmul_params(cfg) + attention_flops_per_token(cfg, seq_len)


def attention_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """The attention term of `train_flops_per_token`, 12 L H Dh T: QK^T and AV over the whole
    T x T score matrix, forward and backward (not halved for causal masking)."""
    return 12.0 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len


def peak_flops_per_device(device: jax.Device, override_tflops: float = 0.0) -> float | None:
    """Peak FLOP/s of one device; None when unknown (e.g. CPU) and no override is configured."""
    if override_tflops > 0:
        return override_tflops * 1e12
    entry = hardware.by_device_kind(getattr(device, "device_kind", ""))
    return entry.peak_flops if entry else None


def mfu(
    tokens_per_second: float, flops_per_token: float, peak_per_device: float | None, devices: int
) -> float | None:
    """Achieved model FLOP/s over the mesh's peak, in [0, 1]; None when the peak is unknown."""
    if peak_per_device is None:
        return None
    return tokens_per_second * flops_per_token / (peak_per_device * devices)
