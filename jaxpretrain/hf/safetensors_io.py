"""Hugging Face safetensors folders, written and read one tensor at a time.

A folder holds `model.safetensors`, or shards `model-00001-of-0000N.safetensors` with
`model.safetensors.index.json` ({"metadata": {"total_size": bytes}, "weight_map": {name: file}}),
the layout `transformers` writes and reads. Each file carries the metadata {"format": "pt"},
without which transformers refuses it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import ml_dtypes  # noqa: F401 - registers bfloat16 with numpy, so safetensors can read BF16
import numpy as np
from etils import epath

from jaxpretrain import paths

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_METADATA = {"format": "pt"}


def _safetensors_numpy():
    try:
        import safetensors.numpy
    except ImportError as error:
        raise ImportError(
            f"reading and writing safetensors needs the `safetensors` package ({error}); "
            "install the hf extra: pip install -e '.[hf]'."
        ) from error
    return safetensors.numpy


def plan_shards(sizes: Sequence[tuple[str, int]], max_shard_bytes: int) -> list[list[str]]:
    """Tensor names grouped into files of at most `max_shard_bytes` (one bigger tensor gets a
    file of its own), keeping their order."""
    shards: list[list[str]] = [[]]
    shard_bytes = 0
    for name, size in sizes:
        if shards[-1] and shard_bytes + size > max_shard_bytes:
            shards.append([])
            shard_bytes = 0
        shards[-1].append(name)
        shard_bytes += size
    return shards


class ShardedWriter:
    """Writes tensors given one at a time, in planned order, into a safetensors folder.

    At most one file's tensors are held in memory: each file is written as soon as its last
    tensor arrives. `output` may be a local path or a gs:// URL.
    """

    def __init__(self, output: epath.Path, sizes: Sequence[tuple[str, int]], max_shard_bytes: int):
        self._output = output
        self._shards = plan_shards(sizes, max_shard_bytes)
        self._total_bytes = sum(size for _, size in sizes)
        self._pending: dict[str, np.ndarray] = {}
        self._weight_map: dict[str, str] = {}
        self._next = 0  # index of the shard being filled

    def file_name(self, shard: int) -> str:
        if len(self._shards) == 1:
            return SINGLE_FILE
        return f"model-{shard + 1:05d}-of-{len(self._shards):05d}.safetensors"

    def add(self, name: str, array: np.ndarray) -> None:
        expected = self._shards[self._next][len(self._pending)]
        if name != expected:
            raise ValueError(f"tensor {name} given where the plan expects {expected}.")
        self._pending[name] = np.ascontiguousarray(array)
        if len(self._pending) == len(self._shards[self._next]):
            self._write(self.file_name(self._next), self._pending)
            self._weight_map.update(dict.fromkeys(self._pending, self.file_name(self._next)))
            self._pending = {}
            self._next += 1

    def close(self) -> None:
        """Writes the index (sharded folders only); every planned tensor must have been added."""
        if self._next != len(self._shards):
            raise ValueError(f"{len(self._shards) - self._next} planned file(s) were not written.")
        if len(self._shards) > 1:
            index = {"metadata": {"total_size": self._total_bytes}, "weight_map": self._weight_map}
            (self._output / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")

    def _write(self, file_name: str, tensors: dict[str, np.ndarray]) -> None:
        path = self._output / file_name
        st = _safetensors_numpy()
        if paths.is_remote(path):
            path.write_bytes(st.save(tensors, metadata=_METADATA))
        else:
            st.save_file(tensors, os.fspath(path), metadata=_METADATA)


class SafetensorsFolder:
    """The tensors of a local Hugging Face folder; shapes without reading, tensors on demand."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = epath.Path(folder)
        if paths.is_remote(folder):
            raise ValueError(
                f"{folder}: read Hugging Face folders from a local path (safetensors memory-maps "
                "its files); copy the folder to this machine first."
            )
        index_path = self.folder / INDEX_FILE
        if index_path.exists():
            weight_map = json.loads(index_path.read_text())["weight_map"]
        elif (self.folder / SINGLE_FILE).exists():
            weight_map = None
        else:
            raise FileNotFoundError(
                f"{folder} has neither {SINGLE_FILE} nor {INDEX_FILE}; point --hf at a Hugging "
                "Face model folder saved with safetensors."
            )
        from safetensors import safe_open

        _safetensors_numpy()  # the install check
        files = sorted(set(weight_map.values())) if weight_map else [SINGLE_FILE]
        self._handles = {name: safe_open(os.fspath(self.folder / name), "np") for name in files}
        self._file_of = {
            tensor: name
            for name, handle in self._handles.items()
            for tensor in handle.keys()  # noqa: SIM118 - a safe_open handle is not iterable
        }

    def names(self) -> list[str]:
        return sorted(self._file_of)

    def file_of(self, name: str) -> str:
        return os.fspath(self.folder / self._file_of[name])

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handles[self._file_of[name]].get_slice(name).get_shape())

    def read(self, name: str) -> np.ndarray:
        return self._handles[self._file_of[name]].get_tensor(name)
