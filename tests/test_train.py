"""The training loop end to end on tiny prepared data: learning, resume, meshes, dry run, eval."""

import dataclasses
import json
import math
import pathlib
import shutil

import jax
import numpy as np
import pytest

from jaxpretrain import config as config_lib
from jaxpretrain import mesh as mesh_lib
from jaxpretrain import state as state_lib
from jaxpretrain import steps, train
from jaxpretrain.data import device as data_device
from jaxpretrain.data import pipeline

CONFIGS = pathlib.Path(__file__).parent.parent / "configs"


def tiny_config(data_dir: str, **train_overrides):
    config = config_lib.default_config()
    config.model.update(
        num_layers=2,
        embed_dim=64,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        mlp_dim=128,
        max_seq_len=64,
        dtype="float32",
    )
    config.train.update(
        steps=6, batch_size=8, seq_len=64, lr=3e-3, warmup_steps=2, log_every=1, seed=3
    )
    config.train.update(train_overrides)
    config.checkpoint.update(every=3, max_to_keep=5)
    config.eval.update(every=0, steps=2)
    config.data.dir = data_dir
    return config


def losses(history):
    return {r["step"]: (r["loss"], r["grad_norm"]) for r in history if "loss" in r}


TINY_CONFIGS = ["tiny_clm", "tiny_mlm", "tiny_prefix_lm", "tiny_span_corruption", "tiny_ul2"]


def with_objective_of(config, config_name: str):
    """`config` with the objective section of configs/<config_name>.py."""
    config.objective = load_config(config_name).objective
    return config


@pytest.mark.slow
@pytest.mark.parametrize("config_name", TINY_CONFIGS)
def test_validation_loss_falls(data_dir, tmp_path, config_name):
    """Each tiny config's objective, on the test-sized model: learns, and logs what it should."""
    config = with_objective_of(tiny_config(data_dir, steps=40, log_every=10), config_name)
    config.eval.update(every=40, steps=4)
    history = train.train_and_evaluate(config, str(tmp_path)).history
    eval_losses = [r["eval/loss"] for r in history if "eval/loss" in r]
    assert eval_losses[0] == pytest.approx(math.log(512), abs=0.3)  # uniform at init
    # A causal LM predicts every token; the others learn from a share of them.
    assert eval_losses[-1] < eval_losses[0] - (1.5 if config_name == "tiny_clm" else 1.0)
    with open(tmp_path / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert {"loss", "learning_rate", "grad_norm", "tokens_per_second", "mfu"} <= set(records[1])
    assert {"eval/loss", "eval/perplexity"} <= set(records[-1])
    # Bits per byte only where the loss is on the text read left to right.
    text_objectives = {"tiny_clm", "tiny_prefix_lm"}
    assert ("eval/bits_per_byte" in records[-1]) == (config_name in text_objectives)
    # Packing fills most positions; the loss covers all of them (causal) or a share (others).
    trained = [r for r in records if "loss" in r]
    assert all(0.5 < r["packing_efficiency"] <= 1.0 for r in trained)
    assert all(0.0 < r["loss_token_fraction"] <= r["packing_efficiency"] for r in trained)
    if config_name == "tiny_clm":
        assert all(r["loss_token_fraction"] == r["packing_efficiency"] for r in trained)


CIRCULAR_PIPELINE = dict(data=1, fsdp=4, pipe=2, microbatches=2, pipeline_repeats=2)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mesh_keys", "num_layers", "config_name"),
    [
        (dict(), 2, "tiny_clm"),  # data parallel over the 8 devices
        # Every objective, pipelined (circular) and resumed.
        *[(CIRCULAR_PIPELINE, 4, name) for name in TINY_CONFIGS],
    ],
)
def test_resumed_run_equals_uninterrupted_run(
    data_dir, tmp_path, mesh_keys, num_layers, config_name
):
    config = with_objective_of(tiny_config(data_dir), config_name)
    config.model.num_layers = num_layers
    config.mesh.update(mesh_keys)
    uninterrupted = train.train_and_evaluate(config, str(tmp_path / "a"))

    # An interruption after the step-3 checkpoint: the same workdir without what came later.
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "6")
    resumed = train.train_and_evaluate(config, str(tmp_path / "b"))

    assert sorted(losses(resumed.history)) == [4, 5, 6]
    for step, (loss, grad_norm) in losses(resumed.history).items():
        assert (loss, grad_norm) == losses(uninterrupted.history)[step]
    jax.tree.map(
        np.testing.assert_array_equal,
        jax.device_get(uninterrupted.state["params"]),
        jax.device_get(resumed.state["params"]),
    )
    with open(tmp_path / "b" / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records if "event" not in r] == [1, 2, 3, 4, 5, 6]
    assert [r for r in records if "event" in r] == [
        {"step": 3, "event": "resume", "processes": 1, "devices": jax.device_count()}
    ]

    # Parameters keep their layout whatever the mesh: the checkpoint restores on one device.
    config.mesh.update(data=1, fsdp=1, pipe=1, microbatches=1, pipeline_repeats=1)
    one_device = train.build_experiment(config, str(tmp_path / "a"), devices=jax.devices()[:1])
    checkpointer = one_device.checkpointer(str(tmp_path / "a"))
    restored = checkpointer.restore(one_device.layout.abstract_state)
    checkpointer.close()
    assert restored.step == 6
    jax.tree.map(
        np.testing.assert_array_equal,
        jax.device_get(uninterrupted.state["params"]),
        jax.device_get(restored.state["params"]),
    )


@pytest.fixture(scope="module")
def single_device_runs(data_dir, tmp_path_factory):
    """Single-device reference runs of 3 steps, by number of layers (computed once each)."""
    runs = {}

    def run(num_layers: int) -> train.TrainResult:
        if num_layers not in runs:
            config = tiny_config(data_dir, steps=3)
            config.model.num_layers = num_layers
            runs[num_layers] = train.train_and_evaluate(
                config, str(tmp_path_factory.mktemp("one")), devices=jax.devices()[:1]
            )
        return runs[num_layers]

    return run


def leaves_by_path(tree) -> dict[str, jax.Array]:
    return {
        jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


MESHES = {
    # name: (mesh and pipeline keys, number of layers, gradient-accumulation steps)
    "data8": (dict(data=8, fsdp=1), 2, 1),
    "fsdp8": (dict(data=1, fsdp=8), 2, 1),
    "data2_fsdp4": (dict(data=2, fsdp=4), 2, 1),
    "data2_fsdp2_tensor2": (dict(data=2, fsdp=2, tensor=2), 2, 1),
    "pipe2_fsdp4_gpipe": (dict(data=1, fsdp=4, pipe=2, microbatches=2), 2, 1),
    "pipe4_data2_gpipe": (dict(data=2, pipe=4, microbatches=4), 4, 1),
    "pipe2_fsdp4_circular": (
        dict(data=1, fsdp=4, pipe=2, microbatches=2, pipeline_repeats=2),
        4,
        1,
    ),
    "pipe4_data2_circular": (dict(data=2, pipe=4, microbatches=4, pipeline_repeats=2), 8, 1),
    "accum2_one_device": (dict(data=1), 2, 2),
    "accum2_data2_fsdp2_tensor2": (dict(data=2, fsdp=2, tensor=2), 2, 2),
    "accum2_pipe2_fsdp4": (dict(data=1, fsdp=4, pipe=2, microbatches=1), 2, 2),
    # Everything at once, with full remat (as configs/clm_7b.py and clm_70b.py run).
    "accum2_pipe2_fsdp2_tensor2_circular_remat": (
        dict(data=1, fsdp=2, tensor=2, pipe=2, microbatches=2, pipeline_repeats=2),
        4,
        2,
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MESHES))
def test_sharded_training_equals_single_device(data_dir, tmp_path, single_device_runs, name):
    mesh_keys, num_layers, accum = MESHES[name]
    config = tiny_config(data_dir, steps=3, grad_accum_steps=accum)
    config.model.num_layers = num_layers
    if name.endswith("remat"):
        config.model.remat_policy = "full"
    config.mesh.update(mesh_keys)
    devices = jax.devices()[:1] if name == "accum2_one_device" else None
    sharded = train.train_and_evaluate(config, str(tmp_path), devices=devices)
    reference = single_device_runs(num_layers)

    # Parameters and both Adam moments really are split as the rules say, not replicated:
    # layers over pipe, embed over fsdp, heads / kv heads / mlp / vocab over tensor.
    mesh = sharded.experiment.mesh.shape
    layers, fsdp, tensor = num_layers // mesh["pipe"], 64 // mesh["fsdp"], mesh["tensor"]
    expected_shards = {
        "['layers']['mlp']['up']['kernel']": (layers, fsdp, 128 // tensor),
        "['layers']['mlp']['down']['kernel']": (layers, 128 // tensor, fsdp),
        "['layers']['attention']['query']['kernel']": (layers, fsdp, 4 // tensor, 16),
        "['layers']['attention']['key']['kernel']": (layers, fsdp, 2 // tensor, 16),
        "['layers']['attention']['value']['kernel']": (layers, fsdp, 2 // tensor, 16),
        "['layers']['attention']['out']['kernel']": (layers, 4 // tensor, 16, fsdp),
        "['embed']['embedding']": (512 // tensor, fsdp),
    }
    leaves = leaves_by_path(sharded.state)
    for name_suffix, shard_shape in expected_shards.items():
        copies = {path: leaf for path, leaf in leaves.items() if path.endswith(name_suffix)}
        assert len(copies) == 3, copies.keys()  # the parameter, Adam's mu and nu
        for path, leaf in copies.items():
            assert leaf.sharding.shard_shape(leaf.shape) == shard_shape, path

    for step, (loss, grad_norm) in losses(reference.history).items():
        np.testing.assert_allclose(losses(sharded.history)[step], (loss, grad_norm), rtol=2e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        jax.device_get(reference.state["params"]),
        jax.device_get(sharded.state["params"]),
    )


def test_gradient_accumulation_weighs_every_token_equally(data_dir, tmp_path):
    """Micro-steps with different numbers of target tokens: sum / sum, not a mean of means."""
    config = tiny_config(data_dir)
    exp = train.build_experiment(config, str(tmp_path), devices=jax.devices()[:1])
    batch = next(iter(exp.eval_batches()))
    batch["loss_weights"][0::2, 8:] = 0  # rows of micro-step 0 (rows i mod 2) keep 8 targets
    results = {}
    for accum in (1, 2):
        step = steps.make_train_step(
            exp.layout, exp.objective, exp.tx, exp.schedule, exp.batch_sharding, accum
        )
        state = state_lib.init_state(exp.model_config, exp.tx, exp.layout, seed=0)
        state, metrics = step(state, data_device.to_global_arrays(batch, exp.batch_sharding, 8))
        results[accum] = jax.device_get((metrics, state["params"]))
    (metrics_1, params_1), (metrics_2, params_2) = results[1], results[2]
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose(metrics_2[key], metrics_1[key], rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), params_1, params_2
    )


@pytest.mark.parametrize(
    "mesh_keys",
    [
        dict(),
        # Pipelined, tensor-parallel, and evaluated in 2 micro-steps like the train step.
        dict(data=2, tensor=2, pipe=2, microbatches=2),
    ],
)
def test_evaluate_matches_a_numpy_reference(data_dir, tmp_path, mesh_keys):
    config = tiny_config(data_dir, grad_accum_steps=2 if mesh_keys else 1)
    config.mesh.update(mesh_keys)
    exp = train.build_experiment(config, str(tmp_path))
    state = state_lib.init_state(exp.model_config, exp.tx, exp.layout, seed=0)
    eval_step = steps.make_eval_step(
        exp.layout, exp.objective, exp.batch_sharding, config.train.grad_accum_steps
    )
    batches = list(exp.eval_batches())
    metrics = steps.evaluate(
        eval_step, state["params"], batches, exp.token_bytes(), exp.batch_sharding, 8
    )

    from flax import nnx

    # The reference runs the layers in order on one device, whatever the run's mesh.
    unpipelined = dataclasses.replace(
        exp.model_config, pipeline_stages=1, pipeline_repeats=1, pipeline_microbatches=1
    )
    graphdef = state_lib.abstract_model(unpipelined)[0]
    model = nnx.merge(graphdef, jax.device_get(state["params"]))
    token_bytes = exp.tokenizer.token_byte_lengths()
    nll_sum = weight_sum = byte_sum = 0.0
    for batch in batches:
        logits = np.asarray(
            model(
                batch["inputs"], batch["segment_ids"], batch["positions"], batch["bidirectional"]
            ),
            np.float64,
        )
        shifted = logits - logits.max(-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        nll = -np.take_along_axis(log_probs, batch["targets"][..., None], -1)[..., 0]
        nll_sum += float((nll * batch["loss_weights"]).sum())
        weight_sum += float(batch["loss_weights"].sum())
        byte_sum += float((token_bytes[batch["targets"]] * batch["loss_weights"]).sum())
    assert metrics["eval/loss"] == pytest.approx(nll_sum / weight_sum, rel=1e-5)
    assert metrics["eval/perplexity"] == pytest.approx(math.exp(nll_sum / weight_sum), rel=1e-5)
    assert metrics["eval/bits_per_byte"] == pytest.approx(
        nll_sum / (math.log(2) * byte_sum), rel=1e-5
    )


def load_config(name: str):
    return config_lib.load_config_file(CONFIGS / f"{name}.py")


def test_activation_sharding_constraints_reach_the_train_step(data_dir, tmp_path):
    config = tiny_config(data_dir)
    config.mesh.update(data=2, fsdp=4)
    exp = train.build_experiment(config, str(tmp_path))
    step = steps.make_train_step(
        exp.layout, exp.objective, exp.tx, exp.schedule, exp.batch_sharding
    )
    batch = {
        key: jax.ShapeDtypeStruct((8, 64), "float32" if key == "loss_weights" else "int32")
        for key in pipeline.BATCH_FEATURES
    }

    def constraints(hlo: str) -> int:  # Shardy and GSPMD spell a sharding constraint differently
        return hlo.count("sharding_constraint") + hlo.count("@Sharding")

    with mesh_lib.axis_rules(exp.mesh, exp.layout.rules):
        hlo = step.__wrapped__.lower(exp.layout.abstract_state, batch).as_text()
    assert constraints(hlo) >= 2 * config.model.num_layers
    # Without the rules in context the model's constraints are no-ops: the wrapper is needed.
    fresh_step = steps.make_train_step(
        exp.layout, exp.objective, exp.tx, exp.schedule, exp.batch_sharding
    )
    with jax.set_mesh(exp.mesh):
        hlo = fresh_step.__wrapped__.lower(exp.layout.abstract_state, batch).as_text()
    assert constraints(hlo) == 0
