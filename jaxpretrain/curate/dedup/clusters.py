"""Clusters over document indices, document ids on disk, and the dedup result.

Documents are numbered 0, 1, 2, ... in the order they are added; that order must be deterministic
(e.g. sorted shards, rows in file order) because each cluster keeps its smallest index. Nothing
here holds a Python object per document: clusters are one int64 array, ids live in files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import mmap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

# Indices compressed per pointer-jumping step of `UnionFind.roots` (bounds its temporaries).
_ROOTS_SLICE = 1 << 20


def removed_indices(kept_index: np.ndarray) -> np.ndarray:
    """int64 indices i with kept_index[i] != i (documents a cluster did not keep), compared in
    slices so that no N-sized temporary is built."""
    parts = [
        start
        + np.flatnonzero(
            kept_index[start : start + _ROOTS_SLICE]
            != np.arange(start, min(start + _ROOTS_SLICE, len(kept_index)))
        )
        for start in range(0, len(kept_index), _ROOTS_SLICE)
    ]
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


class UnionFind:
    """Disjoint sets over 0..n-1 whose representative is always the smallest member.

    Holds one int64 per document (8 bytes x N: 8 GB for a billion documents) — the one
    corpus-sized array dedup keeps in memory. `union_edges` merges whole edge arrays with numpy
    (hooking roots under the smaller root, then pointer jumping); `union` is its one-edge form.
    Linking the larger root under the smaller makes the result independent of edge order.
    """

    def __init__(self, size: int = 0):
        self._parent = np.arange(size, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._parent)

    def find(self, index: int) -> int:
        parent = self._parent
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = int(parent[index])
        return int(index)

    def union(self, a: int, b: int) -> bool:
        """Merges the sets of `a` and `b`; returns False if they were already one set."""
        root_a, root_b = self.find(a), self.find(b)
        if root_a == root_b:
            return False
        self._parent[max(root_a, root_b)] = min(root_a, root_b)
        return True

    def union_edges(self, a: np.ndarray, b: np.ndarray) -> None:
        """Merges the sets of a[i] and b[i] for every i (int64 arrays of equal length)."""
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        touched = np.unique(np.concatenate([a, b]))
        while len(a):
            self._point_at_roots(touched)
            root_a, root_b = self._parent[a], self._parent[b]
            apart = root_a != root_b
            a, b, root_a, root_b = a[apart], b[apart], root_a[apart], root_b[apart]
            higher = np.maximum(root_a, root_b)
            # Several edges may hook one root: it goes under the smallest; the rest retry.
            np.minimum.at(self._parent, higher, np.minimum(root_a, root_b))
            touched = np.unique(np.concatenate([a, b, higher]))

    def _point_at_roots(self, nodes: np.ndarray) -> None:
        """Pointer jumping on `nodes` until each points at its root; a path through other nodes
        of the set halves every step, so a chain of k hooked roots takes ~log2(k) steps."""
        parent = self._parent
        while True:
            current = parent[nodes]
            jumped = parent[current]
            if np.array_equal(jumped, current):
                return
            parent[nodes] = jumped

    def roots(self) -> np.ndarray:
        """int64[N]: the representative (smallest member) of every index, fully compressed.

        Compresses the parent array in place and returns it (no second N-sized array): since
        every parent is <= its child, compressing ascending slices leaves each slice pointing
        either into earlier, already final slices or into itself, so slice-sized pointer jumping
        finishes it. The union-find stays valid (every node points at its root)."""
        parent = self._parent
        for start in range(0, len(parent), _ROOTS_SLICE):
            nodes = parent[start : start + _ROOTS_SLICE]  # a view: jumps write through
            while True:
                jumped = parent[nodes]
                if np.array_equal(jumped, nodes):
                    break
                nodes[:] = jumped
        return parent


class IdTable:
    """Document ids on disk in index order: UTF-8 bytes back to back plus a uint64 offset file,
    so the corpus's ids never sit in memory and `table[i]` is one memory-mapped slice."""

    def __init__(self, directory: str | Path, name: str = "ids", keepalive: Any = None):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._bytes_path = directory / f"{name}.bin"
        self._offsets_path = directory / f"{name}.offsets.u64"
        self._bytes_file = open(self._bytes_path, "wb")  # noqa: SIM115 (closed in close())
        self._offsets_file = open(self._offsets_path, "wb")  # noqa: SIM115 (closed in close())
        self._offsets_file.write(np.zeros(1, np.uint64).tobytes())
        self._end = 0
        self.count = 0
        self._keepalive = keepalive  # e.g. the TemporaryDirectory the files live in
        self._bytes: mmap.mmap | bytes = b""
        self._offsets: np.ndarray | None = None

    def extend(self, ids: list[str]) -> None:
        """Appends `ids` (indices count on from the previous ones)."""
        encoded = [doc_id.encode("utf-8") for doc_id in ids]
        ends = self._end + np.cumsum([len(e) for e in encoded], dtype=np.uint64)
        self._bytes_file.write(b"".join(encoded))
        self._offsets_file.write(ends.tobytes())
        self._end = int(ends[-1]) if len(ends) else self._end
        self.count += len(ids)

    def close(self) -> None:
        """Finishes writing; reading (`table[i]`) closes implicitly."""
        if not self._bytes_file.closed:
            self._bytes_file.close()
            self._offsets_file.close()

    def __getitem__(self, index: int) -> str:
        return self.lookup(np.array([index]))[0]

    def lookup(self, indices: np.ndarray) -> list[str]:
        """The ids at int64 `indices`, read from the memory-mapped files."""
        if self._offsets is None:
            self.close()
            self._offsets = np.memmap(self._offsets_path, np.uint64, "r")
            with open(self._bytes_path, "rb") as file:
                self._bytes = (
                    mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) if self._end else b""
                )
        starts = self._offsets[indices].tolist()
        ends = self._offsets[np.asarray(indices) + 1].tolist()
        data = self._bytes
        return [data[start:end].decode("utf-8") for start, end in zip(starts, ends, strict=True)]


def id_hash(doc_id: str) -> int:
    """64-bit hash of an id, for sorted lookups (a match is confirmed against the id itself)."""
    return int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest(), "little")


class DuplicateMap(Mapping[str, str]):
    """Removed document id -> id of the kept document of its cluster, read from arrays and the id
    table. Iterating streams ids from disk; the first lookup builds a sorted uint64 hash array of
    removed ids (16 bytes per removed document, numpy) rather than a dict."""

    def __init__(self, kept_index: np.ndarray, ids: IdTable, removed: np.ndarray | None = None):
        self._kept_index = kept_index
        self._removed = removed_indices(kept_index) if removed is None else removed
        self._ids = ids
        self._hashes: np.ndarray | None = None
        self._hash_order: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self._removed)

    def __iter__(self) -> Iterator[str]:
        for index in self._removed:
            yield self._ids[index]

    def items(self) -> Iterator[tuple[str, str]]:  # type: ignore[override]
        for index in self._removed:
            yield self._ids[index], self._ids[self._kept_index[index]]

    def __getitem__(self, doc_id: str) -> str:
        if self._hashes is None:
            hashes = np.fromiter((id_hash(self._ids[i]) for i in self._removed), np.uint64)
            self._hash_order = np.argsort(hashes, kind="stable")
            self._hashes = hashes[self._hash_order]
        wanted = np.uint64(id_hash(doc_id))
        start = int(np.searchsorted(self._hashes, wanted, side="left"))
        stop = int(np.searchsorted(self._hashes, wanted, side="right"))
        for position in self._hash_order[start:stop]:
            index = self._removed[position]
            if self._ids[index] == doc_id:
                return self._ids[self._kept_index[index]]
        raise KeyError(doc_id)


def cluster_sizes(kept_index: np.ndarray, documents: np.ndarray | None = None) -> dict[int, int]:
    """{cluster size: number of clusters of that size} for sizes >= 2, from int64[N] kept indices
    (each document's cluster's smallest index), counting only `documents` if given."""
    if documents is None:
        removed = removed_indices(kept_index)
    else:
        removed = documents[kept_index[documents] != documents]
    return _sizes_of_removed(kept_index, removed)


def _sizes_of_removed(kept_index: np.ndarray, removed: np.ndarray) -> dict[int, int]:
    """Cluster sizes from the removed members' kept indices (a cluster = its kept + removed)."""
    _, members = np.unique(kept_index[removed], return_counts=True)
    sizes, counts = np.unique(members + 1, return_counts=True)
    return {int(size): int(count) for size, count in zip(sizes, counts, strict=True)}


@dataclasses.dataclass(frozen=True)
class DedupResult:
    """Outcome of a dedup pass.

    Attributes:
      duplicate_of: removed document id -> id of the kept document of its cluster (a
        `DuplicateMap` over arrays and ids on disk; any mapping works, e.g. a small dict).
      num_documents: documents seen.
      num_clusters: clusters with more than one document.
      cluster_sizes: {cluster size: number of clusters of that size} for sizes >= 2.
      stats: method-specific counters (candidate edges, spilled runs, ...).
    """

    duplicate_of: Mapping[str, str]
    num_documents: int
    num_clusters: int
    cluster_sizes: dict[int, int]
    stats: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def num_removed(self) -> int:
        return len(self.duplicate_of)

    @property
    def largest_cluster(self) -> int:
        return max(self.cluster_sizes, default=1)

    def is_kept(self, doc_id: str) -> bool:
        return doc_id not in self.duplicate_of


def build_result(
    kept_index: np.ndarray,
    ids: IdTable,
    stats: dict[str, float],
    removed: np.ndarray | None = None,
) -> DedupResult:
    """A `DedupResult` over int64[N] kept indices (each cluster keeps its smallest index);
    `removed` is `removed_indices(kept_index)` when the caller already has it."""
    removed = removed_indices(kept_index) if removed is None else removed
    sizes = _sizes_of_removed(kept_index, removed)
    return DedupResult(
        duplicate_of=DuplicateMap(kept_index, ids, removed),
        num_documents=len(kept_index),
        num_clusters=sum(sizes.values()),
        cluster_sizes=sizes,
        stats=stats,
    )
