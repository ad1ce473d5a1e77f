"""Shared config defaults and validation.

Every config file in `configs/` starts from `default_config()` and overrides what it needs, so one
place lists (and documents) every key. `validate()` turns a bad value into one sentence naming the
key, the value and what to do, before anything is compiled or written.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os

import ml_collections
from absl import logging

from jaxpretrain import paths

# Logical axis -> mesh axes. Parameters and activations name logical axes only (see model/);
# this table is the single place that decides how they are laid out on the mesh.
# Tensor parallelism is Megatron's: heads, kv heads and the MLP hidden dimension split over
# `tensor` (column-parallel in, row-parallel out). The layer stack's `layers` axis splits over
# `pipe`, so each pipeline stage stores its own layers; `stage` is the pipeline's stage axis.
DEFAULT_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", "pipe"),
    ("stage", "pipe"),
)

# Mesh presets (`config.mesh.update(MESH_PRESETS[name])` in a config file), from the simplest;
# `docs/parallelism.md` says how to choose:
#   fsdp        every device shards parameters, optimizer state and the batch (ZeRO-3): the
#               default up to ~10-20B parameters on a fast interconnect.
#   fsdp_tp     8-way tensor parallelism inside a host (NVLink / a TPU tray), FSDP across: when
#               FSDP alone would leave under ~1 sequence per device or its all-gathers dominate.
#   dp_fsdp_pp  4 pipeline stages across hosts, FSDP inside a stage, 2 data-parallel replicas;
#               8 microbatches per pipeline pass: for slow links between hosts.
MESH_PRESETS = {
    "fsdp": dict(data=1, fsdp=-1, tensor=1, pipe=1, microbatches=1, pipeline_repeats=1),
    "fsdp_tp": dict(data=1, fsdp=-1, tensor=8, pipe=1, microbatches=1, pipeline_repeats=1),
    "dp_fsdp_pp": dict(data=2, fsdp=-1, tensor=1, pipe=4, microbatches=8, pipeline_repeats=1),
}


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
    c.model.attention = "auto"  # auto | xla | cudnn | splash (auto: cudnn on GPU, splash on TPU)
    # > 0: the loss computes logits this many positions at a time (recomputed in the backward
    # pass), so [batch, length, vocab] float32 logits never exist at once; must divide seq_len.
    c.model.logits_chunk_length = 0
    # True: the layers run as one lax.scan (compile time independent of depth); False unrolls.
    c.model.scan_layers = True
    c.model.init_std = 0.02

    c.train = ml_collections.ConfigDict()
    c.train.steps = 1000
    c.train.batch_size = 32  # global, in sequences
    # The global batch runs as this many sequential micro-steps whose summed gradients make one
    # update, so only batch_size / grad_accum_steps sequences are resident at once.
    c.train.grad_accum_steps = 1
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
    # PaLM's z-loss coefficient (1e-4 in PaLM): z_loss * log(sum exp logits)^2 per loss token
    # keeps the softmax normaliser near 1; 0 disables.
    c.train.z_loss = 0.0
    c.train.max_update_norm = 0.0  # clip the optimizer update's global norm; 0 disables
    # Loss spikes and non-finite values, detected inside the jitted step (docs/recovery.md).
    c.train.anomaly = ml_collections.ConfigDict()
    # What to do with an anomalous step: warn (apply it anyway), skip (drop the update inside
    # the step), rollback (drop it, then restore the last checkpoint and skip the next
    # rollback_skip_batches batches, as PaLM did).
    c.train.anomaly.action = "skip"  # warn | skip | rollback
    c.train.anomaly.loss_spike_factor = 3.0  # loss > factor x its moving average; 0 disables
    c.train.anomaly.max_grad_norm = 0.0  # gradient norm above this is a spike; 0 disables
    c.train.anomaly.ema_decay = 0.99  # moving average of the loss
    c.train.anomaly.warmup_steps = 20  # finite steps averaged before spikes are judged
    c.train.anomaly.rollback_skip_batches = 100
    c.train.anomaly.max_rollbacks = 3  # then the run stops: something is wrong beyond a batch
    # Anomalous steps in a row that stop the run (e.g. a loss that moved up for good under
    # skip, whose average then never follows); 0 never stops.
    c.train.anomaly.max_consecutive = 20
    c.train.peak_tflops_per_device = 0.0  # 0: look up the device kind; unknown (CPU) -> mfu null
    # Persistent XLA compilation cache, so a restarted run does not recompile (minutes for large
    # models): 'auto' = ~/.cache/jaxpretrain/jax on GPU/TPU and off on CPU (its programs compile
    # in seconds); a local or gs:// folder (shared by a pod's hosts); '' = off.
    c.train.compilation_cache_dir = "auto"

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 500
    c.checkpoint.max_to_keep = 3
    c.checkpoint.use_async = True
    # SIGTERM (preemptible TPU / spot VM) saves a checkpoint at the next step boundary and exits 0.
    c.checkpoint.save_on_preemption = True

    c.eval = ml_collections.ConfigDict()
    c.eval.every = 500  # 0 disables periodic eval; eval also runs at the last step
    c.eval.steps = 20  # validation batches per eval, per source of a mixture; -1 = all of it

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1: all devices left after the other axes
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    c.mesh.pipe = 1  # pipeline stages
    c.mesh.microbatches = 1  # per pipeline pass (each grad-accumulation micro-step); pipe > 1
    c.mesh.pipeline_repeats = 1  # 1: GPipe schedule; > 1: circular, layer groups per stage
    c.mesh.rules = DEFAULT_AXIS_RULES

    # The objective and its settings; each objective reads only its own keys and checks them.
    c.objective = ml_collections.ConfigDict()
    c.objective.name = "causal_lm"  # causal_lm | mlm | prefix_lm | span_corruption | ul2
    c.objective.mask_prob = 0.15  # mlm: share of non-special tokens selected (80/10/10)
    # prefix_lm (and UL2's S-denoiser): the prefix is a uniform fraction of each window in
    # [prefix_min_fraction, prefix_max_fraction]; the rest is the target.
    c.objective.prefix_min_fraction = 0.1
    c.objective.prefix_max_fraction = 0.9
    c.objective.noise_density = 0.15  # span_corruption: share of tokens masked
    c.objective.mean_noise_span_length = 3.0  # span_corruption: mean span length
    # ul2: relative rates of the denoiser families (normalised; uniform within a family):
    # R (2 short-span denoisers, [NLU]), X (4 extreme ones, [NLG]), S (prefix LM, [S2S]).
    # 2:4:1 draws the seven denoisers uniformly, the default of UL2's released objective code.
    c.objective.ul2_r_rate = 2.0
    c.objective.ul2_x_rate = 4.0
    c.objective.ul2_s_rate = 1.0

    c.data = ml_collections.ConfigDict()
    c.data.dir = ""  # prepared data (manifest.json + shards); empty: WORKDIR/data
    c.data.source = "stdlib"  # used only when data.dir has no prepared data
    # A data config file (configs/data/*.py) to prepare with instead of data.source, e.g. a
    # curated mixture; its tokenizer and split settings then apply, not data.vocab_size.
    c.data.curation = ""
    c.data.vocab_size = 4096  # tokenizer trained by the prepare step
    c.data.validation_fraction = 0.05
    c.data.max_documents = -1  # cap on source documents for prepare; -1 = all
    # A new ArrayRecord shard is started once one holds this many bytes of tokens.
    c.data.shard_bytes = 256 << 20
    c.data.shuffle_window = 4096  # examples shuffled together after cutting documents
    # Independent data streams that make up the global batch (0: one per data-loading process).
    # A run resumes on any process count that divides it, reading the same examples.
    c.data.num_streams = 0

    # Metrics go to WORKDIR/metrics.jsonl and TensorBoard events in WORKDIR, always.
    c.monitor = ml_collections.ConfigDict()
    # A remote workdir (gs://) gets its metric files uploaded at least this often.
    c.monitor.remote_sync_seconds = 60.0
    # Weights & Biases, optional (pip install wandb). The run id is kept in WORKDIR/wandb_run_id,
    # so a resumed run continues the same W&B run; the x axis is the `step` metric.
    c.monitor.wandb = ml_collections.ConfigDict()
    c.monitor.wandb.enabled = False
    c.monitor.wandb.project = "jaxpretrain"
    c.monitor.wandb.entity = ""  # "": your default entity
    c.monitor.wandb.name = ""  # "": the workdir's name
    c.monitor.wandb.mode = "online"  # online | offline (no network; `wandb sync` uploads later)
    c.monitor.wandb.tags = ""  # comma-separated

    c.sample = ml_collections.ConfigDict()
    c.sample.prompt = "def "
    c.sample.length = 64
    c.sample.temperature = 0.8

    # --mode=dry_run: compile the train step for the mesh, allocating nothing (see dry_run.py).
    c.dry_run = ml_collections.ConfigDict()
    c.dry_run.num_devices = 0  # devices to compile for; 0: the mesh's (all with a -1 axis)
    # A TPU slice to compile for instead of CPU devices, all its chips (num_devices is not used),
    # e.g. "v5p-128", "v5e-256", "v6e-8" (or libtpu's "v5p:4x4x4"); needs the `tpu` extra
    # (libtpu). "": fake CPU devices.
    c.dry_run.topology = ""
    return c


def _check_wandb(settings: ml_collections.ConfigDict) -> None:
    if not settings.enabled:
        return
    if settings.mode not in ("online", "offline"):
        raise ConfigError(
            f"config key monitor.wandb.mode={settings.mode!r} must be 'online' or 'offline'."
        )
    if importlib.util.find_spec("wandb") is None:
        raise ConfigError(
            "config key monitor.wandb.enabled=True needs the wandb package: pip install wandb "
            "(or leave it False; metrics.jsonl and TensorBoard are always written)."
        )


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
    config: ml_collections.ConfigDict, num_devices: int, tokenizer_vocab: int | None = None
) -> dict[str, int]:
    """Checks values that would fail late (or silently); returns the resolved mesh shape.

    `tokenizer_vocab` is the prepared data's vocabulary size once known (see
    `resolve_vocab_size`).
    """
    _positive(config, "train.steps", "train.batch_size", "train.seq_len", "train.log_every")
    _positive(config, "checkpoint.every", "checkpoint.max_to_keep", "train.grad_accum_steps")
    _positive(config, "mesh.microbatches", "mesh.pipeline_repeats")
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

    _check_precision(config.model)
    _check_anomaly(config.train)
    _check_wandb(config.monitor.wandb)
    if config.data.num_streams < 0:
        raise ConfigError(
            f"config key data.num_streams={config.data.num_streams} must be >= 0 (0: one per "
            "data-loading process)."
        )

    mesh_shape = resolve_mesh_shape(config.mesh, num_devices)
    vocab_size = resolve_vocab_size(config, tokenizer_vocab)
    model_config(config, mesh_shape, vocab_size)
    _check_tensor_parallel(config, mesh_shape["tensor"], vocab_size)
    _check_batch_split(config, mesh_shape)

    from jaxpretrain import objectives  # late import: objectives import jax-heavy modules

    if config.objective.name not in objectives.names():
        raise ConfigError(
            f"config key objective.name={config.objective.name!r} is unknown; use one of "
            f"{', '.join(objectives.names())}."
        )
    try:
        objectives.get(config.objective.name).check_settings(config.objective, config.train.seq_len)
    except ValueError as error:
        raise ConfigError(f"config key {error}") from error
    return mesh_shape


# The model keys that shape the saved state: a checkpoint resumes only where they are equal.
# The compute dtype, rematerialisation and the mesh may change between restarts.
_STATE_KEYS = (
    "vocab_size",
    "num_layers",
    "embed_dim",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "mlp_dim",
    "tie_embeddings",
    "param_dtype",
)


def state_differences(saved_config: dict, config: ml_collections.ConfigDict) -> list[str]:
    """'key saved -> now' for each state-shaping key where a saved run's config differs."""
    saved_model = saved_config.get("model", {})
    differences = [
        f"model.{key} {saved_model[key]!r} -> {config.model[key]!r}"
        for key in _STATE_KEYS
        if key in saved_model and saved_model[key] != config.model[key]
    ]
    # Turning a clip on or off adds or removes a stage of the optimizer state.
    saved_train = saved_config.get("train", {})
    for key in ("grad_clip", "max_update_norm"):
        if key in saved_train and (saved_train[key] > 0) != (config.train[key] > 0):
            differences.append(
                f"train.{key} {saved_train[key]!r} -> {config.train[key]!r} (on/off changes the "
                "optimizer state)"
            )
    return differences


def model_config(config: ml_collections.ConfigDict, mesh_shape: dict[str, int], vocab_size: int):
    """The `ModelConfig` of `config.model` on a mesh (its pipeline fields come from config.mesh).

    Raises ConfigError naming the key when a model value cannot work; the checks themselves live
    in `ModelConfig`, the one place that knows what a model needs.
    """
    from jaxpretrain.model import ModelConfig  # late import: the model imports jax

    try:
        return ModelConfig.from_config(
            config.model,
            vocab_size,
            pipeline_stages=mesh_shape["pipe"],
            pipeline_repeats=config.mesh.pipeline_repeats,
            pipeline_microbatches=config.mesh.microbatches,
        )
    except ValueError as error:
        raise ConfigError(str(error)) from error


def resolve_vocab_size(config: ml_collections.ConfigDict, tokenizer_vocab: int | None) -> int:
    """`model.vocab_size`, with -1 meaning the tokenizer's (or `data.vocab_size` before one exists).

    Raises ConfigError when an explicit `model.vocab_size` cannot hold the tokenizer's ids.
    """
    if config.model.vocab_size == -1:
        return tokenizer_vocab if tokenizer_vocab is not None else config.data.vocab_size
    if tokenizer_vocab is not None and config.model.vocab_size < tokenizer_vocab:
        raise ConfigError(
            f"config key model.vocab_size={config.model.vocab_size} is smaller than the "
            f"tokenizer's vocabulary ({tokenizer_vocab}); use -1 or a value >= {tokenizer_vocab}."
        )
    return config.model.vocab_size


def _check_precision(model_cfg: ml_collections.ConfigDict) -> None:
    if model_cfg.dtype == "float16":
        raise ConfigError(
            "config key model.dtype='float16' needs loss scaling, which jaxpretrain does not do "
            "(float16 gradients underflow); use bfloat16, which has float32's range."
        )
    if model_cfg.param_dtype != "float32":
        logging.warning(
            "model.param_dtype=%r keeps no float32 master weights: updates smaller than its "
            "precision are lost (for bfloat16 about 1/256 of a weight). Use float32 unless you "
            "need the memory.",
            model_cfg.param_dtype,
        )


def _check_anomaly(train_cfg: ml_collections.ConfigDict) -> None:
    anomaly = train_cfg.anomaly
    if anomaly.action not in ("warn", "skip", "rollback"):
        raise ConfigError(
            f"config key train.anomaly.action={anomaly.action!r} is unknown; use warn, skip or "
            "rollback."
        )
    if anomaly.loss_spike_factor != 0 and anomaly.loss_spike_factor <= 1:
        raise ConfigError(
            f"config key train.anomaly.loss_spike_factor={anomaly.loss_spike_factor} must be "
            "above 1 (a loss above factor x its average is a spike) or 0 (off)."
        )
    if not 0 < anomaly.ema_decay < 1:
        raise ConfigError(
            f"config key train.anomaly.ema_decay={anomaly.ema_decay} must be between 0 and 1."
        )
    keys = ("max_grad_norm", "warmup_steps", "rollback_skip_batches", "max_rollbacks")
    for key in (*keys, "max_consecutive"):
        if anomaly[key] < 0:
            raise ConfigError(f"config key train.anomaly.{key}={anomaly[key]} must be >= 0.")
    for key in ("z_loss", "max_update_norm"):
        if train_cfg[key] < 0:
            raise ConfigError(f"config key train.{key}={train_cfg[key]} must be >= 0 (0 = off).")


def _check_tensor_parallel(config: ml_collections.ConfigDict, tensor: int, vocab: int) -> None:
    for key in ("num_heads", "num_kv_heads", "mlp_dim"):
        value = config.model[key]
        if value % tensor:
            raise ConfigError(
                f"config key model.{key}={value} does not split over mesh.tensor={tensor} "
                f"(tensor parallelism shards it); use a multiple of {tensor} or a smaller "
                "mesh.tensor."
            )
    if vocab % tensor:
        raise ConfigError(
            f"config key model.vocab_size={config.model.vocab_size} resolves to {vocab}, which "
            f"does not split over mesh.tensor={tensor}; set model.vocab_size to a multiple of "
            f"{tensor} (>= {vocab}): the ids above the tokenizer's are never produced."
        )


def _check_batch_split(config: ml_collections.ConfigDict, mesh_shape: dict[str, int]) -> None:
    """The global batch must split into micro-steps, then microbatches, then batch shards."""
    batch_size, accum = config.train.batch_size, config.train.grad_accum_steps
    microbatches = config.mesh.microbatches if mesh_shape["pipe"] > 1 else 1
    batch_shards = mesh_shape["data"] * mesh_shape["fsdp"]
    unit = accum * microbatches * batch_shards
    if batch_size % unit:
        raise ConfigError(
            f"config key train.batch_size={batch_size} is not divisible by "
            f"train.grad_accum_steps={accum} x mesh.microbatches={microbatches} x the "
            f"batch-sharding mesh axes data x fsdp = {batch_shards}; use a multiple of {unit}."
        )


def load_config_file(path: str | os.PathLike, key: str = "--config"):
    """`get_config()` of a Python config file (how configs/*.py are written).

    Config files build on each other with it, e.g. `configs/tiny_mlm.py` is `tiny_clm.py` with
    another objective. `key` names where the path came from in the error for a missing file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config key {key}={path!r}: no such file.")
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"jaxpretrain_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def data_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Where prepared data lives: `data.dir`, or WORKDIR/data when unset."""
    return config.data.dir or os.fspath(paths.resolve(workdir) / "data")


def write_config_json(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes the resolved config to WORKDIR/config.json (atomically) and returns its path."""
    path = paths.resolve(workdir) / "config.json"
    text = json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str) + "\n"
    paths.write_text_atomic(path, text)
    return os.fspath(path)
