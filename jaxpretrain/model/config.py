"""Model hyperparameters: a frozen dataclass, validated before anything is built or compiled."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

# Names a config may use for `dtype` and `param_dtype`.
DTYPES: dict[str, Any] = {
    "float32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "float16": jnp.float16,
}

# Remat policies, from fastest (most activation memory) to most frugal (most recomputation):
#   none          – keep every activation of every layer; no recomputation.
#   dots          – save matmul outputs, recompute the cheap elementwise ops (norms, SiLU, RoPE).
#   dots_no_batch – save only matmuls without batch dimensions (the weight projections); the
#                   attention score/value matmuls are recomputed.
#   full          – save only each layer's input; recompute the whole layer in the backward pass.
REMAT_POLICIES: tuple[str, ...] = ("none", "dots", "dots_no_batch", "full")

# Where attention runs (model/attention_impls.py): auto = cudnn on GPU, splash on TPU, xla
# elsewhere; an explicit kernel the platform lacks falls back to xla with a logged reason.
ATTENTION_IMPLEMENTATIONS: tuple[str, ...] = ("auto", "xla", "cudnn", "splash")

_POSITIVE_INT_FIELDS = (
    "vocab_size",
    "num_layers",
    "embed_dim",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "mlp_dim",
    "max_seq_len",
    "pipeline_stages",
    "pipeline_repeats",
    "pipeline_microbatches",
)
_POSITIVE_FLOAT_FIELDS = ("rope_theta", "norm_eps", "init_std")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a Llama-style decoder.

    `dtype` is the compute dtype of activations and matmuls; `param_dtype` is the storage dtype of
    the parameters. `remat_policy` is one of `REMAT_POLICIES` (see the comment there for the
    speed/memory order). `attention` is one of `ATTENTION_IMPLEMENTATIONS`; every one computes
    the same function, so it may change between restarts of a run. `logits_chunk_length` > 0
    makes the loss run the output layer over that many positions at a time, recomputing each
    chunk's logits in the backward pass, so the float32 [batch, length, vocab] logits never exist
    at once (0: whole rows); it changes memory and speed, not the loss. `scan_layers` runs the
    layers as one `jax.lax.scan` (one compiled layer, compile time independent of depth);
    False unrolls them (see `transformer.apply_block_stack`); the values are the same. On one
    H200 the scanned 124M and 350M steps took 1.25x as long as unrolled ones
    (docs/performance.md), so those speed configs unroll; unrolled compiled in 1.2-2.5x the time.

    The `pipeline_*` fields say how the layer stack runs, not what it computes: with
    `pipeline_stages` > 1 the layers are split into that many stages (the `stage` logical axis)
    and each batch into `pipeline_microbatches`; `pipeline_repeats` > 1 makes the schedule
    circular (each stage holds that many non-adjacent groups of layers). Parameters keep the same
    shapes and layer order whatever these are, so a checkpoint moves between pipeline layouts.
    They come from `config.mesh` (`pipe`, `pipeline_repeats`, `microbatches`), set by
    `state.setup`.
    """

    vocab_size: int
    num_layers: int
    embed_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    max_seq_len: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    dtype: str = "bfloat16"
    param_dtype: str = "float32"
    remat_policy: str = "none"
    attention: str = "auto"
    logits_chunk_length: int = 0
    scan_layers: bool = True
    init_std: float = 0.02
    pipeline_stages: int = 1
    pipeline_repeats: int = 1
    pipeline_microbatches: int = 1

    def __post_init__(self) -> None:
        for name in _POSITIVE_INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(
                    f"model.{name}={value!r} must be a positive integer; fix it in the model "
                    "config."
                )
        for name in _POSITIVE_FLOAT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(
                    f"model.{name}={value!r} must be a positive number; set it in the model config."
                )
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(
                f"model.num_heads={self.num_heads} must be a multiple of "
                f"model.num_kv_heads={self.num_kv_heads}; pick num_kv_heads that divides num_heads."
            )
        if self.head_dim % 2 != 0:
            raise ValueError(
                f"model.head_dim={self.head_dim} must be even because RoPE rotates pairs of "
                "features; use an even head_dim."
            )
        for name in ("dtype", "param_dtype"):
            value = getattr(self, name)
            if value not in DTYPES:
                raise ValueError(
                    f"model.{name}={value!r} is not a known dtype; use one of {sorted(DTYPES)}."
                )
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(
                f"model.remat_policy={self.remat_policy!r} is not a known policy; use one of "
                f"{list(REMAT_POLICIES)}."
            )
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"model.attention={self.attention!r} is not a known implementation; use one of "
                f"{list(ATTENTION_IMPLEMENTATIONS)}."
            )
        if (
            isinstance(self.logits_chunk_length, bool)
            or not isinstance(self.logits_chunk_length, int)
            or self.logits_chunk_length < 0
        ):
            raise ValueError(
                f"model.logits_chunk_length={self.logits_chunk_length!r} must be 0 (whole rows) "
                "or a positive number of positions that divides train.seq_len."
            )
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(f"model.tie_embeddings={self.tie_embeddings!r} must be True or False.")
        if not isinstance(self.scan_layers, bool):
            raise ValueError(f"model.scan_layers={self.scan_layers!r} must be True or False.")
        stages, repeats = self.pipeline_stages, self.pipeline_repeats
        if self.num_layers % (stages * repeats):
            raise ValueError(
                f"model.num_layers={self.num_layers} does not split into mesh.pipe={stages} "
                f"stages x mesh.pipeline_repeats={repeats}; use a num_layers divisible by "
                f"{stages * repeats} or change the pipeline."
            )
        if stages == 1 and (repeats > 1 or self.pipeline_microbatches > 1):
            raise ValueError(
                f"mesh.pipeline_repeats={repeats} and mesh.microbatches="
                f"{self.pipeline_microbatches} apply to pipeline parallelism only; set mesh.pipe "
                "> 1, or set both to 1 (train.grad_accum_steps splits a batch without a pipeline)."
            )
        if repeats > 1 and self.pipeline_microbatches < stages:
            raise ValueError(
                f"mesh.microbatches={self.pipeline_microbatches} is fewer than mesh.pipe={stages}: "
                "the circular schedule (mesh.pipeline_repeats > 1) needs at least one microbatch "
                "per stage; raise mesh.microbatches or set mesh.pipeline_repeats=1."
            )

    @property
    def compute_dtype(self) -> Any:
        """The jnp dtype named by `dtype`."""
        return DTYPES[self.dtype]

    @property
    def parameter_dtype(self) -> Any:
        """The jnp dtype named by `param_dtype`."""
        return DTYPES[self.param_dtype]

    @classmethod
    def from_config(
        cls, model_cfg: Mapping[str, Any], vocab_size: int, **pipeline: int
    ) -> ModelConfig:
        """Builds a ModelConfig from the `model` section of an ml_collections config.

        Args:
          model_cfg: a ConfigDict (or mapping) with this dataclass's fields. Its `vocab_size` key,
            if present, is ignored (it may be -1, meaning "use the tokenizer's").
          vocab_size: the resolved vocabulary size.
          **pipeline: `pipeline_stages`, `pipeline_repeats`, `pipeline_microbatches` (from the
            mesh config; default 1).

        Raises:
          ValueError: on an unknown key, a missing required key, or an invalid value.
        """
        values = dict(model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else model_cfg)
        values.pop("vocab_size", None)
        field_names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - field_names)
        if unknown:
            raise ValueError(
                f"model config has unknown key(s) {unknown}; remove them or use one of "
                f"{sorted(field_names)}."
            )
        required = {
            field.name
            for field in dataclasses.fields(cls)
            if field.default is dataclasses.MISSING and field.name != "vocab_size"
        }
        missing = sorted(required - set(values))
        if missing:
            raise ValueError(f"model config is missing required key(s) {missing}; add them.")
        return cls(vocab_size=vocab_size, **values, **pipeline)
