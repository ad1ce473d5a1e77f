"""The jitted steps: train (with gradient accumulation), eval, and the eval reduction.

Each step is one `jax.jit` with explicit in/out shardings from the state layout, traced inside
`mesh.axis_rules` so the model's activation constraints and the pipeline's stage axis apply.
The loop that calls them is in `train.py`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from jaxpretrain import mesh as mesh_lib
from jaxpretrain import objectives
from jaxpretrain.data import device as data_device
from jaxpretrain.data import pipeline
from jaxpretrain.state import StateLayout, TrainState


def _with_axis_rules(jitted: Callable, mesh: Mesh, rules: mesh_lib.AxisRules) -> Callable:
    """Calls `jitted` inside `mesh_lib.axis_rules`, where the model's activation constraints
    (`mesh_lib.constrain`) and the pipeline's stage axis take effect; outside they are no-ops."""

    @functools.wraps(jitted)
    def call(*args):
        with mesh_lib.axis_rules(mesh, rules):
            return jitted(*args)

    return call


def _forward(graphdef: nnx.GraphDef, params: Any, batch: dict[str, jax.Array]) -> jax.Array:
    model = nnx.merge(graphdef, params)
    return model(batch["inputs"], batch["segment_ids"], batch["positions"], batch["bidirectional"])


def _batch_shardings(batch_sharding: NamedSharding) -> dict[str, NamedSharding]:
    return {key: batch_sharding for key in pipeline.BATCH_FEATURES}


def make_train_step(
    layout: StateLayout,
    objective: objectives.Objective,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    batch_sharding: NamedSharding,
    grad_accum_steps: int = 1,
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """A jitted (state, batch) -> (state, metrics) with explicit shardings; donates the state.

    With `grad_accum_steps` = k > 1 the batch runs as k sequential micro-steps. Their summed
    losses and summed weights make the update (sum of loss / sum of weight, not a mean of
    means), so it equals the update of the whole batch at once.
    """

    def loss_sums(params, batch):
        logits_BLV = _forward(layout.graphdef, params, batch)
        return objective.loss(logits_BLV, batch["targets"], batch["loss_weights"])

    sums_and_grads = jax.value_and_grad(loss_sums, has_aux=True)

    def accumulated_sums_and_grads(params, batch):
        micro_batches = jax.tree.map(lambda x: mesh_lib.split_batch(x, grad_accum_steps), batch)

        def micro_step(carry, micro_batch):
            loss_sum, weight_sum, grads = carry
            (micro_loss, micro_weight), micro_grads = sums_and_grads(params, micro_batch)
            grads = jax.tree.map(lambda g, m: g + m.astype(jnp.float32), grads, micro_grads)
            grads = jax.lax.with_sharding_constraint(grads, layout.shardings["params"])
            return (loss_sum + micro_loss, weight_sum + micro_weight, grads), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        zeros = jax.lax.with_sharding_constraint(zeros, layout.shardings["params"])
        (loss_sum, weight_sum, grads), _ = jax.lax.scan(
            micro_step,
            (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), zeros),
            micro_batches,
        )
        return (loss_sum, weight_sum), grads

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        if grad_accum_steps == 1:
            (loss_sum, weight_sum), grad_sums = sums_and_grads(state["params"], batch)
        else:
            (loss_sum, weight_sum), grad_sums = accumulated_sums_and_grads(state["params"], batch)
        weight = jnp.maximum(weight_sum, 1.0)
        # Divide in float32 and round once: a bfloat16 token count alone is off by up to 0.4%.
        grads = jax.tree.map(
            lambda g, p: (g.astype(jnp.float32) / weight).astype(p.dtype),
            grad_sums,
            state["params"],
        )
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new_state = {
            "step": state["step"] + 1,
            "params": optax.apply_updates(state["params"], updates),
            "opt_state": opt_state,
            "rng": state["rng"],
        }
        metrics = {
            "loss": loss_sum / weight,
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": schedule(state["step"]),
        }
        return new_state, metrics

    jitted = jax.jit(
        train_step,
        in_shardings=(layout.shardings, _batch_shardings(batch_sharding)),
        out_shardings=(layout.shardings, mesh_lib.replicated(batch_sharding.mesh)),
        donate_argnums=0,
    )
    return _with_axis_rules(jitted, batch_sharding.mesh, layout.rules)


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
        logits_BLV = _forward(layout.graphdef, params, batch)
        loss_sum, weight_sum = objective.loss(logits_BLV, batch["targets"], batch["loss_weights"])
        bytes_sum = jnp.sum(token_bytes_V[batch["targets"]] * batch["loss_weights"])
        return {"loss_sum": loss_sum, "weight_sum": weight_sum, "bytes_sum": bytes_sum}

    def eval_step(params, batch, token_bytes_V):
        if micro_steps == 1:
            return batch_sums(params, batch, token_bytes_V)
        parts = jax.tree.map(lambda x: mesh_lib.split_batch(x, micro_steps), batch)

        def add_part(totals, part):
            sums = batch_sums(params, part, token_bytes_V)
            return jax.tree.map(jnp.add, totals, sums), None

        zeros = {key: jnp.zeros((), jnp.float32) for key in ("loss_sum", "weight_sum", "bytes_sum")}
        return jax.lax.scan(add_part, zeros, parts)[0]

    replicated = mesh_lib.replicated(batch_sharding.mesh)
    jitted = jax.jit(
        eval_step,
        in_shardings=(layout.shardings["params"], _batch_shardings(batch_sharding), replicated),
        out_shardings=replicated,
    )
    return _with_axis_rules(jitted, batch_sharding.mesh, layout.rules)


def evaluate(
    eval_step: Callable[..., dict[str, jax.Array]],
    params: Any,
    batches: Iterable[dict[str, np.ndarray]],
    token_bytes_V: jax.Array,
    batch_sharding: NamedSharding,
    global_rows: int,
    bits_per_byte: bool = True,
) -> dict[str, float]:
    """Validation loss (nats/token), perplexity and bits per byte over `batches`.

    `batches` are this process's parts of global batches of `global_rows` rows. Bits per byte
    is left out when `bits_per_byte` is False: for objectives whose loss is not on the text
    read left to right (`Objective.predicts_text`) it would measure nothing about the text.
    """
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
    totals = {
        key: sum(float(sums[key]) for sums in fetched)
        for key in ("loss_sum", "weight_sum", "bytes_sum")
    }
    if totals["weight_sum"] == 0:
        raise ValueError("the validation split produced no target tokens; prepare more data.")
    loss = totals["loss_sum"] / totals["weight_sum"]
    metrics = {"eval/loss": loss, "eval/perplexity": math.exp(min(loss, 700.0))}
    if bits_per_byte:
        bits = totals["loss_sum"] / (math.log(2) * max(totals["bytes_sum"], 1.0))
        metrics["eval/bits_per_byte"] = bits
    return metrics
