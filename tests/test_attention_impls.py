"""Each attention implementation against the XLA path, and where each one is chosen.

cuDNN cannot run on a CPU: its variant logic (which call a batch gets) runs here through jax's
own "xla" implementation of the same `jax.nn.dot_product_attention` calls. Splash runs here in
the Pallas interpreter, the kernel code the TPU runs.
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpretrain import config as config_lib
from jaxpretrain import mesh as mesh_lib
from jaxpretrain.model import ModelConfig, Transformer
from jaxpretrain.model import attention_impls as impls

BATCH, LENGTH, HEADS, KV_HEADS, HEAD_DIM = 2, 128, 4, 2, 16


@pytest.fixture(autouse=True)
def fresh_reasons(monkeypatch):
    """Each test sees the once-per-process fall-back warnings afresh."""
    monkeypatch.setattr(impls, "_reasons_logged", set())


def packed_mask(kind: str) -> impls.AttentionMask:
    """Rows of the shapes objectives produce: one document, packed documents with trailing
    padding, packed documents with a bidirectional prefix each, bidirectional documents (MLM)."""
    segment_ids = np.zeros((BATCH, LENGTH), np.int32)
    bidirectional = np.zeros((BATCH, LENGTH), np.int32)
    if kind == "one_document":
        segment_ids[:] = 1
    else:
        bounds = [(0, 37), (37, 80), (80, 117)]  # then padding
        for segment, (start, end) in enumerate(bounds, start=1):
            segment_ids[:, start:end] = segment
            if kind == "prefix":
                bidirectional[:, start : start + (end - start) // 3] = 1
            if kind == "bidirectional":
                bidirectional[:, start:end] = 1
        segment_ids[1, 60:80] = 4  # rows differ
    return impls.attention_mask(jnp.asarray(segment_ids), jnp.asarray(bidirectional))


def qkv(seed: int = 0, length: int = LENGTH):
    keys = jax.random.split(jax.random.key(seed), 3)
    query = jax.random.normal(keys[0], (BATCH, length, HEADS, HEAD_DIM))
    key = jax.random.normal(keys[1], (BATCH, length, KV_HEADS, HEAD_DIM))
    value = jax.random.normal(keys[2], (BATCH, length, KV_HEADS, HEAD_DIM))
    return query, key, value


def output_and_grads(attention, mask):
    """Forward output and d(loss)/d(q, k, v), the loss read on real tokens only (as training
    reads it: padding rows carry no loss)."""
    length = mask.segment_ids_BL.shape[1]
    real_BL1 = (mask.segment_ids_BL != 0)[:, :, None].astype(jnp.float32)
    weights = jax.random.normal(jax.random.key(9), (BATCH, length, HEADS, HEAD_DIM))

    def loss(q, k, v):
        out = attention(q, k, v, mask)
        return jnp.sum(out * weights * real_BL1[..., None]), out

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
    (_, out), grads = step(*qkv(length=length))
    return out * real_BL1[..., None], grads


def assert_same_as_xla(attention, mask):
    out, grads = output_and_grads(attention, mask)
    expected_out, expected_grads = output_and_grads(impls.xla_attention, mask)
    np.testing.assert_allclose(out, expected_out, rtol=1e-5, atol=2e-5)
    for grad, expected in zip(grads, expected_grads, strict=True):
        np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "kind, variant", [("one_document", 0), ("packed", 1), ("prefix", 2), ("bidirectional", 2)]
)
def test_cudnn_calls_equal_the_xla_path(kind, variant):
    mask = packed_mask(kind)
    assert int(impls.cudnn_variant(mask)) == variant
    assert_same_as_xla(lambda *args: impls.cudnn_attention(*args, backend="xla"), mask)


@pytest.mark.parametrize(
    "kind, variant", [("one_document", 0), ("packed", 0), ("bidirectional", 1), ("prefix", 2)]
)
def test_splash_kernel_equals_the_xla_path(kind, variant):
    mask = packed_mask(kind)
    assert int(impls.splash_variant(mask)) == variant
    assert_same_as_xla(lambda *args: impls.splash_attention(*args, interpret=True), mask)


def test_splash_prefix_rows_over_several_kernel_blocks_equal_the_xla_path():
    """Three 128-token blocks, so the kernels' running softmax crosses blocks, some of them
    wholly masked for a prefix query; segments: a long prefix, a one-token prefix (a seqio
    row's bos), an all-bidirectional one, a causal one, a prefix crossing a block edge."""
    length = 384
    segment_ids = np.zeros((BATCH, length), np.int32)
    bidirectional = np.zeros((BATCH, length), np.int32)
    for segment, (start, end, prefix) in enumerate(
        [(0, 150, 100), (150, 200, 1), (200, 230, 30), (230, 260, 0), (260, 370, 20)], start=1
    ):
        segment_ids[:, start:end] = segment
        bidirectional[:, start : start + prefix] = 1
    segment_ids[1, 100:150] = 6  # rows differ: row 1 splits the first segment's causal part
    mask = impls.attention_mask(jnp.asarray(segment_ids), jnp.asarray(bidirectional))
    assert int(impls.splash_variant(mask)) == 2
    assert_same_as_xla(lambda *args: impls.splash_attention(*args, interpret=True), mask)


def test_a_one_token_prefix_takes_the_causal_calls():
    """A bos marked bidirectional alone (seqio rows without inputs) attends only itself: the
    batch is causal, and neither kernel runs its prefix call."""
    mask = packed_mask("packed")
    first_of_segment = np.diff(np.asarray(mask.segment_ids_BL), axis=1, prepend=-1) != 0
    bos_only = impls.attention_mask(
        mask.segment_ids_BL, jnp.asarray(first_of_segment & (np.asarray(mask.segment_ids_BL) > 0))
    )
    assert int(jnp.sum(bos_only.bidirectional_BL)) > 0
    assert int(impls.splash_variant(bos_only)) == 0 and int(impls.cudnn_variant(bos_only)) == 1
    np.testing.assert_array_equal(impls.dense_mask(bos_only), impls.dense_mask(mask))


@pytest.mark.parametrize("kind", ["packed", "prefix"])
def test_splash_kernel_runs_per_device_under_sharding_rules(kind):
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 1, "tensor": 2, "pipe": 1})
    mask = packed_mask(kind)
    with mesh_lib.axis_rules(mesh, config_lib.DEFAULT_AXIS_RULES):
        out, grads = output_and_grads(
            lambda *args: impls.splash_attention(*args, interpret=True), mask
        )
    expected_out, expected_grads = output_and_grads(impls.xla_attention, mask)
    np.testing.assert_allclose(out, expected_out, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(grads[0], expected_grads[0], rtol=1e-4, atol=1e-4)


def test_splash_falls_back_where_its_blocks_do_not_fit(caplog):
    query, key, value = (x[:, :100] for x in qkv())
    mask = impls.attention_mask(
        jnp.ones((BATCH, 100), jnp.int32), jnp.zeros((BATCH, 100), jnp.int32)
    )
    with caplog.at_level(logging.WARNING):
        out = impls.splash_attention(query, key, value, mask, interpret=True)
    np.testing.assert_allclose(out, impls.xla_attention(query, key, value, mask), atol=1e-6)
    assert "length divisible by 128, not 100" in caplog.text


def test_splash_has_no_xla_branch_and_logs_nothing(caplog, monkeypatch):
    """Causal, MLM and prefix batches all run splash kernels: the program has no XLA attention
    branch (whose [batch, heads, length, length] scores the TPU would reserve memory for even
    in a causal-LM run), and nothing is logged."""

    def no_xla_path(*args):
        raise AssertionError("splash traced the XLA attention path")

    monkeypatch.setattr(impls, "xla_attention", no_xla_path)
    attend = jax.jit(lambda *args: impls.splash_attention(*args, interpret=True))
    with caplog.at_level(logging.WARNING):
        for kind in ("packed", "bidirectional", "prefix"):
            jax.block_until_ready(attend(*qkv(), packed_mask(kind)))
    assert caplog.text == "" and impls.fallback_reasons() == []


def test_auto_is_xla_on_cpu_and_the_kernel_on_its_platform():
    assert impls.resolve("auto", "cpu") == "xla"
    assert impls.resolve("auto", "gpu") == "cudnn"
    assert impls.resolve("auto", "tpu") == "splash"
    assert impls.current_platform() == "cpu"


def test_the_platform_is_the_mesh_s_not_the_process_s():
    """An ahead-of-time compile for TPU devices on this CPU machine resolves attention for the
    TPU (the dry run's topology compiles; tests/test_dry_run.py checks it with libtpu)."""
    from jax._src.mesh import AbstractDevice  # the public API builds one from real devices only

    tpu = AbstractDevice("TPU v5 lite", 1, "tpu")
    with jax.sharding.use_abstract_mesh(
        jax.sharding.AbstractMesh((1,), ("x",), abstract_device=tpu)
    ):
        assert impls.current_platform() == "tpu"
    assert impls.current_platform() == "cpu"


@pytest.mark.parametrize("requested, needs", [("cudnn", "an NVIDIA GPU"), ("splash", "a TPU")])
def test_a_kernel_asked_for_on_cpu_falls_back_with_one_logged_reason(caplog, requested, needs):
    with caplog.at_level(logging.WARNING):
        assert impls.resolve(requested, "cpu") == "xla"
        assert impls.resolve(requested, "cpu") == "xla"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert f"model.attention='{requested}' needs {needs}" in warnings[0]
    assert "the XLA path runs" in warnings[0]


def test_cudnn_falls_back_for_float32_compute(caplog):
    mask = packed_mask("packed")
    with caplog.at_level(logging.WARNING):
        out = impls.cudnn_attention(*qkv(), mask)  # backend cudnn: refused before any GPU call
    np.testing.assert_allclose(out, impls.xla_attention(*qkv(), mask), atol=1e-6)
    assert "bfloat16 or float16 compute, not float32" in caplog.text


def test_model_with_each_setting_equals_the_xla_model_on_cpu(caplog):
    cfg = dict(
        vocab_size=64,
        num_layers=2,
        embed_dim=32,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        mlp_dim=64,
        max_seq_len=LENGTH,
        dtype="float32",
    )
    mask = packed_mask("prefix")
    inputs = jnp.asarray(np.random.default_rng(0).integers(0, 64, (BATCH, LENGTH)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(LENGTH), (BATCH, LENGTH))

    def logits(attention):
        model = Transformer(ModelConfig(**cfg, attention=attention), rngs=nnx.Rngs(0))
        return nnx.jit(lambda m: m(inputs, mask.segment_ids_BL, positions, mask.bidirectional_BL))(
            model
        )

    expected = logits("xla")
    with caplog.at_level(logging.WARNING):
        for attention in ("auto", "cudnn", "splash"):
            np.testing.assert_array_equal(logits(attention), expected)
    assert "'cudnn' needs an NVIDIA GPU" in caplog.text and "'splash' needs a TPU" in caplog.text


def test_unknown_attention_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"model.attention='flash' .* 'cudnn', 'splash'"):
        ModelConfig(
            vocab_size=64,
            num_layers=2,
            embed_dim=32,
            num_heads=4,
            num_kv_heads=2,
            head_dim=8,
            mlp_dim=64,
            max_seq_len=16,
            attention="flash",
        )
