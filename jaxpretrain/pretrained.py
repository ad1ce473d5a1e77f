"""A trained workdir as a model to call: `jaxpretrain.load(workdir)`.

    import jaxpretrain
    model = jaxpretrain.load("runs/tiny_clm")              # newest checkpoint; step=N for another
    logits = model.logits([[2, 400, 401]])                 # [batch, length, vocab] float32 numpy
    text = model.generate("def ", max_new_tokens=32, temperature=0.0)

Needs no training data: the config comes from WORKDIR/config.json and the tokenizer from
WORKDIR/tokenizer.model if present, else from the run's prepared data (`data.dir`, default
WORKDIR/data), else from `tokenizer_path`. The parameters are restored sharded over all local
devices (split along `embed`, as FSDP does), so a model larger than one device loads; single
process only. `tools/export_hf.py` restores through `restore` below.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxpretrain import checkpoint, paths, recovery, sample
from jaxpretrain import config as config_lib
from jaxpretrain import state as state_lib
from jaxpretrain.data import manifest as manifest_lib
from jaxpretrain.model import ModelConfig
from jaxpretrain.tokenizer import Tokenizer

# A copy of the run's tokenizer in the workdir, preferred to the prepared data's when present.
WORKDIR_TOKENIZER = "tokenizer.model"


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config a run wrote to WORKDIR/config.json, over today's defaults.

    Keys added to `config.default_config()` since the run started take their defaults, so a
    workdir written by an earlier version still loads.
    """
    path = paths.resolve(workdir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: {workdir} is not a training workdir (training writes "
            "config.json when it starts)."
        )
    values = _merged(config_lib.default_config().to_dict(), json.loads(path.read_text()))
    config = ml_collections.ConfigDict(values)
    # JSON made the rules' tuples lists; the resolver expects a mesh axis or a tuple of them.
    config.mesh.rules = tuple(
        (name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in config.mesh.rules
    )
    return config


def _merged(defaults: dict, saved: dict) -> dict:
    merged = dict(defaults)
    for key, value in saved.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def inference_config(
    config: ml_collections.ConfigDict, num_devices: int
) -> ml_collections.ConfigDict:
    """`config` laid out for reading its parameters on `num_devices` devices.

    Parameters are split along `embed` over the largest device count dividing embed_dim (the
    `fsdp` axis) and copied over the rest (`data`); no tensor or pipeline parallelism. The
    parameter shapes are those of the run whatever mesh it trained on.
    """
    config = ml_collections.ConfigDict(config.to_dict())
    fsdp = math.gcd(num_devices, config.model.embed_dim)
    config.mesh.update(
        data=num_devices // fsdp, fsdp=fsdp, tensor=1, pipe=1, microbatches=1, pipeline_repeats=1
    )
    # Only so the batch-split check passes: nothing is trained.
    config.train.update(batch_size=num_devices, grad_accum_steps=1)
    return config


def load_tokenizer(
    config: ml_collections.ConfigDict, workdir: str, tokenizer_path: str | None = None
) -> Tokenizer:
    """The run's tokenizer: `tokenizer_path`, WORKDIR/tokenizer.model, or the prepared data's."""
    if tokenizer_path:
        return Tokenizer.load(tokenizer_path)
    in_workdir = paths.resolve(workdir) / WORKDIR_TOKENIZER
    if in_workdir.exists():
        return Tokenizer.load(in_workdir)
    data_dir = config_lib.data_dir(config, workdir)
    # Only the manifest and the tokenizer are read: the shards may be gone.
    if not (paths.resolve(data_dir) / manifest_lib.MANIFEST_FILENAME).exists():
        raise FileNotFoundError(
            f"no tokenizer for {workdir}: neither {in_workdir} nor the run's prepared data "
            f"(data.dir={data_dir}) exists; restore that directory or pass the run's "
            "tokenizer.model (tokenizer_path=..., --tokenizer_path=...)."
        )
    return Tokenizer.load(manifest_lib.read_manifest(data_dir).tokenizer_path)


@dataclasses.dataclass(frozen=True)
class RestoredRun:
    """A run's parameters at one checkpoint, with what is needed to use them."""

    config: ml_collections.ConfigDict  # the run's own config (its mesh, as trained)
    tokenizer: Tokenizer
    setup: state_lib.Setup  # the inference layout the parameters are restored onto
    step: int
    params: Any  # pure dict of jax.Arrays, sharded as `setup.layout.shardings["params"]`

    @property
    def model_config(self) -> ModelConfig:
        return self.setup.model_config


def restore(
    workdir: str,
    step: int | None = None,
    *,
    tokenizer_path: str | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> RestoredRun:
    """The parameters of checkpoint `step` (default: the newest) of `workdir`, read-only.

    The same restore as `train.evaluate_checkpoint`: the run's config, the same-model check, the
    corrupt-checkpoint skip. Every process must call it (a collective on several processes).
    """
    config = read_config(workdir)
    tokenizer = load_tokenizer(config, workdir, tokenizer_path)
    devices = list(devices or jax.devices())
    setup = state_lib.setup(
        inference_config(config, len(devices)),
        tokenizer_vocab=tokenizer.vocab_size,
        devices=devices,
    )
    checkpointer = checkpoint.Checkpointer(
        os.fspath(paths.resolve(workdir) / "checkpoints"),
        max_to_keep=config.checkpoint.max_to_keep,
        use_async=False,
        read_only=True,
    )
    try:
        saved = checkpointer.all_steps()
        if step is not None and step not in saved:
            raise FileNotFoundError(
                f"{checkpointer.directory} has no checkpoint {step} (it has {saved}); pick one "
                "of those."
            )
        restored = checkpointer.restore(
            checkpoint.params_only(setup.layout.abstract_state),
            check_run=functools.partial(
                recovery.check_same_model, config, str(checkpointer.directory)
            ),
            newest_step=step,
        )
    finally:
        checkpointer.close()
    if restored is None:
        raise FileNotFoundError(f"{checkpointer.directory} holds no checkpoint; train first.")
    return RestoredRun(config, tokenizer, setup, restored.step, restored.state["params"])


@functools.partial(jax.jit, static_argnums=0)
def _causal_logits(graphdef: nnx.GraphDef, params: Any, inputs_BL: jax.Array) -> jax.Array:
    model = nnx.merge(graphdef, params)
    batch, length = inputs_BL.shape
    positions_BL = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    ones_BL = jnp.ones((batch, length), jnp.int32)
    return model(inputs_BL, ones_BL, positions_BL, jnp.zeros_like(ones_BL))


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A checkpoint's model: logits, generation, its tokenizer and config."""

    config: ml_collections.ConfigDict  # the run's config (WORKDIR/config.json)
    tokenizer: Tokenizer
    model_config: ModelConfig
    step: int
    params: Any
    graphdef: nnx.GraphDef

    def logits(self, token_ids: Any) -> np.ndarray:
        """Next-token logits, [batch, length] int ids -> [batch, length, vocab] float32.

        Each row is one sequence read causally from position 0 (no padding, no packing), as
        Hugging Face's `LlamaForCausalLM(input_ids).logits` reads it.
        """
        ids_BL = np.asarray(token_ids)
        if ids_BL.ndim != 2 or not np.issubdtype(ids_BL.dtype, np.integer):
            raise ValueError(
                f"token_ids must be a [batch, length] integer array, got shape {ids_BL.shape} "
                f"of {ids_BL.dtype}."
            )
        vocab = self.model_config.vocab_size
        if ids_BL.size and (ids_BL.min() < 0 or ids_BL.max() >= vocab):
            raise ValueError(
                f"token_ids must lie in [0, {vocab}), got values {ids_BL.min()}..{ids_BL.max()}."
            )
        logits_BLV = _causal_logits(self.graphdef, self.params, jnp.asarray(ids_BL, jnp.int32))
        return np.asarray(jax.device_get(logits_BLV), dtype=np.float32)

    def generate(
        self, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0, seed: int = 0
    ) -> str:
        """Continues `prompt` (after a BOS, as training saw documents) by up to
        `max_new_tokens` tokens, stopping at EOS; returns the new text. Temperature 0 is greedy.
        The prompt and continuation fit in `train.seq_len` tokens."""
        return sample.generate(
            self.graphdef,
            self.params,
            self.tokenizer,
            prompt,
            length=max_new_tokens,
            seq_len=self.config.train.seq_len,
            temperature=temperature,
            rng=jax.random.PRNGKey(seed),
        )


def load(
    workdir: str,
    step: int | None = None,
    *,
    tokenizer_path: str | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Pretrained:
    """The model of `workdir`'s checkpoint `step` (default: the newest); see the module doc."""
    run = restore(workdir, step, tokenizer_path=tokenizer_path, devices=devices)
    return Pretrained(
        config=run.config,
        tokenizer=run.tokenizer,
        model_config=run.model_config,
        step=run.step,
        params=run.params,
        graphdef=run.setup.layout.graphdef,
    )
