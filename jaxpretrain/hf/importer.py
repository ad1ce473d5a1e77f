"""A Hugging Face `LlamaForCausalLM` folder -> a step-0 checkpoint to continue pretraining from.

`import_checkpoint` writes WORKDIR/checkpoints/0 as the trainer writes its own checkpoints: the
state (the folder's weights as `params`, a fresh optimizer state, step 0), the data position of
a run that has not read anything yet, and the run record with the config. The main job then
resumes from it like from any checkpoint (`python -m jaxpretrain.main --config=... --workdir=...`
with the same config): it evaluates at step 0 if `eval.every` > 0 and trains on. No change to
the trainer is needed.

Every config key that shapes a parameter must equal the folder's `config.json`; differences are
reported in one sentence naming both values. Each tensor's shape is checked before any is read.
Tensors are read one at a time and put straight into their shards, one layer at a time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from jaxpretrain import config as config_lib
from jaxpretrain import state as state_lib
from jaxpretrain import train
from jaxpretrain.hf import layout, safetensors_io
from jaxpretrain.model import ModelConfig

# Buffers some exporters save beside the weights; they are recomputed, never loaded.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def import_checkpoint(hf_dir: str, config: ml_collections.ConfigDict, workdir: str) -> int:
    """Writes `hf_dir`'s weights as checkpoint 0 of a run of `config` in `workdir`.

    Expects the run's prepared data (`tools/import_hf.py` prepares it as the main job does):
    the checkpoint holds the data position, and the vocabulary is the data's tokenizer's.
    Returns the step written (0). Every process must call it.

    Raises ValueError (one sentence) for a folder that does not fit the config's model, and for
    a workdir that already holds checkpoints.
    """
    folder = safetensors_io.SafetensorsFolder(hf_dir)  # refuses remote folders first
    hf_config_path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(hf_config_path):
        raise FileNotFoundError(f"{hf_config_path} does not exist; --hf must be a model folder.")
    with open(hf_config_path) as f:
        fields = layout.model_fields(json.load(f), hf_config_path)
    exp = train.build_experiment(config, workdir)
    model_cfg = exp.model_config
    shape_differences, other_differences = layout.config_differences(fields, model_cfg)
    if shape_differences:
        raise ValueError(
            f"{hf_config_path} does not fit the config's model: {'; '.join(shape_differences)}; "
            "set those keys (--config.model.KEY=VALUE) to the checkpoint's values."
        )
    for difference in other_differences:
        logging.warning(
            "%s differs from the config (%s); the config's value is used.",
            hf_config_path,
            difference,
        )
    check_tensors(folder, model_cfg)
    _check_tokenizer(hf_dir, exp.tokenizer.serialized_model)
    checkpointer = exp.checkpointer(workdir)
    try:
        if checkpointer.all_steps():
            raise ValueError(
                f"{checkpointer.directory} already holds checkpoints {checkpointer.all_steps()}; "
                "import into a new --workdir."
            )
        params = read_params(folder, model_cfg, exp.layout.shardings["params"])
        state = _fresh_state(params, exp.layout, exp.tx, config.train.seed)
        data_state = exp.train_iterator(train._num_streams(exp, None)).get_state()
        run_info = {
            "config": json.loads(json.dumps(config.to_dict(), default=str)),
            "metrics_records": 0,
            "imported_from": os.path.abspath(hf_dir),
        }
        checkpointer.save(0, state, data_state, run_info)
    finally:
        checkpointer.close()
    if jax.process_index() == 0:
        config_lib.write_config_json(config, workdir)
    return 0


def _check_tokenizer(hf_dir: str, ours: bytes) -> None:
    """Warns when the folder's SentencePiece model is not the data's: ids would mean other
    tokens (a folder without one, e.g. a tokenizer.json only, cannot be compared)."""
    theirs = os.path.join(hf_dir, "tokenizer.model")
    if not os.path.isfile(theirs):
        return
    with open(theirs, "rb") as f:
        same = f.read() == ours
    if not same:
        logging.warning(
            "%s is not the prepared data's tokenizer: the imported embeddings will read other "
            "tokens under the same ids unless the two vocabularies agree.",
            theirs,
        )


def check_tensors(folder: safetensors_io.SafetensorsFolder, model_cfg: ModelConfig) -> None:
    """Raises ValueError naming the first tensor missing, extra, or of another shape than
    `model_cfg` needs; reads no tensor data."""
    abstract_params = state_lib.abstract_model(model_cfg)[1]
    expected = {name: tensor_map for name, tensor_map, _ in layout.hf_tensors(model_cfg)}
    present = {name for name in folder.names() if not name.endswith(_IGNORED_SUFFIXES)}
    missing = [name for name in expected if name not in present]
    if missing:
        hint = (
            " (the config has model.tie_embeddings=False; set it True for a tied checkpoint)"
            if missing == [layout.LM_HEAD_NAME]
            else ""
        )
        raise ValueError(
            f"{folder.folder} lacks {len(missing)} tensor(s) the config's model needs, first "
            f"{missing[0]}{hint}."
        )
    extra = sorted(present - set(expected))
    if extra == [layout.LM_HEAD_NAME] and model_cfg.tie_embeddings:
        # Some writers store the tied head too; it must then be the embedding itself.
        head, embedding = folder.read(layout.LM_HEAD_NAME), folder.read(layout.EMBED_NAME)
        if not np.array_equal(head, embedding):
            raise ValueError(
                f"{folder.file_of(layout.LM_HEAD_NAME)}: lm_head.weight differs from the embedding "
                "but the config has model.tie_embeddings=True; set it False to import both."
            )
        extra = []
    if extra:
        raise ValueError(
            f"{folder.folder} has {len(extra)} tensor(s) the config's model has no place for, "
            f"first {extra[0]}; is it a Llama checkpoint of this size?"
        )
    for name, tensor_map in expected.items():
        shape = layout.param_at(abstract_params, tensor_map.path).shape
        needed = tensor_map.hf_shape(shape[1:] if tensor_map.per_layer else shape)
        actual = folder.shape(name)
        if actual != needed:
            raise ValueError(
                f"{folder.file_of(name)}: {name} has shape {list(actual)} but the config's model "
                f"needs {list(needed)}; set the model keys to the checkpoint's sizes."
            )


def read_params(
    folder: safetensors_io.SafetensorsFolder,
    model_cfg: ModelConfig,
    shardings: Mapping[str, Any],
) -> dict[str, Any]:
    """The folder's tensors as our params (pure dict of global arrays laid out as `shardings`).

    Host memory holds one tensor (one layer of one parameter) at a time; devices hold, while a
    stacked parameter is assembled, its layers and the stack.
    """
    abstract_params = state_lib.abstract_model(model_cfg)[1]
    params: dict[str, Any] = {}
    for tensor_map in layout.tensor_maps(model_cfg.tie_embeddings):
        abstract = layout.param_at(abstract_params, tensor_map.path)
        sharding = layout.param_at(shardings, tensor_map.path)
        if tensor_map.per_layer:
            layer_sharding = _without_leading_axis(sharding, len(abstract.shape))
            layers = [
                _put(_read(folder, tensor_map, layer, abstract), layer_sharding)
                for layer in range(model_cfg.num_layers)
            ]
            value = jax.jit(lambda *xs: jnp.stack(xs), out_shardings=sharding)(*layers)
            del layers
        else:
            value = _put(_read(folder, tensor_map, None, abstract), sharding)
        _set(params, tensor_map.path, value)
    return params


def _read(
    folder: safetensors_io.SafetensorsFolder,
    tensor_map: layout.TensorMap,
    layer: int | None,
    abstract: jax.ShapeDtypeStruct,
) -> np.ndarray:
    shape = abstract.shape[1:] if tensor_map.per_layer else abstract.shape
    tensor = folder.read(tensor_map.name(layer))
    return tensor_map.from_hf(tensor, shape).astype(abstract.dtype)


def _put(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from the same host array on every process; each puts only its shards."""
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _without_leading_axis(sharding: NamedSharding, ndim: int) -> NamedSharding:
    spec = tuple(sharding.spec) + (None,) * (ndim - len(sharding.spec))
    return NamedSharding(sharding.mesh, PartitionSpec(*spec[1:]))


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _fresh_state(
    params: dict[str, Any], state_layout: state_lib.StateLayout, tx: Any, seed: int
) -> state_lib.TrainState:
    """A train state at step 0 around `params`: what `state.init_state` makes, with these
    parameters instead of random ones (its other parts zero, the same RNG)."""

    def init(params: dict[str, Any]) -> state_lib.TrainState:
        zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), state_layout.abstract_state)
        # init_state splits the seed into (parameter init, state RNG).
        _, state_rng = jax.random.split(jax.random.PRNGKey(seed))
        return {**zeros, "params": params, "opt_state": tx.init(params), "rng": state_rng}

    return jax.jit(init, out_shardings=state_layout.shardings, donate_argnums=0)(params)
