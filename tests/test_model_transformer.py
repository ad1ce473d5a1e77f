"""Transformer: packing semantics, RoPE restarts, remat, GQA grouping, parameters, sharding."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxpretrain import config as config_lib
from jaxpretrain import mesh as mesh_lib
from jaxpretrain.model import REMAT_POLICIES, ModelConfig, Transformer, param_count

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
LENGTH = 16
ALLOWED_AXES = {"vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "layers"}


@jax.jit
def _forward(graphdef, state, inputs, segment_ids, positions, bidirectional):
    return nnx.merge(graphdef, state)(inputs, segment_ids, positions, bidirectional)


def logits_of(model: Transformer, rows: list[dict]) -> np.ndarray:
    """Logits for a batch stacked from per-row feature dicts (all four features, length 16)."""
    features = [
        np.stack([row[name] for row in rows]).astype(np.int32)
        for name in ("inputs", "segment_ids", "positions", "bidirectional")
    ]
    graphdef, state = nnx.split(model)
    return np.asarray(_forward(graphdef, state, *features))


def packed_row(documents: list[np.ndarray], bidirectional_lengths: list[int] | None = None):
    """One row holding `documents` back to back, then padding (token 3, segment 0)."""
    row = {
        name: np.zeros(LENGTH, np.int32)
        for name in ("inputs", "segment_ids", "positions", "bidirectional")
    }
    row["inputs"][:] = 3
    start = 0
    for index, document in enumerate(documents):
        end = start + len(document)
        row["inputs"][start:end] = document
        row["segment_ids"][start:end] = index + 1
        row["positions"][start:end] = np.arange(len(document))
        if bidirectional_lengths:
            row["bidirectional"][start : start + bidirectional_lengths[index]] = 1
        start = end
    return row


@pytest.fixture(scope="module")
def model() -> Transformer:
    return Transformer(CFG, rngs=nnx.Rngs(0))


def changed_positions(a: np.ndarray, b: np.ndarray) -> set[int]:
    return set(np.flatnonzero(np.abs(a - b).max(axis=-1) > 1e-6).tolist())


def test_attention_respects_segments_causality_and_prefix(model):
    first, second = np.arange(10, 17), np.arange(30, 37)  # 7 + 7 tokens, 2 padding
    base = packed_row([first, second])
    second_changed = packed_row([first, second + 20])
    first_changed = packed_row([first + 20, second])
    late_token_changed = packed_row([np.where(np.arange(7) == 5, 50, first), second])
    prefix = packed_row([first, second], bidirectional_lengths=[4, 0])
    prefix_last_changed = packed_row(
        [np.where(np.arange(7) == 3, 50, first), second], bidirectional_lengths=[4, 0]
    )
    suffix_changed = packed_row(
        [np.where(np.arange(7) == 5, 50, first), second], bidirectional_lengths=[4, 0]
    )
    logits = logits_of(
        model,
        [
            base,
            second_changed,
            first_changed,
            late_token_changed,
            prefix,
            prefix_last_changed,
            suffix_changed,
        ],
    )
    assert changed_positions(logits[0], logits[1]) == set(range(7, 14))
    assert changed_positions(logits[0], logits[2]) == set(range(0, 7))
    # Causal: a change at position 5 reaches only positions 5 and later of its segment.
    assert changed_positions(logits[0], logits[3]) == {5, 6}
    # Prefix: a change at the last prefix token reaches every position of the segment ...
    assert changed_positions(logits[4], logits[5]) == set(range(0, 7))
    # ... but a change after the prefix does not reach back into it.
    assert changed_positions(logits[4], logits[6]) == {5, 6}


def test_positions_restart_per_segment(model):
    document_a, document_b = np.arange(40, 45), np.arange(5, 12)
    packed = packed_row([document_a, document_b])  # b is segment 2 at offset 5
    alone = packed_row([document_b])
    # RoPE sees only relative distances, so a uniform offset cannot show; stretching can, which
    # proves the comparison above depends on the positions feature at all.
    stretched = dict(packed, positions=packed["positions"] * 2)
    logits = logits_of(model, [packed, alone, stretched])
    np.testing.assert_allclose(logits[0, 5:12], logits[1, 0:7], rtol=1e-5, atol=1e-5)
    # (At init attention is nearly uniform, so the effect is small but far above rounding.)
    assert np.abs(logits[2, 5:12] - logits[1, 0:7]).max() > 1e-4


def logits_loss_and_grads(model: Transformer, row: dict):
    """(logits, loss, grads) for one row, from one compiled function."""
    batch = [
        jnp.asarray(row[name])[None]
        for name in ("inputs", "segment_ids", "positions", "bidirectional")
    ]

    def loss_fn(model):
        logits = model(*batch)
        return -jnp.mean(jax.nn.log_softmax(logits)[..., 7]), logits

    (loss, logits), grads = nnx.jit(nnx.value_and_grad(loss_fn, has_aux=True))(model)
    return np.asarray(logits), float(loss), grads


def test_remat_policies_and_unrolled_layers_give_equal_outputs_and_gradients():
    row = packed_row([np.arange(1, 9), np.arange(20, 26)], bidirectional_lengths=[3, 2])
    batch = [
        jnp.asarray(row[name])[None]
        for name in ("inputs", "segment_ids", "positions", "bidirectional")
    ]
    models = {
        policy: Transformer(dataclasses.replace(CFG, remat_policy=policy), rngs=nnx.Rngs(0))
        for policy in REMAT_POLICIES
    }
    for policy in ("none", "full"):  # the layers unrolled (model.scan_layers=False)
        cfg = dataclasses.replace(CFG, remat_policy=policy, scan_layers=False)
        models[f"{policy} unrolled"] = Transformer(cfg, rngs=nnx.Rngs(0))

    def loss_fn(model):
        logits = model(*batch)
        return -jnp.mean(jax.nn.log_softmax(logits)[..., 7]), logits

    # One compiled program for all policies: a third of the compile time of one per policy.
    @nnx.jit
    def all_policies(models):
        return {
            policy: nnx.value_and_grad(loss_fn, has_aux=True)(model)
            for policy, model in models.items()
        }

    results = all_policies(models)
    (reference_loss, reference_logits), reference_grads = results["none"]
    for policy, ((loss, logits), grads) in results.items():
        np.testing.assert_allclose(logits, reference_logits, rtol=1e-6, atol=1e-7, err_msg=policy)
        np.testing.assert_allclose(loss, reference_loss, rtol=1e-6, err_msg=policy)
        for (path, grad), (_, reference) in zip(
            nnx.to_flat_state(grads), nnx.to_flat_state(reference_grads), strict=True
        ):
            np.testing.assert_allclose(
                grad[...], reference[...], rtol=1e-5, atol=1e-7, err_msg=f"{policy} {path}"
            )


def test_remat_policy_reaches_the_compiled_graph():
    model = Transformer(dataclasses.replace(CFG, remat_policy="full"), rngs=nnx.Rngs(0))
    features = [jnp.ones((1, LENGTH), jnp.int32)] * 3 + [jnp.zeros((1, LENGTH), jnp.int32)]
    jaxpr = jax.make_jaxpr(lambda state: nnx.merge(nnx.graphdef(model), state)(*features))(
        nnx.state(model)
    )
    assert "checkpoint" in str(jaxpr) or "remat" in str(jaxpr)


def test_scan_layers_decides_whether_the_layers_are_one_loop():
    features = [jnp.ones((1, LENGTH), jnp.int32)] * 3 + [jnp.zeros((1, LENGTH), jnp.int32)]
    jaxprs = {}
    for scan_layers in (True, False):
        model = Transformer(
            dataclasses.replace(CFG, num_layers=3, scan_layers=scan_layers), rngs=nnx.Rngs(0)
        )
        forward = lambda state, model=model: nnx.merge(nnx.graphdef(model), state)(*features)  # noqa: E731
        jaxprs[scan_layers] = str(jax.make_jaxpr(forward)(nnx.state(model)))
    assert "scan[" in jaxprs[True] and "scan[" not in jaxprs[False]
    # Scanned, one layer's matmuls are traced once; unrolled, once per layer (3), and the
    # output layer's once in both.
    per_layer = jaxprs[True].count("dot_general") - 1
    assert per_layer > 0 and jaxprs[False].count("dot_general") == 3 * per_layer + 1


def test_remat_in_unrolled_layers_is_kept_from_common_subexpression_elimination():
    """Unrolled, XLA's CSE would merge the recomputed forward into the original (remat saving
    nothing) unless the checkpoint fences it with optimization barriers; inside the scan the
    loop itself does, and the barriers are left out (they cost speed)."""
    features = [jnp.ones((1, LENGTH), jnp.int32)] * 3 + [jnp.zeros((1, LENGTH), jnp.int32)]
    barriers = {}
    for scan_layers in (True, False):
        cfg = dataclasses.replace(CFG, num_layers=3, scan_layers=scan_layers, remat_policy="full")
        model = Transformer(cfg, rngs=nnx.Rngs(0))
        graphdef = nnx.graphdef(model)

        def loss(state, graphdef=graphdef):
            return nnx.merge(graphdef, state)(*features).sum()

        lowered = jax.jit(jax.grad(loss)).lower(nnx.state(model)).as_text()
        barriers[scan_layers] = lowered.count("optimization_barrier")
    assert barriers[True] == 0 and barriers[False] > 0, barriers


def test_grouped_query_attention_equals_repeated_kv_heads(model):
    """GQA with 2 kv heads == MHA (kv heads = heads) whose kv kernels repeat each kv head twice."""
    mha = Transformer(dataclasses.replace(CFG, num_kv_heads=CFG.num_heads), rngs=nnx.Rngs(1))
    group = CFG.num_heads // CFG.num_kv_heads
    for name in ("key", "value"):
        gqa_kernel = getattr(model.layers.attention, name).kernel[...]  # [layers, D, K, H]
        getattr(mha.layers.attention, name).kernel[...] = jnp.repeat(gqa_kernel, group, axis=2)
    for path in (
        ("layers", "attention", "query"),
        ("layers", "attention", "out"),
        ("layers", "mlp", "gate"),
        ("layers", "mlp", "up"),
        ("layers", "mlp", "down"),
    ):
        source, target = model, mha
        for attribute in path:
            source, target = getattr(source, attribute), getattr(target, attribute)
        target.kernel[...] = source.kernel[...]
    mha.embed.embedding[...] = model.embed.embedding[...]
    row = packed_row([np.arange(1, 9), np.arange(20, 26)], bidirectional_lengths=[3, 0])
    np.testing.assert_allclose(logits_of(mha, [row]), logits_of(model, [row]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_param_count_names_and_logical_axes(tie_embeddings):
    cfg = dataclasses.replace(CFG, tie_embeddings=tie_embeddings)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    assert sum(leaf.size for leaf in jax.tree.leaves(params)) == param_count(cfg)
    assert nnx.state(model, nnx.Not(nnx.Param)) == nnx.State({})
    specs = nnx.to_flat_state(nnx.get_partition_spec(params))
    assert ("lm_head", "kernel") in dict(specs) or tie_embeddings
    for path, spec in specs:
        param = dict(nnx.to_flat_state(params))[path]
        names = tuple(spec.get_value())
        assert path[-1] in {"kernel", "embedding", "scale"}, path
        assert len(names) == param.ndim and set(names) <= ALLOWED_AXES, (path, names)
        assert (names[0] == "layers") == (path[0] == "layers"), (path, names)


def test_bfloat16_compute_gives_float32_logits_and_params():
    model = Transformer(dataclasses.replace(CFG, dtype="bfloat16"), rngs=nnx.Rngs(0))
    row = packed_row([np.arange(1, 9)], bidirectional_lengths=[2])
    logits, loss, grads = logits_loss_and_grads(model, row)
    assert logits.dtype == np.float32 and np.isfinite(logits).all() and np.isfinite(loss)
    for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)) + jax.tree.leaves(grads):
        assert leaf.dtype == jnp.float32


def _plain_float32_einsum(equation, x, w):
    """The output layer as plain autodiff differentiates it (float32 cotangent, float32 matmuls)."""
    return jnp.einsum(equation, x, w, preferred_element_type=jnp.float32)


def _output_layer_grads(model: Transformer, row: dict) -> dict:
    _, _, grads = logits_loss_and_grads(model, row)
    return {
        "/".join(map(str, path)): np.asarray(leaf, np.float32)
        for path, leaf in jax.tree_util.tree_flatten_with_path(grads)[0]
    }


@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_output_layer_backward_matmuls_run_in_the_compute_dtype(tie_embeddings):
    """Float32 logits must not drag the output layer's two backward matmuls (a third of a
    124M model's FLOPs) into float32 x float32: vocab-sized dots take bfloat16 operands."""
    # A vocabulary size no other dimension shares, to find the output layer's dots by shape.
    cfg = dataclasses.replace(CFG, vocab_size=96, dtype="bfloat16", tie_embeddings=tie_embeddings)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    row = packed_row([np.arange(1, 9)])
    batch = [
        jnp.asarray(row[name])[None]
        for name in ("inputs", "segment_ids", "positions", "bidirectional")
    ]
    graphdef, state = nnx.split(model)

    def loss(state):
        logits = nnx.merge(graphdef, state)(*batch)
        return -jnp.mean(jax.nn.log_softmax(logits)[..., 7])

    text = jax.jit(jax.grad(loss)).lower(state).as_text()
    vocab_dots = [
        line
        for line in text.splitlines()
        if "stablehlo.dot_general" in line and f"x{cfg.vocab_size}x" in line.replace("<", "x")
    ]
    assert len(vocab_dots) == 3  # logits, and the two backward matmuls
    operands = [line.split(": (")[1].split(") ->")[0] for line in vocab_dots]
    assert all("f32" not in pair for pair in operands), operands


@pytest.mark.parametrize(
    "dtype, tie_embeddings, tolerance",
    [("float32", True, 1e-6), ("bfloat16", True, 3e-2), ("bfloat16", False, 3e-2)],
)
def test_output_layer_gradients_match_plain_autodiff(monkeypatch, dtype, tie_embeddings, tolerance):
    """Equal in float32 compute; within bfloat16 rounding of the cotangent in bfloat16 (every
    gradient within `tolerance` x its largest entry)."""
    from jaxpretrain.model import transformer

    row = packed_row([np.arange(1, 9), np.arange(20, 26)], bidirectional_lengths=[3, 0])
    cfg = dataclasses.replace(CFG, dtype=dtype, tie_embeddings=tie_embeddings)
    ours = _output_layer_grads(Transformer(cfg, rngs=nnx.Rngs(0)), row)
    monkeypatch.setattr(transformer, "einsum_float32_out", _plain_float32_einsum)
    plain = _output_layer_grads(Transformer(cfg, rngs=nnx.Rngs(0)), row)
    assert ours.keys() == plain.keys()
    for name in ours:
        scale = np.abs(plain[name]).max()
        np.testing.assert_allclose(
            ours[name], plain[name], rtol=0, atol=tolerance * scale, err_msg=name
        )


def test_longer_than_max_seq_len_is_rejected(model):
    too_long = jnp.zeros((1, CFG.max_seq_len + 1), jnp.int32)
    with pytest.raises(ValueError, match="max_seq_len=16"):
        model(too_long, too_long, too_long, too_long)


def test_sharded_forward_matches_single_device(model):
    """Logical axes -> mesh through the rules; activation constraints switch on."""
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2, "pipe": 1})
    rules = config_lib.DEFAULT_AXIS_RULES
    rows = [packed_row([np.arange(1, 9), np.arange(20, 26)], [3, 0])] * 2
    rows += [packed_row([np.arange(5, 16)], [0])] * 2
    expected = logits_of(model, rows)
    graphdef, state = nnx.split(model)
    pure_state = nnx.to_pure_dict(state)
    logical_specs = nnx.to_pure_dict(nnx.get_partition_spec(state))
    shardings = mesh_lib.shardings_for(logical_specs, pure_state, mesh, rules)
    sharded_state = jax.device_put(pure_state, shardings)
    assert sharded_state["layers"]["mlp"]["gate"]["kernel"].sharding.spec == P(
        "pipe", "fsdp", "tensor"
    )
    features = [
        jnp.asarray(np.stack([row[name] for row in rows]))
        for name in ("inputs", "segment_ids", "positions", "bidirectional")
    ]

    def forward(state, *features):
        return nnx.merge(graphdef, state)(*features)

    with mesh_lib.axis_rules(mesh, rules):
        logits = jax.jit(forward)(sharded_state, *features)
        # The activation constraints are live (they are no-ops without rules and a mesh).
        assert "sharding_constraint" in str(jax.make_jaxpr(forward)(sharded_state, *features))
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-5, atol=1e-5)
