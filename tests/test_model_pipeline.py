"""Pipeline parallelism: a pipelined stack equals the layers run in order, forward and backward."""

import dataclasses
import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpretrain import config as config_lib
from jaxpretrain import mesh as mesh_lib
from jaxpretrain import state as state_lib
from jaxpretrain.model import ModelConfig, Transformer
from jaxpretrain.model import attention_impls as impls
from jaxpretrain.model.pipeline import bubble_fraction

LENGTH = 16
FEATURES = ("inputs", "segment_ids", "positions", "bidirectional")


def model_config(num_layers: int, length: int = LENGTH, **pipeline) -> ModelConfig:
    return ModelConfig(
        vocab_size=64,
        num_layers=num_layers,
        embed_dim=32,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        mlp_dim=64,
        max_seq_len=length,
        dtype="float32",
        **pipeline,
    )


def packed_batch(
    rows: int, seed: int = 0, length: int = LENGTH, max_prefix: int = 2
) -> dict[str, np.ndarray]:
    """Rows of 1-3 documents of random length, some with a bidirectional prefix of up to
    `max_prefix` tokens, then padding."""
    rng = np.random.default_rng(seed)
    batch = {name: np.zeros((rows, length), np.int32) for name in FEATURES}
    longest = max(7, length // 3)
    for row in range(rows):
        start = 0
        for segment in range(1, rng.integers(1, 4) + 1):
            end = min(start + int(rng.integers(2, longest)), length - 1)
            batch["inputs"][row, start:end] = rng.integers(4, 64, end - start)
            batch["segment_ids"][row, start:end] = segment
            batch["positions"][row, start:end] = np.arange(end - start)
            batch["bidirectional"][row, start : start + int(rng.integers(0, max_prefix + 1))] = 1
            start = end
    return batch


def forward_and_grads(cfg: ModelConfig, params, batch, mesh=None):
    """Logits and d(sum of logits^2 weighted by position)/d(params), on `mesh` when given."""
    graphdef = state_lib.abstract_model(cfg)[0]
    weights = jnp.linspace(0.5, 1.5, batch["inputs"].shape[1])[None, :, None]

    def loss(params):
        logits = nnx.merge(graphdef, params)(*(batch[name] for name in FEATURES))
        return jnp.sum(jnp.square(logits) * weights), logits

    step = jax.jit(jax.grad(loss, has_aux=True))
    if mesh is None:
        grads, logits = step(params)
    else:
        with mesh_lib.axis_rules(mesh, config_lib.DEFAULT_AXIS_RULES):
            grads, logits = step(params)
    return jax.device_get(logits), jax.device_get(grads)


@pytest.mark.parametrize(
    ("stages", "repeats", "microbatches", "data", "scan_layers"),
    [
        (2, 1, 2, 4, True),  # GPipe
        (4, 1, 4, 2, True),  # GPipe, 4 stages
        (2, 1, 1, 4, True),  # one microbatch: the pipeline is all bubble, still exact
        (4, 1, 2, 2, True),  # fewer microbatches than stages (GPipe allows it)
        (2, 2, 2, 4, True),  # circular, M = S
        (2, 2, 4, 2, True),  # circular, M > S: outputs wait in the buffer between passes
        (4, 2, 4, 2, True),  # circular, 4 stages
        (2, 2, 2, 4, False),  # circular, each stage's layers unrolled
    ],
)
def test_pipeline_equals_layers_in_order(stages, repeats, microbatches, data, scan_layers):
    pipelined = model_config(
        2 * stages * repeats,
        pipeline_stages=stages,
        pipeline_repeats=repeats,
        pipeline_microbatches=microbatches,
        scan_layers=scan_layers,
    )
    reference = dataclasses.replace(
        pipelined, pipeline_stages=1, pipeline_repeats=1, pipeline_microbatches=1
    )
    params = nnx.to_pure_dict(nnx.state(Transformer(pipelined, rngs=nnx.Rngs(0))))
    batch = packed_batch(rows=2 * microbatches * data)
    expected_logits, expected_grads = forward_and_grads(reference, params, batch)

    mesh = mesh_lib.make_mesh({"data": data, "fsdp": 1, "tensor": 1, "pipe": stages})
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    logical = state_lib.abstract_model(pipelined)[2]
    shardings = mesh_lib.shardings_for(logical, abstract, mesh, config_lib.DEFAULT_AXIS_RULES)
    sharded = jax.device_put(params, shardings)
    # Each pipe device stores only its stages' layers.
    kernel = sharded["layers"]["mlp"]["up"]["kernel"]
    assert kernel.sharding.shard_shape(kernel.shape)[0] == pipelined.num_layers // stages
    logits, grads = forward_and_grads(pipelined, sharded, batch, mesh)

    np.testing.assert_allclose(logits, expected_logits, rtol=1e-5, atol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
        grads,
        expected_grads,
    )


def conds_of(jaxpr, branches: int) -> int:
    """How many `cond`s with that many branches a jaxpr holds, nested jaxprs included."""
    found = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "cond" and len(eqn.params["branches"]) == branches:
            found += 1
        for value in eqn.params.values():
            for inner in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(inner, "jaxpr", inner)  # a ClosedJaxpr's Jaxpr
                if hasattr(inner, "eqns"):
                    found += conds_of(inner, branches)
    return found


# The kernels as the CPU runs them: splash in the Pallas interpreter, cuDNN's calls through
# jax's "xla" implementation of jax.nn.dot_product_attention.
KERNELS_ON_CPU = {
    "splash": ("tpu", functools.partial(impls.splash_attention, interpret=True)),
    "cudnn": ("gpu", functools.partial(impls.cudnn_attention, backend="xla")),
}


@pytest.mark.parametrize(
    "kernel, kind", [("splash", "causal"), ("splash", "mixed"), ("cudnn", "mixed")]
)
def test_kernels_run_inside_pipeline_stages_equal_to_the_xla_stack(
    monkeypatch, caplog, kernel, kind
):
    """A kernel inside the stages' vmap, one variant per batch: in the mixed batch one
    microbatch is causal and the other has long prefixes, and the causal one runs the whole
    batch's prefix variant."""
    length, stages, microbatches, data = 128, 2, 2, 4
    pipelined = model_config(
        2 * stages,
        length,
        pipeline_stages=stages,
        pipeline_repeats=1,
        pipeline_microbatches=microbatches,
        attention=kernel,
    )
    reference = dataclasses.replace(
        pipelined, pipeline_stages=1, pipeline_microbatches=1, attention="xla"
    )
    params = nnx.to_pure_dict(nnx.state(Transformer(pipelined, rngs=nnx.Rngs(0))))
    batch = packed_batch(rows=microbatches * data, length=length, max_prefix=20)
    batch["bidirectional"][0::microbatches] = 0  # split_batch's microbatch 0: every M-th row
    if kind == "causal":
        batch["bidirectional"][:] = 0
    facts = [
        impls.batch_facts(
            jnp.asarray(batch["segment_ids"][m::microbatches]),
            jnp.asarray(batch["bidirectional"][m::microbatches]),
        )
        for m in range(microbatches)
    ]
    assert not facts[0].attends_forward
    assert bool(facts[1].attends_forward) == (kind == "mixed")
    expected_logits, expected_grads = forward_and_grads(reference, params, batch)

    platform, attention_on_cpu = KERNELS_ON_CPU[kernel]
    monkeypatch.setattr(impls, "current_platform", lambda: platform)
    monkeypatch.setattr(impls, "_reasons_logged", set())
    monkeypatch.setattr(impls, f"{kernel}_attention", attention_on_cpu)
    kernel_variants = []
    original_switch = jax.lax.switch

    def switch(index, branches, *operands):
        kernel_variants.append(len(branches))
        return original_switch(index, branches, *operands)

    monkeypatch.setattr(jax.lax, "switch", switch)
    mesh = mesh_lib.make_mesh({"data": data, "fsdp": 1, "tensor": 1, "pipe": stages})
    with caplog.at_level(logging.WARNING):
        logits, grads = forward_and_grads(pipelined, params, batch, mesh)
        graphdef = state_lib.abstract_model(pipelined)[0]
        with mesh_lib.axis_rules(mesh, config_lib.DEFAULT_AXIS_RULES):
            program = jax.make_jaxpr(lambda p: nnx.merge(graphdef, p)(*batch.values()))(params)
    assert caplog.text == "" and impls.fallback_reasons() == []
    assert kernel_variants and set(kernel_variants) == {3}  # the kernel's three variants traced
    # The switch stayed a switch: a per-stage index would have made it a select of every branch.
    assert conds_of(program.jaxpr, branches=3) > 0
    # The kernel's running softmax sums in another order than the XLA path.
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-5, atol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
        grads,
        expected_grads,
    )


def test_stages_hand_activations_on_by_collective_permute():
    cfg = model_config(4, pipeline_stages=4, pipeline_repeats=1, pipeline_microbatches=4)
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 1, "tensor": 1, "pipe": 4})
    graphdef, abstract, logical = state_lib.abstract_model(cfg)
    shardings = mesh_lib.shardings_for(logical, abstract, mesh, config_lib.DEFAULT_AXIS_RULES)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings
    )
    features = [jax.ShapeDtypeStruct((8, LENGTH), jnp.int32)] * 4

    def forward(params, *features):
        return nnx.merge(graphdef, params)(*features)

    with mesh_lib.axis_rules(mesh, config_lib.DEFAULT_AXIS_RULES):
        hlo = jax.jit(forward).lower(abstract, *features).compile().as_text()
    assert "collective-permute" in hlo


def test_batch_that_does_not_split_into_microbatches_is_a_clear_error():
    cfg = model_config(2, pipeline_stages=2, pipeline_repeats=1, pipeline_microbatches=4)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    tokens = jnp.ones((6, LENGTH), jnp.int32)
    with pytest.raises(ValueError, match="6 rows does not split into mesh.microbatches=4"):
        model(tokens, tokens, tokens, tokens * 0)


def scan_lengths(jaxpr) -> list[int]:
    """Lengths of every scan in a jaxpr, nested ones included."""
    lengths = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            lengths.append(eqn.params["length"])
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", None)
            if inner is not None and hasattr(inner, "eqns"):
                lengths.extend(scan_lengths(inner))
    return lengths


@pytest.mark.parametrize(("stages", "repeats", "microbatches"), [(4, 1, 8), (4, 2, 8), (2, 3, 2)])
def test_the_pipeline_runs_the_iterations_the_bubble_formula_assumes(stages, repeats, microbatches):
    cfg = model_config(
        stages * repeats,
        pipeline_stages=stages,
        pipeline_repeats=repeats,
        pipeline_microbatches=microbatches,
    )
    graphdef, abstract, _ = state_lib.abstract_model(cfg)
    features = [jax.ShapeDtypeStruct((microbatches, LENGTH), jnp.int32)] * 4
    jaxpr = jax.make_jaxpr(lambda p, *f: nnx.merge(graphdef, p)(*f))(abstract, *features)
    # The outer scan is the schedule; the inner one runs a stage's layers.
    iterations = max(scan_lengths(jaxpr.jaxpr))
    assert iterations == repeats * microbatches + stages - 1
    useful = stages * repeats * microbatches  # stage-iterations that carry a microbatch
    idle = 1 - useful / (stages * iterations)
    assert bubble_fraction(stages, repeats, microbatches) == pytest.approx(idle)
