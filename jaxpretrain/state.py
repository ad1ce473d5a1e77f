"""The sharded train state: its shapes, its shardings and its initialisation.

The state is a plain dict pytree `{step, params, opt_state, rng, anomaly}` whose `params` is the
model's NNX state as a pure dict: optax, Orbax and `jax.jit` shardings all work on it directly, and
`nnx.merge(graphdef, params)` turns it back into a module inside a step. `anomaly` holds the train
step's moving average of the loss (`steps.AnomalyPolicy`), so a resumed run judges spikes as the
uninterrupted one would. Everything here is computed abstractly first, so a 7B layout costs no
memory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from jaxpretrain import config as config_lib
from jaxpretrain import mesh as mesh_lib
from jaxpretrain import optim
from jaxpretrain.model import ModelConfig, Transformer

# {"step": int32[], "params": pure dict, "opt_state", "rng": u32[2],
#  "anomaly": {"loss_ema": float32[], "observed": int32[]}}
TrainState = dict[str, Any]


def _anomaly_state_shapes() -> dict[str, jax.ShapeDtypeStruct]:
    """The loss's moving average and how many losses it has averaged (see steps.AnomalyPolicy)."""
    return {
        "loss_ema": jax.ShapeDtypeStruct((), jnp.float32),
        "observed": jax.ShapeDtypeStruct((), jnp.int32),
    }


def _make_model(model_cfg: ModelConfig, rng: jax.Array) -> Transformer:
    # Shardings come from jit's out_shardings below, not from a mesh context at construction.
    with nnx.use_eager_sharding(False):
        return Transformer(model_cfg, rngs=nnx.Rngs(params=rng))


def abstract_model(model_cfg: ModelConfig) -> tuple[nnx.GraphDef, Any, Any]:
    """(graphdef, abstract params, logical PartitionSpecs) without allocating any parameter."""
    abstract = nnx.eval_shape(lambda: _make_model(model_cfg, jax.random.PRNGKey(0)))
    graphdef, state = nnx.split(abstract)
    logical_specs = nnx.to_pure_dict(nnx.get_partition_spec(state))
    return graphdef, nnx.to_pure_dict(state), logical_specs


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """Everything needed to build, shard and step a train state for one model on one mesh."""

    graphdef: nnx.GraphDef
    abstract_state: TrainState  # ShapeDtypeStructs carrying their shardings
    shardings: TrainState
    rules: mesh_lib.AxisRules  # logical axis -> mesh axes, also for activations


def state_layout(
    model_cfg: ModelConfig,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    rules: mesh_lib.AxisRules,
) -> StateLayout:
    """Shapes and shardings of the full train state, computed abstractly (no memory used)."""
    graphdef, abstract_params, logical_specs = abstract_model(model_cfg)
    param_shardings = mesh_lib.shardings_for(logical_specs, abstract_params, mesh, rules)
    abstract_opt_state = jax.eval_shape(tx.init, abstract_params)
    # Optimizer moments mirror the parameters; counters and other scalars are replicated.
    opt_shardings = optax.tree_map_params(
        tx,
        lambda _, sharding: sharding,
        abstract_opt_state,
        param_shardings,
        transform_non_params=lambda _: mesh_lib.replicated(mesh),
        is_leaf=lambda x: isinstance(x, NamedSharding),
    )
    shardings = {
        "step": mesh_lib.replicated(mesh),
        "params": param_shardings,
        "opt_state": opt_shardings,
        "rng": mesh_lib.replicated(mesh),
        "anomaly": {key: mesh_lib.replicated(mesh) for key in _anomaly_state_shapes()},
    }
    abstract = {
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "params": abstract_params,
        "opt_state": abstract_opt_state,
        "rng": jax.ShapeDtypeStruct((2,), jnp.uint32),
        "anomaly": _anomaly_state_shapes(),
    }
    abstract = jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        abstract,
        shardings,
    )
    return StateLayout(graphdef, abstract, shardings, tuple(rules))


def init_state(
    model_cfg: ModelConfig, tx: optax.GradientTransformation, layout: StateLayout, seed: int
) -> TrainState:
    """Initialises parameters directly in their shards (no host or single-device copy)."""

    def init(rng: jax.Array) -> TrainState:
        params_rng, state_rng = jax.random.split(rng)
        params = nnx.to_pure_dict(nnx.state(_make_model(model_cfg, params_rng)))
        return {
            "step": jnp.zeros((), jnp.int32),
            "params": params,
            "opt_state": tx.init(params),
            "rng": state_rng,
            "anomaly": {
                key: jnp.zeros(shape.shape, shape.dtype)
                for key, shape in _anomaly_state_shapes().items()
            },
        }

    return jax.jit(init, out_shardings=layout.shardings)(jax.random.PRNGKey(seed))


@dataclasses.dataclass(frozen=True)
class Setup:
    """Mesh, rules, model, optimizer and state layout of a config: what every entry point steps."""

    mesh: Mesh
    model_config: ModelConfig
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    layout: StateLayout
    batch_sharding: NamedSharding
    # (slot, slots): this process loads part `slot` of `slots` of each global batch; processes
    # holding copies of the same rows (tensor or pipe across hosts) share a slot.
    data_slot: tuple[int, int]


def setup(
    config: ml_collections.ConfigDict,
    *,
    tokenizer_vocab: int | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Setup:
    """The one path from a config to a laid-out (not allocated) train state on a mesh.

    Training, eval, the dry run, the benchmark and the perplexity scorer all start here, so a
    mesh, a rule or a vocabulary resolves the same way everywhere.

    Args:
      config: a full config (`config.default_config()` and overrides).
      tokenizer_vocab: the prepared data's vocabulary size; None before data exists (dry run,
        benchmark), when `model.vocab_size=-1` falls back to `data.vocab_size`.
      devices: the mesh's devices (default: all).

    Raises:
      ConfigError: a value that cannot work on these devices, naming the key.
    """
    devices = list(devices or jax.devices())
    mesh_shape = config_lib.validate(config, len(devices), tokenizer_vocab)
    mesh = mesh_lib.make_mesh(mesh_shape, devices)
    rules = tuple(tuple(rule) for rule in config.mesh.rules)
    vocab_size = config_lib.resolve_vocab_size(config, tokenizer_vocab)
    model_cfg = config_lib.model_config(config, mesh_shape, vocab_size)
    tx = optim.make_optimizer(config.train)
    batch_sharding = mesh_lib.batch_sharding(mesh, rules)
    try:
        slots = mesh_lib.data_slots(batch_sharding, config.train.batch_size)
    except ValueError as error:
        raise config_lib.ConfigError(str(error)) from error
    return Setup(
        mesh=mesh,
        model_config=model_cfg,
        tx=tx,
        schedule=optim.learning_rate_schedule(config.train),
        layout=state_layout(model_cfg, tx, mesh, rules),
        batch_sharding=batch_sharding,
        data_slot=slots[jax.process_index()],
    )
