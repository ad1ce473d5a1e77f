"""The sharded train state: its shapes, its shardings and its initialisation.

The state is a plain dict pytree `{step, params, opt_state, rng}` whose `params` is the model's
NNX state as a pure dict: optax, Orbax and `jax.jit` shardings all work on it directly, and
`nnx.merge(graphdef, params)` turns it back into a module inside a step. Everything here is
computed abstractly first, so a 7B layout costs no memory.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from jaxpretrain import config as config_lib
from jaxpretrain import mesh as mesh_lib
from jaxpretrain.model import ModelConfig, Transformer

TrainState = dict[str, Any]  # {"step": int32[], "params": pure dict, "opt_state", "rng": u32[2]}


def model_config(config: ml_collections.ConfigDict, vocab_size: int) -> ModelConfig:
    """The model's config with `model.vocab_size=-1` resolved to the tokenizer's vocabulary."""
    if config.model.vocab_size == -1:
        resolved = vocab_size
    elif config.model.vocab_size < vocab_size:
        raise config_lib.ConfigError(
            f"config key model.vocab_size={config.model.vocab_size} is smaller than the "
            f"tokenizer's vocabulary ({vocab_size}); use -1 or a value >= {vocab_size}."
        )
    else:
        resolved = config.model.vocab_size
    return ModelConfig.from_config(config.model, resolved)


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
    }
    abstract = {
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "params": abstract_params,
        "opt_state": abstract_opt_state,
        "rng": jax.ShapeDtypeStruct((2,), jnp.uint32),
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
        }

    return jax.jit(init, out_shardings=layout.shardings)(jax.random.PRNGKey(seed))
