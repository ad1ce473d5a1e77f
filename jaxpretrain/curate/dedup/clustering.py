"""The one clustering core of every dedup: documents that share a key are one cluster.

  add(group, keys, documents) ─► per-group SpillSorter (sorted runs on disk)
  finish() ─► each group merged in its own process: block merge ─► runs of equal keys
           ─► star edges (first document, each other one) [─► MinHash verification]
           ─► edge files on disk ─► UnionFind.union_edges in bounded chunks ─► int64[N] kept index

Exact dedup keys are 128-bit text hashes (groups split by hash), LSH keys are one 64-bit bucket
per band (one group per band), and duplicate-id detection reuses the exact shape on a hash of
(source, id). Memory: `max_records_in_memory` records across all groups while adding, the same
budget split over the workers while merging, and the union-find array (8 bytes per document),
which `finish` compresses in place and returns as the kept index. A whole dedup (`run.py`,
exact + MinHash + duplicate ids) measures ~18 bytes per document at its peak: that array, a
bool removed mask and an int64 per removed document, plus the budget-bound buffers.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np

from jaxpretrain.curate.dedup.clusters import UnionFind
from jaxpretrain.curate.dedup.spill import SpillSorter, star_edges

# Edges compared per vectorised signature check: 64K x 2 signatures of 112 uint32 is ~58 MB.
_VERIFY_CHUNK = 1 << 16


@dataclasses.dataclass(frozen=True)
class Verification:
    """Keep an LSH edge only if the two signatures agree on >= `threshold` of `num_perm` rows.

    `signatures_path` holds uint32[N, num_perm] in document order (read by memory map)."""

    signatures_path: Path
    num_perm: int
    threshold: float


class KeyClustering:
    """Clusters documents sharing a key; `add` records, then `finish` once.

    Args:
      directory: where run and edge files go (deleted by `finish`).
      key_columns: uint64 columns per key (2 for a 128-bit hash, 1 for an LSH bucket).
      groups: independent key spaces merged in parallel (LSH bands; hash ranges for exact).
      max_records_in_memory: records buffered across all groups before spilling sorted runs.
    """

    def __init__(
        self, directory: str | Path, key_columns: int, groups: int, max_records_in_memory: int
    ):
        self.directory = Path(directory)
        self.key_columns = key_columns
        self.max_records_in_memory = max_records_in_memory
        per_group = max(1, max_records_in_memory // groups)
        self._sorters = [
            SpillSorter(key_columns + 1, self.directory / f"group_{g:04d}", per_group)
            for g in range(groups)
        ]

    @property
    def num_records(self) -> int:
        return sum(sorter.num_records for sorter in self._sorters)

    def add(self, group: int, keys: np.ndarray, documents: np.ndarray) -> None:
        """Adds uint64[n, key_columns] `keys` of int64[n] `documents` (increasing across calls)
        to `group`."""
        records = np.empty((len(documents), self.key_columns + 1), np.uint64)
        records[:, : self.key_columns] = keys.reshape(len(documents), self.key_columns)
        records[:, -1] = documents
        self._sorters[group].add(records)

    def spill(self) -> None:
        """Writes every group's buffered records to disk, so that a clustering finished later
        holds no records in memory meanwhile."""
        for sorter in self._sorters:
            sorter.spill_all()

    def add_by_hash(self, keys: np.ndarray, documents: np.ndarray) -> None:
        """Adds hash keys, each to the group its first column falls in (hashes are uniform)."""
        groups = len(self._sorters)
        if groups == 1:
            self.add(0, keys, documents)
            return
        group_of = keys[:, 0] % np.uint64(groups)
        for group in range(groups):
            mine = group_of == group
            self.add(group, keys[mine], documents[mine])

    def finish(
        self, num_documents: int, workers: int = 1, verification: Verification | None = None
    ) -> tuple[np.ndarray, dict[str, float]]:
        """Merges every group and returns (int64[N] kept index of each document's cluster, stats:
        spilled_runs, candidate_edges, rejected_edges)."""
        spilled_runs = sum(len(sorter.run_paths) for sorter in self._sorters)
        parallel = workers > 1 and len(self._sorters) > 1
        if parallel:
            for sorter in self._sorters:
                sorter.spill_all()  # a sorter crosses to its worker as run paths only
        # Groups merging at the same time share the budget.
        budget = max(1, self.max_records_in_memory // min(max(1, workers), len(self._sorters)))
        tasks = [
            (sorter, self.key_columns, self.directory / f"edges_{g:04d}.i64", verification, budget)
            for g, sorter in enumerate(self._sorters)
        ]
        if parallel:
            context = multiprocessing.get_context("spawn")  # fork is unsafe next to JAX threads
            pool_size = min(workers, len(tasks))
            with concurrent.futures.ProcessPoolExecutor(pool_size, mp_context=context) as pool:
                counts = list(pool.map(_merge_group, *zip(*tasks, strict=True)))
        else:
            counts = [_merge_group(*task) for task in tasks]
        self._sorters = []
        union_find = UnionFind(num_documents)
        # union_edges holds ~10 int64 arrays per edge chunk (~160 bytes an edge), so a chunk is a
        # quarter of the record budget to stay near the spill buffer's own footprint.
        chunk_edges = max(1, self.max_records_in_memory // 4)
        for _, _, edges_path, _, _ in tasks:
            _union_edge_file(union_find, edges_path, chunk_edges)
        shutil.rmtree(self.directory, ignore_errors=True)
        stats = {
            "spilled_runs": float(spilled_runs),
            "candidate_edges": float(sum(c[0] for c in counts)),
            "rejected_edges": float(sum(c[1] for c in counts)),
        }
        return union_find.roots(), stats


def _merge_group(
    sorter: SpillSorter,
    key_columns: int,
    edges_path: Path,
    verification: Verification | None,
    budget: int,
) -> tuple[int, int]:
    """Merges one group's runs into star edges written to `edges_path` as int64 pairs; returns
    (candidate edges, edges rejected by verification). Runs in a worker process."""
    signatures = None
    if verification is not None and os.path.getsize(verification.signatures_path):
        signatures = np.memmap(verification.signatures_path, np.uint32, "r").reshape(
            -1, verification.num_perm
        )
    candidates = rejected = 0
    edges_path.parent.mkdir(parents=True, exist_ok=True)
    with open(edges_path, "wb") as edges_file:
        for first, other in star_edges(sorter.merged_blocks(budget), key_columns):
            candidates += len(first)
            if signatures is not None:
                similar = _similar(signatures, first, other, verification.threshold)
                rejected += int((~similar).sum())
                first, other = first[similar], other[similar]
            np.stack([first, other], axis=1).tofile(edges_file)
    sorter.cleanup()
    return candidates, rejected


def _similar(signatures: np.ndarray, first: np.ndarray, other: np.ndarray, threshold: float):
    """bool per edge: the estimated Jaccard (agreeing signature rows) reaches `threshold`."""
    keep = np.empty(len(first), bool)
    for start in range(0, len(first), _VERIFY_CHUNK):
        stop = start + _VERIFY_CHUNK
        agree = np.mean(signatures[first[start:stop]] == signatures[other[start:stop]], axis=1)
        keep[start:stop] = agree >= threshold
    return keep


def _union_edge_file(union_find: UnionFind, path: Path, chunk_edges: int) -> None:
    if not path.exists():
        return
    remaining = os.path.getsize(path) // 16
    with open(path, "rb") as edges_file:
        while remaining:
            # np.fromfile allocates `count` items up front, so never ask for more than is left.
            count = min(chunk_edges, remaining)
            edges = np.fromfile(edges_file, np.int64, 2 * count).reshape(-1, 2)
            union_find.union_edges(edges[:, 0], edges[:, 1])
            remaining -= count
