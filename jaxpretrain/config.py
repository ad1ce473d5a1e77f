"""Shared config defaults and validation.

Every config file in `configs/` starts from `default_config()` and overrides what it needs, so one
place lists (and documents) every key. `validate()` turns a bad value into one sentence naming the
key, the value and what to do, before anything is compiled or written.
"""

from __future__ import annotations

import json
import math
import os

import ml_collections

# Logical axis -> mesh axes. Parameters and activations name logical axes only (see model/);
# this table is the single place that decides how they are laid out on the mesh.
DEFAULT_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),
    ("stage", "pipe"),
)

REMAT_POLICIES = ("none", "dots", "dots_no_batch", "full")
DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key, the value and the fix."""


def default_config() -> ml_collections.ConfigDict:
    """All keys with their defaults. Config files override; `--config.a.b=v` overrides those."""
    c = ml_collections.ConfigDict()

    c.model = ml_collections.ConfigDict()
    c.model.vocab_size = -1  # -1: the prepared data's tokenizer vocabulary size.
    c.model.num_layers = 4
    c.model.embed_dim = 256
    c.model.num_heads = 4
    c.model.num_kv_heads = 4
    c.model.head_dim = 64
    c.model.mlp_dim = 1024
    c.model.max_seq_len = 2048
    c.model.rope_theta = 10000.0
    c.model.norm_eps = 1e-5
    c.model.tie_embeddings = True
    c.model.dtype = "bfloat16"  # compute dtype
    c.model.param_dtype = "float32"
    c.model.remat_policy = "none"  # none | dots | dots_no_batch | full (fastest -> most frugal)
    c.model.init_std = 0.02

    c.train = ml_collections.ConfigDict()
    c.train.steps = 1000
    c.train.batch_size = 32  # global, in sequences
    c.train.seq_len = 256
    c.train.seed = 0
    c.train.log_every = 10
    c.train.lr = 3e-4  # peak learning rate
    c.train.min_lr_ratio = 0.1  # cosine decays to lr * min_lr_ratio
    c.train.warmup_steps = 100
    c.train.weight_decay = 0.1
    c.train.grad_clip = 1.0  # global-norm clip; 0 disables
    c.train.b1 = 0.9
    c.train.b2 = 0.95
    c.train.eps = 1e-8
    c.train.spike_factor = 5.0  # warn when grad_norm > spike_factor x its running mean
    c.train.peak_tflops_per_device = 0.0  # 0: look up the device kind; unknown (CPU) -> mfu null

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 500
    c.checkpoint.max_to_keep = 3
    c.checkpoint.use_async = True

    c.eval = ml_collections.ConfigDict()
    c.eval.every = 500  # 0 disables periodic eval; eval also runs at the last step
    c.eval.steps = 20  # validation batches per eval; -1 = the whole validation split

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1: all devices left after the other axes
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    c.mesh.pipe = 1
    c.mesh.rules = DEFAULT_AXIS_RULES

    c.objective = ml_collections.ConfigDict()
    c.objective.name = "causal_lm"

    c.data = ml_collections.ConfigDict()
    c.data.dir = ""  # prepared data (manifest.json + shards); empty: WORKDIR/data
    c.data.source = "stdlib"  # used only when data.dir has no prepared data
    # A data config file (configs/data/*.py) to prepare with instead of data.source, e.g. a
    # curated mixture; its tokenizer and split settings then apply, not data.vocab_size.
    c.data.curation = ""
    c.data.vocab_size = 4096  # tokenizer trained by the prepare step
    c.data.validation_fraction = 0.05
    c.data.max_documents = -1  # cap on source documents for prepare; -1 = all
    c.data.num_shards = 4
    c.data.shuffle_window = 4096  # examples shuffled together after cutting documents

    c.sample = ml_collections.ConfigDict()
    c.sample.prompt = "def "
    c.sample.length = 64
    c.sample.temperature = 0.8
    return c


def _positive(config: ml_collections.ConfigDict, *keys: str) -> None:
    for key in keys:
        section, name = key.split(".")
        value = config[section][name]
        if not isinstance(value, int) or value <= 0:
            raise ConfigError(f"config key {key}={value!r} must be a positive integer.")


def resolve_mesh_shape(mesh_cfg: ml_collections.ConfigDict, num_devices: int) -> dict[str, int]:
    """Mesh axis sizes with the single -1 axis filled so that the product is `num_devices`."""
    shape = {axis: int(mesh_cfg[axis]) for axis in ("data", "fsdp", "tensor", "pipe")}
    fill = [axis for axis, size in shape.items() if size == -1]
    if len(fill) > 1:
        raise ConfigError(
            f"config keys mesh.{', mesh.'.join(fill)} are all -1; at most one mesh axis may be -1."
        )
    for axis, size in shape.items():
        if size == 0 or size < -1:
            raise ConfigError(f"config key mesh.{axis}={size} must be a positive size or -1.")
    fixed = math.prod(size for size in shape.values() if size != -1)
    if fill:
        if num_devices % fixed:
            raise ConfigError(
                f"mesh axes {shape} leave {num_devices} devices / {fixed} not whole for "
                f"mesh.{fill[0]}=-1; pick sizes whose product divides {num_devices}."
            )
        shape[fill[0]] = num_devices // fixed
    if math.prod(shape.values()) != num_devices:
        raise ConfigError(
            f"mesh axes {shape} multiply to {math.prod(shape.values())} but there are "
            f"{num_devices} devices; make the product equal the device count or set one axis to -1."
        )
    return shape


def validate(
    config: ml_collections.ConfigDict, num_devices: int, process_count: int = 1
) -> dict[str, int]:
    """Checks values that would fail late (or silently); returns the resolved mesh shape."""
    _positive(config, "train.steps", "train.batch_size", "train.seq_len", "train.log_every")
    _positive(config, "checkpoint.every", "checkpoint.max_to_keep")
    _positive(config, "model.num_layers", "model.embed_dim", "model.num_heads", "model.head_dim")
    _positive(config, "model.num_kv_heads", "model.mlp_dim", "model.max_seq_len")
    if config.model.remat_policy not in REMAT_POLICIES:
        raise ConfigError(
            f"config key model.remat_policy={config.model.remat_policy!r} is unknown; "
            f"use one of {', '.join(REMAT_POLICIES)}."
        )
    for key in ("dtype", "param_dtype"):
        if config.model[key] not in DTYPES:
            raise ConfigError(
                f"config key model.{key}={config.model[key]!r} is unknown; use one of "
                f"{', '.join(DTYPES)}."
            )
    if config.model.num_heads % config.model.num_kv_heads:
        raise ConfigError(
            f"config key model.num_kv_heads={config.model.num_kv_heads} must divide "
            f"model.num_heads={config.model.num_heads}."
        )
    if config.train.seq_len > config.model.max_seq_len:
        raise ConfigError(
            f"config key train.seq_len={config.train.seq_len} exceeds model.max_seq_len="
            f"{config.model.max_seq_len}; lower train.seq_len or raise model.max_seq_len."
        )
    if config.train.warmup_steps < 0 or config.train.lr <= 0:
        raise ConfigError(
            f"config keys train.lr={config.train.lr} and train.warmup_steps="
            f"{config.train.warmup_steps} must be > 0 and >= 0."
        )
    if config.eval.steps == 0 or config.eval.steps < -1:
        raise ConfigError(
            f"config key eval.steps={config.eval.steps} must be a positive count or -1 (all)."
        )
    if config.eval.every < 0:
        raise ConfigError(f"config key eval.every={config.eval.every} must be >= 0 (0 = off).")

    mesh_shape = resolve_mesh_shape(config.mesh, num_devices)
    for axis in ("tensor", "pipe"):
        if mesh_shape[axis] != 1:
            raise ConfigError(
                f"config key mesh.{axis}={mesh_shape[axis]}: {axis} parallelism is not yet "
                f"supported; set mesh.{axis}=1 and use mesh.data / mesh.fsdp."
            )
    batch_shards = mesh_shape["data"] * mesh_shape["fsdp"]
    if config.train.batch_size % batch_shards:
        raise ConfigError(
            f"config key train.batch_size={config.train.batch_size} is not divisible by the "
            f"batch-sharding mesh axes data x fsdp = {batch_shards}; use a multiple of "
            f"{batch_shards}."
        )
    if config.train.batch_size % process_count:
        raise ConfigError(
            f"config key train.batch_size={config.train.batch_size} is not divisible by the "
            f"{process_count} processes; use a multiple of {process_count}."
        )

    from jaxpretrain import objectives  # late import: objectives import jax-heavy modules

    if config.objective.name not in objectives.names():
        raise ConfigError(
            f"config key objective.name={config.objective.name!r} is unknown; use one of "
            f"{', '.join(objectives.names())}."
        )
    return mesh_shape


def data_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Where prepared data lives: `data.dir`, or WORKDIR/data when unset."""
    return config.data.dir or os.path.join(workdir, "data")


def write_config_json(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes the resolved config to WORKDIR/config.json (atomically) and returns its path."""
    path = os.path.join(workdir, "config.json")
    tmp_path = path + ".tmp"
    with open(tmp_path, "w") as f:
        json.dump(config.to_dict(), f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    os.replace(tmp_path, path)
    return path
