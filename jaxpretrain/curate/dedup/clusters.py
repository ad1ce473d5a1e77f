"""Union-find over document indices, the id log on disk, and the dedup result.

Documents are numbered 0, 1, 2, ... in the order they are added; that order must be deterministic
(e.g. sorted shards, rows in file order) because each cluster keeps its smallest index.
"""

from __future__ import annotations

import array
import collections
import dataclasses
import json
from pathlib import Path

import numpy as np


class UnionFind:
    """Disjoint sets over 0..n-1 whose representative is always the smallest member.

    Holds one int64 per document (8 bytes x N: 8 GB for a billion documents) — the one
    corpus-sized structure dedup keeps in memory; signatures and buckets stay on disk.
    `find` uses path halving; `union` links the larger root under the smaller one, which makes
    the kept document of a cluster independent of edge order.
    """

    def __init__(self, size: int = 0):
        self._parent = array.array("q", np.arange(size, dtype=np.int64).tobytes())

    def __len__(self) -> int:
        return len(self._parent)

    def grow(self, size: int) -> None:
        """Adds singleton sets so that indices below `size` exist."""
        if size > len(self._parent):
            self._parent.frombytes(np.arange(len(self._parent), size, dtype=np.int64).tobytes())

    def find(self, index: int) -> int:
        parent = self._parent
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    def union(self, a: int, b: int) -> bool:
        """Merges the sets of `a` and `b`; returns False if they were already one set."""
        root_a, root_b = self.find(a), self.find(b)
        if root_a == root_b:
            return False
        if root_a < root_b:
            self._parent[root_b] = root_a
        else:
            self._parent[root_a] = root_b
        return True

    def roots(self) -> np.ndarray:
        """int64[N]: the representative (smallest member) of every index, fully compressed."""
        parents = np.frombuffer(self._parent, dtype=np.int64).copy()
        while True:  # pointer jumping: halves every path per step, O(log depth) vectorised passes
            grandparents = parents[parents]
            if np.array_equal(grandparents, parents):
                return parents
            parents = grandparents


class IdLog:
    """Document ids written to disk in index order (one JSON string per line), so the corpus's
    ids never sit in memory; `lookup` streams the file once for the indices a result needs."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self.count = 0

    def append(self, doc_id: str) -> int:
        """Logs `doc_id`; returns its index."""
        self._file.write(json.dumps(doc_id) + "\n")
        self.count += 1
        return self.count - 1

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def lookup(self, indices: np.ndarray) -> dict[int, str]:
        """{index: id} for the given indices."""
        self.close()
        wanted = set(np.unique(indices).tolist())
        found: dict[int, str] = {}
        with open(self.path, encoding="utf-8") as lines:
            for index, line in enumerate(lines):
                if index in wanted:
                    found[index] = json.loads(line)
        return found


@dataclasses.dataclass(frozen=True)
class DedupResult:
    """Outcome of a dedup pass.

    Attributes:
      duplicate_of: removed document id -> id of the kept document of its cluster.
      num_documents: documents seen.
      num_clusters: clusters with more than one document.
      cluster_sizes: {cluster size: number of clusters of that size} for sizes >= 2.
      stats: method-specific counters (candidate pairs, spilled runs, ...).
    """

    duplicate_of: dict[str, str]
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


def build_result(union_find: UnionFind, ids: IdLog, stats: dict[str, float]) -> DedupResult:
    """Turns clusters into a `DedupResult` (each cluster keeps its smallest index)."""
    roots = union_find.roots()
    removed = np.flatnonzero(roots != np.arange(len(roots)))
    kept_for_removed = roots[removed]
    names = ids.lookup(np.concatenate([removed, kept_for_removed]))
    duplicate_of = {
        names[int(r)]: names[int(k)] for r, k in zip(removed, kept_for_removed, strict=True)
    }
    members_per_root = collections.Counter(kept_for_removed.tolist())
    cluster_sizes = collections.Counter(count + 1 for count in members_per_root.values())
    return DedupResult(
        duplicate_of=duplicate_of,
        num_documents=len(roots),
        num_clusters=len(members_per_root),
        cluster_sizes=dict(sorted(cluster_sizes.items())),
        stats=stats,
    )
