"""Attention for packed rows: rotary position embedding and grouped-query attention.

The mask (`attention_impls.attention_mask`) and the attention computation itself, run where
`model.attention` says, are in attention_impls.py.

Shape suffixes: B batch, L length (queries), S length (keys), D embed, N query heads,
K key/value heads, H head_dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpretrain.mesh import constrain
from jaxpretrain.model.attention_impls import AttentionMask, dot_product_attention
from jaxpretrain.model.config import ModelConfig


def apply_rope(x_BLNH: jax.Array, positions_BL: jax.Array, theta: float) -> jax.Array:
    """Rotates query or key features by their positions (RoPE, "rotate_half" convention).

    Feature i is paired with feature i + H/2 (the first and second halves of head_dim), as in
    Hugging Face Llama, so q/k kernels export without permutation. Computed in float32; the result
    has the dtype of `x_BLNH`.

    Args:
      x_BLNH: [batch, length, heads, head_dim] queries or keys; head_dim even.
      positions_BL: [batch, length] int position of each token inside its segment.
      theta: the RoPE base (`rope_theta`).
    """
    head_dim = x_BLNH.shape[-1]
    half = head_dim // 2
    inverse_frequency_h = 1.0 / (theta ** (jnp.arange(half, dtype=jnp.float32) * 2.0 / head_dim))
    angle_BLh = positions_BL.astype(jnp.float32)[..., None] * inverse_frequency_h
    cos_BL1h = jnp.cos(angle_BLh)[:, :, None, :]
    sin_BL1h = jnp.sin(angle_BLh)[:, :, None, :]
    x_BLNH32 = x_BLNH.astype(jnp.float32)
    first_BLNh, second_BLNh = x_BLNH32[..., :half], x_BLNH32[..., half:]
    rotated_BLNH = jnp.concatenate(
        [
            first_BLNh * cos_BL1h - second_BLNh * sin_BL1h,
            second_BLNh * cos_BL1h + first_BLNh * sin_BL1h,
        ],
        axis=-1,
    )
    return rotated_BLNH.astype(x_BLNH.dtype)


def output_projection_std(cfg: ModelConfig) -> float:
    """Init std of the projections that write into the residual stream (attention out, MLP down).

    The residual stream sums 2 * num_layers such outputs; dividing by sqrt(2 * num_layers) (as
    GPT-2 and OLMo do) keeps its variance at init independent of depth.
    """
    return cfg.init_std / (2 * cfg.num_layers) ** 0.5


class Attention(nnx.Module):
    """Grouped-query self-attention with RoPE and no biases.

    Query head n reads key/value head n // (num_heads // num_kv_heads), the grouping of Hugging Face
    `repeat_kv` and of `jax.nn.dot_product_attention`. `cfg.attention` picks the implementation.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.rope_theta = cfg.rope_theta
        self.implementation = cfg.attention
        d, n, k, h = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        common = dict(dtype=cfg.compute_dtype, param_dtype=cfg.parameter_dtype, rngs=rngs)
        normal = nnx.initializers.normal(cfg.init_std)
        self.query = nnx.Einsum(
            "BLD,DNH->BLNH",
            (d, n, h),
            kernel_init=nnx.with_partitioning(normal, ("embed", "heads", "head_dim")),
            **common,
        )
        self.key = nnx.Einsum(
            "BSD,DKH->BSKH",
            (d, k, h),
            kernel_init=nnx.with_partitioning(normal, ("embed", "kv_heads", "head_dim")),
            **common,
        )
        self.value = nnx.Einsum(
            "BSD,DKH->BSKH",
            (d, k, h),
            kernel_init=nnx.with_partitioning(normal, ("embed", "kv_heads", "head_dim")),
            **common,
        )
        self.out = nnx.Einsum(
            "BLNH,NHD->BLD",
            (n, h, d),
            kernel_init=nnx.with_partitioning(
                nnx.initializers.normal(output_projection_std(cfg)), ("heads", "head_dim", "embed")
            ),
            **common,
        )

    def __call__(self, x_BLD: jax.Array, positions_BL: jax.Array, mask: AttentionMask) -> jax.Array:
        """Attends within the mask.

        Args:
          x_BLD: [batch, length, embed] normalized inputs in the compute dtype.
          positions_BL: [batch, length] int positions for RoPE.
          mask: from `attention_mask`.

        Returns:
          [batch, length, embed] in the compute dtype.
        """
        query_BLNH = apply_rope(self.query(x_BLD), positions_BL, self.rope_theta)
        key_BSKH = apply_rope(self.key(x_BLD), positions_BL, self.rope_theta)
        value_BSKH = self.value(x_BLD)
        query_BLNH = constrain(query_BLNH, ("batch", "length", "heads", "head_dim"))
        key_BSKH = constrain(key_BSKH, ("batch", "length", "kv_heads", "head_dim"))
        value_BSKH = constrain(value_BSKH, ("batch", "length", "kv_heads", "head_dim"))
        encoded_BLNH = dot_product_attention(
            query_BLNH, key_BSKH, value_BSKH, mask, self.implementation
        )
        return self.out(encoded_BLNH)
