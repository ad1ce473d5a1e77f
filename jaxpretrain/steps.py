"""The jitted steps: train (with gradient accumulation, z-loss and anomaly handling), eval, and
the eval reduction.

Each step is one `jax.jit` with explicit in/out shardings from the state layout, traced inside
`mesh.axis_rules` so the model's activation constraints and the pipeline's stage axis apply.
The loop that calls them is in `train.py`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from jaxpretrain import mesh as mesh_lib
from jaxpretrain import objectives
from jaxpretrain.data import device as data_device
from jaxpretrain.data import pipeline
from jaxpretrain.state import Setup, StateLayout, TrainState


def _with_axis_rules(jitted: Callable, mesh: Mesh, rules: mesh_lib.AxisRules) -> Callable:
    """Calls `jitted` inside `mesh_lib.axis_rules`, where the model's activation constraints
    (`mesh_lib.constrain`) and the pipeline's stage axis take effect; outside they are no-ops."""

    @functools.wraps(jitted)
    def call(*args):
        with mesh_lib.axis_rules(mesh, rules):
            return jitted(*args)

    return call


def _loss_sums(
    graphdef: nnx.GraphDef,
    params: Any,
    batch: dict[str, jax.Array],
    objective: objectives.Objective,
    z_loss: float = 0.0,
) -> dict[str, jax.Array]:
    """{'loss', 'weight'[, 'z_loss' (coefficient applied)]} summed over the batch's tokens.

    With `model.logits_chunk_length` = C > 0 the output layer and the loss run over C positions
    at a time under `jax.checkpoint`, so the backward pass recomputes each chunk's logits instead
    of keeping [batch, length, vocab] float32 logits (the largest activation of a small model
    with a big vocabulary). The objectives' losses are sums over tokens, so the chunks' sums
    add up to the whole batch's.
    """
    model = nnx.merge(graphdef, params)
    features = (batch["inputs"], batch["segment_ids"], batch["positions"], batch["bidirectional"])

    def sums_of(logits_BLV, targets_BL, weights_BL):
        loss_sum, weight_sum = objective.loss(logits_BLV, targets_BL, weights_BL)
        sums = {"loss": loss_sum, "weight": weight_sum}
        if z_loss > 0:
            sums["z_loss"] = z_loss * z_loss_sum(logits_BLV, weights_BL)
        return sums

    chunk = model.cfg.logits_chunk_length
    length = batch["inputs"].shape[1]
    if not chunk or chunk >= length:
        return sums_of(model(*features), batch["targets"], batch["loss_weights"])
    if length % chunk:
        raise ValueError(
            f"model.logits_chunk_length={chunk} does not divide the sequence length {length}; "
            "use a divisor of train.seq_len (or 0 for whole rows)."
        )

    def by_chunk(x_BL_):  # [B, L, ...] -> [L / C, B, C, ...]
        return jnp.swapaxes(
            x_BL_.reshape(x_BL_.shape[0], length // chunk, chunk, *x_BL_.shape[2:]), 0, 1
        )

    @jax.checkpoint
    def chunk_sums(x_BCD, targets_BC, weights_BC):
        return sums_of(model.logits(x_BCD), targets_BC, weights_BC)

    def add_chunk(totals, chunk_inputs):
        return jax.tree.map(jnp.add, totals, chunk_sums(*chunk_inputs)), None

    hidden_BLD = model.hidden(*features)
    keys = ("loss", "weight", "z_loss") if z_loss > 0 else ("loss", "weight")
    zeros = {key: jnp.zeros((), jnp.float32) for key in keys}
    chunks = (by_chunk(hidden_BLD), by_chunk(batch["targets"]), by_chunk(batch["loss_weights"]))
    return jax.lax.scan(add_chunk, zeros, chunks)[0]


def _batch_shardings(batch_sharding: NamedSharding) -> dict[str, NamedSharding]:
    return {key: batch_sharding for key in pipeline.BATCH_FEATURES}


# Bit flags of the train step's `anomaly` metric (0: a normal step).
ANOMALY_NON_FINITE = 1  # the loss or the gradient norm is NaN or infinite
ANOMALY_LOSS_SPIKE = 2  # loss > loss_spike_factor x its moving average
ANOMALY_GRAD_SPIKE = 4  # gradient norm > max_grad_norm


@dataclasses.dataclass(frozen=True)
class AnomalyPolicy:
    """When the train step calls a step anomalous, and whether it then drops the update.

    A step is anomalous when its loss or gradient norm is not finite; when its loss exceeds
    `loss_spike_factor` x the moving average of earlier losses, judged only once `warmup_steps`
    losses have been averaged (0 disables); or when its gradient norm exceeds `max_grad_norm`
    (0 disables). The moving average (decay `ema_decay` per step) takes finite, normal losses
    only, so a spike does not raise the bar for the next one. With `skip_update` an anomalous
    step leaves the parameters and the optimizer state exactly as they were; without, the
    update is applied and only flagged.
    """

    skip_update: bool
    loss_spike_factor: float
    max_grad_norm: float
    ema_decay: float
    warmup_steps: int

    @classmethod
    def from_config(cls, train_cfg: ml_collections.ConfigDict) -> AnomalyPolicy:
        """The policy of `config.train.anomaly`; actions skip and rollback both drop the update
        (rollback's restore happens in the train loop), warn applies it."""
        settings = train_cfg.anomaly  # checked by config.validate
        return cls(
            skip_update=settings.action in ("skip", "rollback"),
            loss_spike_factor=float(settings.loss_spike_factor),
            max_grad_norm=float(settings.max_grad_norm),
            ema_decay=float(settings.ema_decay),
            warmup_steps=int(settings.warmup_steps),
        )


# A step made without a policy still flags non-finite values and averages the loss (both cost a
# few scalar ops) but never drops an update.
_DETECT_NON_FINITE_ONLY = AnomalyPolicy(
    skip_update=False, loss_spike_factor=0.0, max_grad_norm=0.0, ema_decay=0.99, warmup_steps=0
)


def z_loss_sum(logits_BLV: jax.Array, loss_weights_BL: jax.Array) -> jax.Array:
    """PaLM's z-loss before its coefficient: sum over tokens of weight x logsumexp(logits)^2.

    Pushing log Z towards 0 keeps the softmax normaliser near 1, which keeps bfloat16 logits
    from drifting large; it does not change which token is predicted.
    """
    log_z_BL = jax.nn.logsumexp(logits_BLV.astype(jnp.float32), axis=-1)
    return jnp.sum(loss_weights_BL.astype(jnp.float32) * jnp.square(log_z_BL))


def _judge_step(
    policy: AnomalyPolicy, loss: jax.Array, grad_norm: jax.Array, anomaly_state: dict
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(the step's int32 anomaly flags, the next `state["anomaly"]`), all on device."""
    loss_ema, observed = anomaly_state["loss_ema"], anomaly_state["observed"]
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    flags = (~finite).astype(jnp.int32) * ANOMALY_NON_FINITE
    if policy.loss_spike_factor > 0:
        # At least one loss averaged: an empty average (0) would call every loss a spike. NaN
        # compares False, so a non-finite loss is flagged above only.
        warmed_up = observed >= max(policy.warmup_steps, 1)
        loss_spike = warmed_up & (loss > policy.loss_spike_factor * loss_ema)
        flags |= loss_spike.astype(jnp.int32) * ANOMALY_LOSS_SPIKE
    if policy.max_grad_norm > 0:
        flags |= (grad_norm > policy.max_grad_norm).astype(jnp.int32) * ANOMALY_GRAD_SPIKE
    normal = flags == 0
    # The first loss starts the average: from 0 it would take ~1 / (1 - decay) steps to forget.
    averaged = jnp.where(
        observed == 0, loss, policy.ema_decay * loss_ema + (1 - policy.ema_decay) * loss
    )
    next_state = {
        "loss_ema": jnp.where(normal, averaged, loss_ema).astype(jnp.float32),
        "observed": observed + normal.astype(jnp.int32),
    }
    return flags, next_state


def _optimizer_step(opt_state: Any, step: jax.Array) -> jax.Array:
    """The step the optimizer's learning-rate schedule is at.

    It is behind `state["step"]` by the updates skipped so far, since a skipped step does not
    advance the optimizer's count; `step` when the optimizer has no schedule state.
    """
    schedule_states = optax.tree.get_all_with_path(opt_state, "ScaleByScheduleState")
    if len(schedule_states) != 1:
        return step
    return schedule_states[0][1].count


def make_train_step(
    layout: StateLayout,
    objective: objectives.Objective,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    batch_sharding: NamedSharding,
    grad_accum_steps: int = 1,
    anomaly: AnomalyPolicy | None = None,
    z_loss: float = 0.0,
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """A jitted (state, batch) -> (state, metrics) with explicit shardings; donates the state.

    With `grad_accum_steps` = k > 1 the batch runs as k sequential micro-steps. Their summed
    losses and summed weights make the update (sum of loss / sum of weight, not a mean of
    means), so it equals the update of the whole batch at once.

    `anomaly` judges every step on device, with no host round trip (see `AnomalyPolicy`); None
    flags non-finite steps but never skips one. `state["step"]` counts batches consumed, so it
    advances on a skipped step too, while the parameters, the optimizer state and its
    learning-rate schedule do not.

    `z_loss` > 0 adds `z_loss * z_loss_sum(logits, loss_weights)` to the loss that is
    differentiated, per micro-step, so accumulation still divides by the whole batch's weight;
    0 builds the step without it.

    Metrics (replicated scalars): `loss` (the objective's, per weight, without the z-loss),
    `grad_norm` (of the mean gradient, before clipping), `learning_rate` (the one this update
    used), `anomaly` (int32 bit flags: ANOMALY_NON_FINITE | ANOMALY_LOSS_SPIKE |
    ANOMALY_GRAD_SPIKE; 0 normal), `update_skipped` (int32 0/1), `loss_ema` (the loss's moving
    average after this step; an anomalous step leaves it as judged), `tokens` (int32: positions
    of the global batch holding a token, not padding), and `z_loss` (the z-loss term per weight,
    coefficient included) when `z_loss` > 0.
    """
    if z_loss < 0:
        raise ValueError(f"config key train.z_loss={z_loss} must be >= 0 (0 disables).")
    policy = anomaly or _DETECT_NON_FINITE_ONLY
    sum_keys = ("loss", "weight", "z_loss") if z_loss > 0 else ("loss", "weight")

    def loss_and_sums(params, batch):
        sums = _loss_sums(layout.graphdef, params, batch, objective, z_loss)
        return sums["loss"] + sums.get("z_loss", 0.0), sums

    def sums_and_grads(params, batch):
        (_, sums), grads = jax.value_and_grad(loss_and_sums, has_aux=True)(params, batch)
        return sums, grads

    def accumulated_sums_and_grads(params, batch):
        micro_batches = jax.tree.map(lambda x: mesh_lib.split_batch(x, grad_accum_steps), batch)

        def micro_step(carry, micro_batch):
            sums, grads = carry
            micro_sums, micro_grads = sums_and_grads(params, micro_batch)
            grads = jax.tree.map(lambda g, m: g + m.astype(jnp.float32), grads, micro_grads)
            grads = jax.lax.with_sharding_constraint(grads, layout.shardings["params"])
            return (jax.tree.map(jnp.add, sums, micro_sums), grads), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        zeros = jax.lax.with_sharding_constraint(zeros, layout.shardings["params"])
        zero_sums = {key: jnp.zeros((), jnp.float32) for key in sum_keys}
        (sums, grads), _ = jax.lax.scan(micro_step, (zero_sums, zeros), micro_batches)
        return sums, grads

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        if grad_accum_steps == 1:
            sums, grad_sums = sums_and_grads(state["params"], batch)
        else:
            sums, grad_sums = accumulated_sums_and_grads(state["params"], batch)
        weight = jnp.maximum(sums["weight"], 1.0)
        # Divide in float32 and round once: a bfloat16 token count alone is off by up to 0.4%.
        grads = jax.tree.map(
            lambda g, p: (g.astype(jnp.float32) / weight).astype(p.dtype),
            grad_sums,
            state["params"],
        )
        loss, grad_norm = sums["loss"] / weight, optax.tree.norm(grads)
        flags, anomaly_state = _judge_step(policy, loss, grad_norm, state["anomaly"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        skipped = jnp.zeros((), jnp.bool_)
        if policy.skip_update:
            # A select, not a branch: it fuses into the update, and NaNs in the discarded
            # update never reach the kept state.
            skipped = flags != 0
            params = optax.tree.where(skipped, state["params"], params)
            opt_state = optax.tree.where(skipped, state["opt_state"], opt_state)
        new_state = {
            "step": state["step"] + 1,
            "params": params,
            "opt_state": opt_state,
            "rng": state["rng"],
            "anomaly": anomaly_state,
        }
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "learning_rate": schedule(_optimizer_step(state["opt_state"], state["step"])),
            "anomaly": flags,
            "update_skipped": skipped.astype(jnp.int32),
            "loss_ema": anomaly_state["loss_ema"],
            # Positions holding a token, over the global batch: throughput counts these, not
            # padding, and no host sees the other hosts' rows.
            "tokens": jnp.count_nonzero(batch["segment_ids"]).astype(jnp.int32),
        }
        if z_loss > 0:
            metrics["z_loss"] = sums["z_loss"] / weight
        return new_state, metrics

    jitted = jax.jit(
        train_step,
        in_shardings=(layout.shardings, _batch_shardings(batch_sharding)),
        out_shardings=(layout.shardings, mesh_lib.replicated(batch_sharding.mesh)),
        donate_argnums=0,
    )
    return _with_axis_rules(jitted, batch_sharding.mesh, layout.rules)


def make_configured_train_step(
    setup: Setup, objective: objectives.Objective, train_cfg: ml_collections.ConfigDict
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """The train step `config.train` asks for on `setup`: what training runs and the dry run
    compiles, built in one place so the two cannot drift apart."""
    return make_train_step(
        setup.layout,
        objective,
        setup.tx,
        setup.schedule,
        setup.batch_sharding,
        grad_accum_steps=train_cfg.grad_accum_steps,
        anomaly=AnomalyPolicy.from_config(train_cfg),
        z_loss=train_cfg.z_loss,
    )


EVAL_SUM_KEYS = ("loss_sum", "weight_sum", "bytes_sum")


def make_eval_step(
    layout: StateLayout,
    objective: objectives.Objective,
    batch_sharding: NamedSharding,
    micro_steps: int = 1,
) -> Callable[..., dict[str, jax.Array]]:
    """A jitted (params, batch, token_bytes_V) -> summed nll, weight and target bytes.

    With `micro_steps` > 1 the batch is evaluated in that many sequential parts (the train
    step's `grad_accum_steps`), so eval never holds more activations than a train micro-step.
    """

    def batch_sums(params, batch, token_bytes_V):
        sums = _loss_sums(layout.graphdef, params, batch, objective)
        loss_sum, weight_sum = sums["loss"], sums["weight"]
        bytes_sum = jnp.sum(token_bytes_V[batch["targets"]] * batch["loss_weights"])
        return {"loss_sum": loss_sum, "weight_sum": weight_sum, "bytes_sum": bytes_sum}

    def eval_step(params, batch, token_bytes_V):
        if micro_steps == 1:
            return batch_sums(params, batch, token_bytes_V)
        parts = jax.tree.map(lambda x: mesh_lib.split_batch(x, micro_steps), batch)

        def add_part(totals, part):
            sums = batch_sums(params, part, token_bytes_V)
            return jax.tree.map(jnp.add, totals, sums), None

        zeros = {key: jnp.zeros((), jnp.float32) for key in EVAL_SUM_KEYS}
        return jax.lax.scan(add_part, zeros, parts)[0]

    replicated = mesh_lib.replicated(batch_sharding.mesh)
    jitted = jax.jit(
        eval_step,
        in_shardings=(layout.shardings["params"], _batch_shardings(batch_sharding), replicated),
        out_shardings=replicated,
    )
    return _with_axis_rules(jitted, batch_sharding.mesh, layout.rules)


def evaluation_sums(
    eval_step: Callable[..., dict[str, jax.Array]],
    params: Any,
    batches: Iterable[dict[str, np.ndarray]],
    token_bytes_V: jax.Array,
    batch_sharding: NamedSharding,
    global_rows: int,
) -> dict[str, float]:
    """Summed `loss_sum`, `weight_sum` (target tokens) and `bytes_sum` over `batches`, this
    process's parts of global batches of `global_rows` rows."""
    # Dispatch every batch before fetching: one host sync per eval, not one per batch.
    per_batch = [
        eval_step(
            params,
            data_device.to_global_arrays(batch, batch_sharding, global_rows),
            token_bytes_V,
        )
        for batch in batches
    ]
    fetched = jax.device_get(per_batch)
    return {key: sum(float(sums[key]) for sums in fetched) for key in EVAL_SUM_KEYS}


def eval_metrics(
    sums: Mapping[str, float], bits_per_byte: bool = True, prefix: str = "eval/"
) -> dict[str, float]:
    """Loss (nats per target token), perplexity and bits per byte from `evaluation_sums`.

    Bits per byte is left out when `bits_per_byte` is False: for objectives whose loss is not on
    the text read left to right (`Objective.predicts_text`) it would measure nothing about it.
    """
    if sums["weight_sum"] == 0:
        raise ValueError("the validation split produced no target tokens; prepare more data.")
    loss = sums["loss_sum"] / sums["weight_sum"]
    metrics = {f"{prefix}loss": loss, f"{prefix}perplexity": math.exp(min(loss, 700.0))}
    if bits_per_byte:
        bits = sums["loss_sum"] / (math.log(2) * max(sums["bytes_sum"], 1.0))
        metrics[f"{prefix}bits_per_byte"] = bits
    return metrics


def mixture_eval_metrics(
    sums_by_source: Mapping[str, Mapping[str, float]],
    token_shares: Mapping[str, float],
    bits_per_byte: bool = True,
) -> dict[str, float]:
    """`eval/<source>/...` for every source, and `eval/...` for the training mixture.

    Each source is evaluated on its own sample, so the overall figures weigh the sources by
    their share of the training tokens, not by how many were evaluated: the loss is
    sum_s share_s * loss_s (the expected loss per token of the mixture), and bits per byte
    divides it by the mixture's bytes per token, sum_s share_s * bytes_s / tokens_s.
    """
    metrics: dict[str, float] = {}
    for name, sums in sums_by_source.items():
        metrics.update(eval_metrics(sums, bits_per_byte, prefix=f"eval/{name}/"))
    total_share = sum(token_shares.get(name, 0.0) for name in sums_by_source)
    if total_share <= 0:
        raise ValueError(f"no training token share for the sources {sorted(sums_by_source)}.")
    share = {name: token_shares.get(name, 0.0) / total_share for name in sums_by_source}
    loss = sum(share[name] * metrics[f"eval/{name}/loss"] for name in sums_by_source)
    metrics["eval/loss"] = loss
    metrics["eval/perplexity"] = math.exp(min(loss, 700.0))
    if bits_per_byte:
        bytes_per_token = sum(
            share[name] * sums["bytes_sum"] / sums["weight_sum"]
            for name, sums in sums_by_source.items()
        )
        metrics["eval/bits_per_byte"] = loss / (math.log(2) * max(bytes_per_token, 1e-9))
    return metrics


def evaluate(
    eval_step: Callable[..., dict[str, jax.Array]],
    params: Any,
    batches: Iterable[dict[str, np.ndarray]],
    token_bytes_V: jax.Array,
    batch_sharding: NamedSharding,
    global_rows: int,
    bits_per_byte: bool = True,
) -> dict[str, float]:
    """Validation loss (nats/token), perplexity and bits per byte over `batches` (see
    `evaluation_sums` and `eval_metrics`)."""
    sums = evaluation_sums(eval_step, params, batches, token_bytes_V, batch_sharding, global_rows)
    return eval_metrics(sums, bits_per_byte)
