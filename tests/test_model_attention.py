"""Attention pieces against straightforward references: the mask rule, RoPE, one GQA layer."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpretrain.model import ModelConfig
from jaxpretrain.model.attention import Attention, apply_rope
from jaxpretrain.model.attention_impls import attention_mask, dense_mask

CFG = ModelConfig(
    vocab_size=64,
    num_layers=2,
    embed_dim=32,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    mlp_dim=64,
    max_seq_len=16,
    dtype="float32",
)


def packed_features(rng: np.random.Generator, batch: int, length: int):
    """Random packed rows: a few segments, trailing padding, a bidirectional prefix per segment."""
    segment_ids = np.zeros((batch, length), np.int32)
    positions = np.zeros((batch, length), np.int32)
    bidirectional = np.zeros((batch, length), np.int32)
    for row in range(batch):
        start, segment = 0, 1
        while start < length - 2:
            size = int(rng.integers(1, 7))
            end = min(start + size, length - 2)
            segment_ids[row, start:end] = segment
            positions[row, start:end] = np.arange(end - start)
            bidirectional[row, start : start + int(rng.integers(0, end - start + 1))] = 1
            start, segment = end, segment + 1
    return segment_ids, positions, bidirectional


def test_mask_follows_the_rule_for_every_pair():
    segment_ids, _, bidirectional = packed_features(np.random.default_rng(0), 3, 16)
    mask = np.asarray(
        dense_mask(attention_mask(jnp.asarray(segment_ids), jnp.asarray(bidirectional)))
    )
    assert mask.shape == (3, 1, 16, 16) and mask.dtype == bool
    for b in range(3):
        for q in range(16):
            for k in range(16):
                allowed = segment_ids[b, q] == segment_ids[b, k] and (
                    k <= q or (bidirectional[b, q] == 1 and bidirectional[b, k] == 1)
                )
                assert mask[b, 0, q, k] == allowed, (b, q, k)
    # Padding attends to itself at least, so no softmax row is empty.
    assert mask.any(axis=-1).all()


def hf_style_rope(x_BLNH: np.ndarray, positions_BL: np.ndarray, theta: float) -> np.ndarray:
    """RoPE written the way Hugging Face Llama does it: cat(freqs, freqs) and rotate_half."""
    head_dim = x_BLNH.shape[-1]
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim)
    freqs = positions_BL[..., None] * inv_freq
    emb = np.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    rotate_half = np.concatenate([-x_BLNH[..., head_dim // 2 :], x_BLNH[..., : head_dim // 2]], -1)
    return x_BLNH * np.cos(emb) + rotate_half * np.sin(emb)


def test_rope_matches_hf_convention_and_is_relative():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5, 3, 8))
    positions = rng.integers(0, 50, size=(2, 5))
    ours = apply_rope(jnp.asarray(x, jnp.float32), jnp.asarray(positions), 10000.0)
    np.testing.assert_allclose(ours, hf_style_rope(x, positions, 10000.0), rtol=1e-5, atol=1e-5)
    # q.k after RoPE depends only on the position difference.
    q, k = jnp.asarray(x[:1, :1], jnp.float32), jnp.asarray(x[1:, :1], jnp.float32)

    def score(q_pos, k_pos):
        rotated_q = apply_rope(q, jnp.array([[q_pos]]), 10000.0)
        rotated_k = apply_rope(k, jnp.array([[k_pos]]), 10000.0)
        return float(jnp.sum(rotated_q * rotated_k))

    np.testing.assert_allclose(score(7, 3), score(24, 20), rtol=1e-5)


def reference_attention(x_BLD, kernels, positions_BL, mask_BLS, theta):
    """One GQA attention layer in float64 numpy, head by head."""
    query = hf_style_rope(np.einsum("bld,dnh->blnh", x_BLD, kernels["query"]), positions_BL, theta)
    key = hf_style_rope(np.einsum("bld,dkh->blkh", x_BLD, kernels["key"]), positions_BL, theta)
    value = np.einsum("bld,dkh->blkh", x_BLD, kernels["value"])
    batch, length, num_heads, head_dim = query.shape
    group = num_heads // key.shape[2]
    encoded = np.zeros_like(query)
    for b in range(batch):
        for n in range(num_heads):
            scores = query[b, :, n] @ key[b, :, n // group].T / np.sqrt(head_dim)
            scores = np.where(mask_BLS[b], scores, -np.inf)
            probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
            probs /= probs.sum(axis=-1, keepdims=True)
            encoded[b, :, n] = probs @ value[b, :, n // group]
    return np.einsum("blnh,nhd->bld", encoded, kernels["out"])


def test_attention_layer_matches_numpy_reference():
    with nnx.use_eager_sharding(False):  # submodules alone; Transformer does this itself
        attention = Attention(CFG, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(2)
    segment_ids, positions, bidirectional = packed_features(rng, 2, 16)
    x = rng.normal(size=(2, 16, CFG.embed_dim)).astype(np.float32)
    mask = attention_mask(jnp.asarray(segment_ids), jnp.asarray(bidirectional))
    ours = nnx.jit(lambda module, *args: module(*args))(
        attention, jnp.asarray(x), jnp.asarray(positions), mask
    )
    kernels = {
        name: np.asarray(getattr(attention, name).kernel[...], np.float64)
        for name in ("query", "key", "value", "out")
    }
    expected = reference_attention(
        x.astype(np.float64), kernels, positions, np.asarray(dense_mask(mask))[:, 0], CFG.rope_theta
    )
    assert ours.dtype == jnp.float32
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5)


def test_attention_is_jittable_under_bfloat16():
    cfg = ModelConfig(**{**CFG.__dict__, "dtype": "bfloat16"})
    with nnx.use_eager_sharding(False):
        attention = Attention(cfg, rngs=nnx.Rngs(0))
    x = jnp.ones((1, 4, cfg.embed_dim), jnp.bfloat16)
    mask = attention_mask(jnp.ones((1, 4), jnp.int32), jnp.zeros((1, 4), jnp.int32))
    out = nnx.jit(lambda module, x: module(x, jnp.arange(4)[None], mask))(attention, x)
    assert out.dtype == jnp.bfloat16 and attention.query.kernel[...].dtype == jnp.float32
    assert bool(jnp.isfinite(out.astype(jnp.float32)).all())
