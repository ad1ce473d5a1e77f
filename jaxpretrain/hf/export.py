"""A workdir's checkpoint -> a Hugging Face `LlamaForCausalLM` folder (`tools/export_hf.py`).

The parameters are restored sharded over every device (`pretrained.restore`), then gathered to
the host one Hugging Face tensor at a time (one layer of one stacked parameter), converted and
handed to the safetensors writer, which holds at most one output file's tensors. So neither a
device nor the host ever holds the whole model. On several processes every process restores and
takes part in each gather; only process 0 writes.

Output: config.json, generation_config.json, model.safetensors (or shards + index), and the
tokenizer files (`hf/tokenizer.py`).
"""

from __future__ import annotations

import json
import math
import os

import jax
import ml_dtypes
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from jaxpretrain import paths, pretrained
from jaxpretrain.hf import layout, safetensors_io
from jaxpretrain.hf import tokenizer as hf_tokenizer

DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # 5GB, a size the Hugging Face Hub serves well


def export(
    workdir: str,
    output: str,
    *,
    step: int | None = None,
    dtype: str = "float32",
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    tokenizer_path: str | None = None,
    write_tokenizer: bool = True,
) -> str:
    """Writes checkpoint `step` (default: the newest) of `workdir` to `output`; returns its path.

    `dtype` is the stored weights' dtype ('float32' or 'bfloat16', rounded to nearest even).
    `output` may be a local path or a gs:// URL. Every process must call it.
    """
    if dtype not in DTYPES:
        raise ValueError(f"--dtype={dtype!r} is not supported; use one of {sorted(DTYPES)}.")
    out_dtype = DTYPES[dtype]
    out = paths.resolve(output)
    _check_no_earlier_export(out)
    run = pretrained.restore(workdir, step, tokenizer_path=tokenizer_path)
    model_cfg = run.model_config
    if model_cfg.embed_dim % model_cfg.num_heads:
        logging.warning(
            "model.embed_dim=%d is not a multiple of model.num_heads=%d: transformers 5's "
            "LlamaConfig refuses such a config.json (the weights are still exact).",
            model_cfg.embed_dim,
            model_cfg.num_heads,
        )
    tokenizer_files = {}
    if write_tokenizer:  # checked before the long part
        tokenizer_files = hf_tokenizer.tokenizer_files(
            run.tokenizer, model_cfg.max_seq_len, source=f"the tokenizer of {workdir}"
        )
    tensors = list(layout.hf_tensors(model_cfg))
    sizes = [
        (name, math.prod(_hf_shape(run.params, tensor_map)) * out_dtype.itemsize)
        for name, tensor_map, _ in tensors
    ]
    is_primary = jax.process_index() == 0
    writer = None
    if is_primary:
        out.mkdir(parents=True, exist_ok=True)
        writer = safetensors_io.ShardedWriter(out, sizes, max_shard_bytes)
    for name, tensor_map, layer in tensors:
        param = layout.param_at(run.params, tensor_map.path)
        host = _to_host(param if layer is None else param[layer])  # every process: a collective
        if writer is not None:
            writer.add(name, tensor_map.to_hf(host.astype(out_dtype)))
        del host
    if writer is not None:
        writer.close()
        config = layout.hf_config(model_cfg, run.tokenizer.special_ids, dtype)
        specials = run.tokenizer.special_ids
        generation = {
            "bos_token_id": specials.bos,
            "eos_token_id": specials.eos,
            "pad_token_id": specials.pad,
        }
        _write_json(out / "config.json", config)
        _write_json(out / "generation_config.json", generation)
        for file_name, content in tokenizer_files.items():
            (out / file_name).write_bytes(content)
        logging.info("exported step %d of %s to %s", run.step, workdir, out)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("export_hf_done")  # no process exits before 0 wrote
    return os.fspath(out)


def _check_no_earlier_export(out) -> None:
    """Refuses an output holding weights: files of an earlier export with another shard count
    would stay beside the new ones, and transformers would read the wrong index."""
    found = []
    if jax.process_index() == 0 and out.exists():
        found = sorted(path.name for path in out.iterdir() if path.name.startswith("model"))
    if jax.process_count() > 1:  # process 0 decides; every process stops with it
        found = ["?"] if int(multihost_utils.broadcast_one_to_all(np.int32(bool(found)))) else []
    if found:
        raise FileExistsError(
            f"{out} already holds exported weights ({', '.join(found)}); choose a new --output "
            "or delete that folder first."
        )


def _hf_shape(params, tensor_map: layout.TensorMap) -> tuple[int, ...]:
    shape = layout.param_at(params, tensor_map.path).shape
    return tensor_map.hf_shape(shape[1:] if tensor_map.per_layer else shape)


def _to_host(array: jax.Array) -> np.ndarray:
    """`array` as one numpy array on this host (gathered from other hosts' devices if needed)."""
    if array.is_fully_addressable:
        return np.asarray(jax.device_get(array))
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def _write_json(path, value) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")
