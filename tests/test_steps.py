"""The train step's anomaly handling (non-finite values, loss and gradient spikes) and z-loss.

Every test runs the real jitted step on a tiny causal LM on one CPU device, with synthetic
batches of random tokens: no prepared data needed.
"""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpretrain import config as config_lib
from jaxpretrain import mesh as mesh_lib
from jaxpretrain import objectives, steps
from jaxpretrain import state as state_lib

CONFIGS = pathlib.Path(__file__).parent.parent / "configs"
VOCAB, ROWS, LENGTH = 64, 4, 16


def tiny_config(action: str = "skip"):
    config = config_lib.load_config_file(CONFIGS / "tiny_clm.py")
    config.model.update(
        num_layers=1, embed_dim=32, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64
    )
    config.model.max_seq_len = LENGTH
    config.train.update(batch_size=ROWS, seq_len=LENGTH, lr=1e-2, warmup_steps=0, steps=100)
    config.train.anomaly.action = action
    config.data.vocab_size = VOCAB
    return config


class TinyRun:
    """A tiny causal LM on one CPU device: its compiled steps (cached; each compile is seconds)
    and its initial state."""

    def __init__(self):
        self.setup = state_lib.setup(tiny_config(), devices=jax.devices()[:1])
        initial = state_lib.init_state(self.setup.model_config, self.setup.tx, self.setup.layout, 0)
        self._initial = jax.device_get(initial)
        self._steps = {}

        def forward(params, batch):
            model = nnx.merge(self.setup.layout.graphdef, params)
            return model(
                batch["inputs"], batch["segment_ids"], batch["positions"], batch["bidirectional"]
            )

        self._forward = jax.jit(forward)

    def step(self, anomaly=None, grad_accum_steps=1, z_loss=0.0):
        key = (anomaly, grad_accum_steps, z_loss)
        if key not in self._steps:
            self._steps[key] = steps.make_train_step(
                self.setup.layout,
                objectives.get("causal_lm"),
                self.setup.tx,
                self.setup.schedule,
                self.setup.batch_sharding,
                grad_accum_steps,
                anomaly=anomaly,
                z_loss=z_loss,
            )
        return self._steps[key]

    def fresh_state(self):
        return jax.device_put(self._initial, self.setup.layout.shardings)

    def log_z_squared(self, params, batch) -> float:
        """Mean over loss tokens of logsumexp(logits)^2, in float64 numpy."""
        logits = np.asarray(self._forward(params, batch), np.float64)
        peak = logits.max(-1)
        log_z = peak + np.log(np.exp(logits - peak[..., None]).sum(-1))
        weights = batch["loss_weights"]
        return float((weights * log_z**2).sum() / weights.sum())


@pytest.fixture(scope="module")
def tiny():
    return TinyRun()


def policy(action: str, **overrides) -> steps.AnomalyPolicy:
    return dataclasses.replace(
        steps.AnomalyPolicy.from_config(tiny_config(action).train), **overrides
    )


def make_batch(seed: int, target: int | None = None) -> dict[str, np.ndarray]:
    """One document per row; random next tokens, or all `target` (an easily learnt batch)."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, VOCAB, (ROWS, LENGTH), dtype=np.int32)
    if target is not None:
        targets[:] = target
    inputs = np.concatenate([np.zeros((ROWS, 1), np.int32), targets[:, :-1]], axis=1)
    return {
        "inputs": inputs,
        "targets": targets,
        "loss_weights": np.ones((ROWS, LENGTH), np.float32),
        "segment_ids": np.ones((ROWS, LENGTH), np.int32),
        "positions": np.tile(np.arange(LENGTH, dtype=np.int32), (ROWS, 1)),
        "bidirectional": np.zeros((ROWS, LENGTH), np.int32),
    }


def take_step(step, state, batch):
    """(host copy of the state before, the new state, host metrics): the step donates `state`."""
    before = jax.device_get(state)
    state, metrics = step(state, batch)
    return before, state, jax.device_get(metrics)


def assert_trees_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def losses_ema(losses: list[float], decay: float) -> float:
    """The step's moving average: the first loss, then decay x average + (1 - decay) x loss."""
    average = losses[0]
    for loss in losses[1:]:
        average = decay * average + (1 - decay) * loss
    return average


def test_non_finite_batch_is_skipped_and_training_continues(tiny):
    step = tiny.step(policy("skip"))
    first, second = make_batch(1), make_batch(2)
    poisoned = make_batch(3)
    poisoned["loss_weights"][1, 5] = np.nan

    _, state, _ = take_step(step, tiny.fresh_state(), first)
    before, state, metrics = take_step(step, state, poisoned)
    after = jax.device_get(state)
    assert metrics["anomaly"] == steps.ANOMALY_NON_FINITE
    assert metrics["update_skipped"] == 1
    # Nothing learnt from the batch, the optimizer's count included; the batch is consumed.
    assert_trees_equal(after["params"], before["params"])
    assert_trees_equal(after["opt_state"], before["opt_state"])
    assert_trees_equal(after["anomaly"], before["anomaly"])
    assert after["step"] == before["step"] + 1

    # The next step is the one a run that never saw the poisoned batch takes.
    _, state, metrics = take_step(step, state, second)
    _, reference, reference_metrics = take_step(step, step(tiny.fresh_state(), first)[0], second)
    assert metrics["anomaly"] == 0 and metrics["update_skipped"] == 0
    for key in ("loss", "grad_norm", "learning_rate", "loss_ema"):
        assert metrics[key] == reference_metrics[key], key
    assert_trees_equal(jax.device_get(state["params"]), jax.device_get(reference["params"]))
    assert_trees_equal(jax.device_get(state["opt_state"]), jax.device_get(reference["opt_state"]))


def test_warn_applies_a_non_finite_update_and_flags_it(tiny):
    step = tiny.step(policy("warn"))
    poisoned = make_batch(3)
    poisoned["loss_weights"][1, 5] = np.inf
    _, state, _ = take_step(step, tiny.fresh_state(), make_batch(1))
    before, state, metrics = take_step(step, state, poisoned)
    assert metrics["anomaly"] == steps.ANOMALY_NON_FINITE
    assert metrics["update_skipped"] == 0
    params = jax.device_get(state["params"])
    assert not all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params))
    # The moving average still takes only finite losses.
    assert_trees_equal(jax.device_get(state["anomaly"]), before["anomaly"])


@pytest.mark.parametrize("action", ["skip", "warn"])
def test_gradient_norm_above_the_threshold_is_flagged(tiny, action):
    # From the initial state a batch of random tokens has a gradient norm near 1, a batch of
    # one repeated token near 6 (every token pushes the same way); the threshold lies between.
    batches = {"random": make_batch(1), "repeated": make_batch(1, target=7)}
    unjudged = {name: take_step(tiny.step(), tiny.fresh_state(), b) for name, b in batches.items()}
    norms = {name: float(metrics["grad_norm"]) for name, (_, _, metrics) in unjudged.items()}
    assert 2 * norms["random"] < norms["repeated"]
    step = tiny.step(policy(action, max_grad_norm=(norms["random"] + norms["repeated"]) / 2))

    for name, batch in batches.items():
        before, state, metrics = take_step(step, tiny.fresh_state(), batch)
        spike = name == "repeated"
        assert metrics["anomaly"] == (steps.ANOMALY_GRAD_SPIKE if spike else 0)
        skipped = spike and action == "skip"
        assert metrics["update_skipped"] == int(skipped)
        # Skipped: untouched. Applied: exactly the update of a step without a policy.
        unjudged_params = jax.device_get(unjudged[name][1]["params"])
        expected_params = before["params"] if skipped else unjudged_params
        assert_trees_equal(jax.device_get(state["params"]), expected_params)


def test_loss_spike_after_warmup_is_flagged_and_skipped(tiny):
    # Steps on an easily learnt batch (every target token 7) drive its loss down; a batch of
    # another token then costs several times the moving average: a spike.
    decay, warmup = 0.5, 6
    step = tiny.step(policy("skip", loss_spike_factor=1.5, warmup_steps=warmup, ema_decay=decay))
    learnt, surprise = make_batch(1, target=7), make_batch(2, target=9)
    state, losses = tiny.fresh_state(), []
    for _ in range(warmup - 1):
        _, state, metrics = take_step(step, state, learnt)
        assert metrics["anomaly"] == 0
        losses.append(float(metrics["loss"]))
    np.testing.assert_allclose(metrics["loss_ema"], losses_ema(losses, decay), rtol=1e-6)

    # One loss short of the warm-up: the same jump is not judged yet, and is averaged.
    early = jax.device_get(step(jax.tree.map(jnp.copy, state), surprise))
    assert early[1]["loss"] > 1.5 * losses_ema(losses, decay)
    assert early[1]["anomaly"] == 0 and early[1]["update_skipped"] == 0
    assert early[0]["anomaly"]["observed"] == warmup

    _, state, metrics = take_step(step, state, learnt)
    losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0] / 2

    before, state, metrics = take_step(step, state, surprise)
    assert metrics["loss"] > 1.5 * metrics["loss_ema"]
    assert metrics["anomaly"] == steps.ANOMALY_LOSS_SPIKE
    assert metrics["update_skipped"] == 1
    after = jax.device_get(state)
    assert_trees_equal(after["params"], before["params"])
    assert_trees_equal(after["opt_state"], before["opt_state"])
    # The spike did not enter the average it is judged against.
    assert_trees_equal(after["anomaly"], before["anomaly"])
    assert after["anomaly"]["observed"] == warmup


def test_z_loss_sum_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (2, 5, 11)).astype(np.float32)
    weights = rng.uniform(0, 1, (2, 5)).astype(np.float32)
    log_z = np.log(np.exp(logits.astype(np.float64)).sum(-1))
    expected = (weights * log_z**2).sum()
    np.testing.assert_allclose(steps.z_loss_sum(logits, weights), expected, rtol=1e-6)


def test_z_loss_is_reported_apart_and_its_gradient_lowers_log_z(tiny):
    coefficient, batch = 1.0, make_batch(1)
    batch["loss_weights"][0, :8] = 0  # the z-loss counts loss tokens only
    initial = tiny.fresh_state()
    expected_z = coefficient * tiny.log_z_squared(initial["params"], batch)

    _, _, plain_metrics = take_step(tiny.step(), tiny.fresh_state(), batch)
    assert "z_loss" not in plain_metrics
    for accum in (1, 2):
        step = tiny.step(grad_accum_steps=accum, z_loss=coefficient)
        _, _, metrics = take_step(step, tiny.fresh_state(), batch)
        np.testing.assert_allclose(metrics["z_loss"], expected_z, rtol=1e-5, err_msg=str(accum))
        # `loss` stays the objective's; the z-loss term only adds to what is differentiated.
        np.testing.assert_allclose(metrics["loss"], plain_metrics["loss"], rtol=1e-6)
        assert abs(metrics["grad_norm"] - plain_metrics["grad_norm"]) > 0.1

    # Cross-entropy ignores a shift of all logits; the z-loss pulls log Z towards 0.
    plain_state, z_state = tiny.fresh_state(), tiny.fresh_state()
    for _ in range(10):
        plain_state = tiny.step()(plain_state, batch)[0]
        z_state = tiny.step(z_loss=coefficient)(z_state, batch)[0]
    z_log_z2 = tiny.log_z_squared(z_state["params"], batch)
    assert z_log_z2 < 0.5 * tiny.log_z_squared(initial["params"], batch)
    assert z_log_z2 < 0.5 * tiny.log_z_squared(plain_state["params"], batch)


@pytest.mark.parametrize(("action", "skips"), [("warn", False), ("skip", True), ("rollback", True)])
def test_policy_from_config(action, skips):
    config = tiny_config(action)
    config.train.anomaly.update(loss_spike_factor=4.0, max_grad_norm=9.0, warmup_steps=7)
    assert steps.AnomalyPolicy.from_config(config.train) == steps.AnomalyPolicy(
        skip_update=skips, loss_spike_factor=4.0, max_grad_norm=9.0, ema_decay=0.99, warmup_steps=7
    )


def _chunked_run(chunk: int, tie: bool, vocab: int = VOCAB, rows: int = ROWS, length: int = LENGTH):
    config = tiny_config()
    config.model.update(logits_chunk_length=chunk, tie_embeddings=tie, max_seq_len=length)
    config.train.update(batch_size=rows, seq_len=length)
    config.data.vocab_size = vocab
    setup = state_lib.setup(config, devices=jax.devices()[:1])
    state = state_lib.init_state(setup.model_config, setup.tx, setup.layout, 0)
    step = steps.make_train_step(setup.layout, objectives.get("causal_lm"), setup.tx,
                                 setup.schedule, setup.batch_sharding, z_loss=1e-2)  # fmt: skip
    eval_step = steps.make_eval_step(setup.layout, objectives.get("causal_lm"),
                                     setup.batch_sharding)  # fmt: skip
    return setup, state, step, eval_step


@pytest.mark.parametrize("tie", [True, False])
def test_chunked_logits_give_the_whole_rows_loss_gradients_and_eval(tie):
    """model.logits_chunk_length changes memory, not the numbers: one train step (loss, z-loss,
    gradient norm, updated parameters) and the eval sums equal the whole-row computation."""
    batch = make_batch(3)
    batch["loss_weights"][1, 5:] = 0
    token_bytes = jnp.ones((VOCAB,), jnp.float32)
    results = []
    for chunk in (0, 4):
        _, state, step, eval_step = _chunked_run(chunk, tie)
        sums = jax.device_get(eval_step(state["params"], batch, token_bytes))
        state, metrics = step(state, batch)
        results.append((jax.device_get(metrics), jax.device_get(state["params"]), sums))
    (whole_metrics, whole_params, whole_sums), (chunk_metrics, chunk_params, chunk_sums) = results
    for key in ("loss", "z_loss", "grad_norm"):
        np.testing.assert_allclose(chunk_metrics[key], whole_metrics[key], rtol=2e-5, err_msg=key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 chunk_params, whole_params)  # fmt: skip
    for key in steps.EVAL_SUM_KEYS:
        np.testing.assert_allclose(chunk_sums[key], whole_sums[key], rtol=2e-5, err_msg=key)


def test_chunked_logits_shrink_the_compiled_steps_memory():
    """With a vocabulary far larger than the model, the [batch, length, vocab] float32 logits
    (and their gradient) dominate the step's temporary memory; chunks of 32 positions must cut
    it by more than half (the compiler's own memory analysis, not a timing)."""
    temp_bytes = {}
    for chunk in (0, 32):
        setup, state, step, _ = _chunked_run(chunk, tie=True, vocab=8192, rows=4, length=256)
        batch = jax.tree.map(jnp.asarray, make_batch(0))
        batch = {key: jnp.zeros((4, 256), value.dtype) for key, value in batch.items()}
        with mesh_lib.axis_rules(setup.batch_sharding.mesh, setup.layout.rules):
            compiled = step.__wrapped__.lower(state, batch).compile()
        temp_bytes[chunk] = compiled.memory_analysis().temp_size_in_bytes
    assert temp_bytes[32] < 0.5 * temp_bytes[0], temp_bytes
