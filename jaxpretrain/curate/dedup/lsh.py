"""Fuzzy deduplication with MinHash LSH, out of core.

  add(doc) ─► signature ─► one (band, bucket, doc) record per band ─► sorted runs on disk
  finish() ─► k-way merge ─► runs of equal (band, bucket) ─► union(first doc, each other doc)
           ─► clusters keep their smallest index ─► DedupResult

No all-pairs comparison: a bucket of m documents yields m - 1 union edges (a star on its smallest
member), which connect the same documents as all m(m-1)/2 pairs would. Memory: the spill buffer
(`max_records_in_memory` records of 24 bytes), one read block per run while merging, and the
union-find array (8 bytes per document). Signatures go to a disk file only when
`verify_threshold` is set, and are read back by memory map; verification compares each bucket
member with the bucket's smallest member only, so it can only remove edges LSH proposed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from jaxpretrain.curate.dedup.clusters import DedupResult, IdLog, UnionFind, build_result
from jaxpretrain.curate.dedup.minhash import MinHashConfig, MinHasher, band_buckets
from jaxpretrain.curate.dedup.spill import SpillSorter, star_edges
from jaxpretrain.curate.document import Document

_BUCKET_RECORD = np.dtype([("band", "<u4"), ("bucket", "<u8"), ("doc", "<i8")])


class MinHashDeduplicator:
    """Streaming near-duplicate detection: `add` documents in a deterministic order, then `finish`.

    Args:
      config: shingling, permutations, banding and optional verification.
      work_dir: directory for spill runs, the id log and signatures (temporary if None).
      max_records_in_memory: bucket records held before a sorted run is written to disk.
    """

    def __init__(
        self,
        config: MinHashConfig | None = None,
        work_dir: str | Path | None = None,
        max_records_in_memory: int = 1 << 22,
    ):
        self.config = config = config or MinHashConfig()
        self._hasher = MinHasher(config)
        self._tempdir = tempfile.TemporaryDirectory() if work_dir is None else None
        self.work_dir = Path(self._tempdir.name if self._tempdir else work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._sorter = SpillSorter(
            _BUCKET_RECORD, self.work_dir / "lsh_runs", max_records_in_memory
        )
        self._ids = IdLog(self.work_dir / "lsh_ids.jsonl")
        self._signature_path = self.work_dir / "signatures.u32"
        self._signature_file = (
            open(self._signature_path, "wb")  # noqa: SIM115 (closed in finish())
            if config.verify_threshold is not None
            else None
        )
        self._pending: list[str] = []
        self._empty_documents = 0

    def add(self, doc: Document) -> None:
        self._ids.append(doc.id)
        self._pending.append(doc.text)
        if len(self._pending) >= self.config.batch_size:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        first_index = self._ids.count - len(self._pending)
        signatures = self._hasher.signatures(self._pending)
        self._pending = []
        if self._signature_file is not None:
            self._signature_file.write(signatures.tobytes())
        # Documents without words have the all-max signature; they would all share buckets, so
        # they are left out of LSH (exact dedup handles empty text).
        has_words = ~np.all(signatures == np.uint32(0xFFFFFFFF), axis=1)
        self._empty_documents += int((~has_words).sum())
        doc_indices = first_index + np.flatnonzero(has_words)
        keys = band_buckets(signatures[has_words], self.config.bands, self.config.rows)
        records = np.empty(keys.size, _BUCKET_RECORD)
        records["band"] = np.tile(np.arange(self.config.bands, dtype=np.uint32), len(doc_indices))
        records["bucket"] = keys.reshape(-1)
        records["doc"] = np.repeat(doc_indices, self.config.bands)
        self._sorter.add(records)

    def finish(self) -> DedupResult:
        """Merges bucket runs, clusters with union-find, and returns the dedup result."""
        self._flush()
        signatures = None
        if self._signature_file is not None:
            self._signature_file.close()
            if self._ids.count:
                signatures = np.memmap(
                    self._signature_path,
                    dtype=np.uint32,
                    mode="r",
                    shape=(self._ids.count, self.config.num_perm),
                )
        union_find = UnionFind(self._ids.count)
        num_runs = len(self._sorter.run_paths)
        candidate_edges = rejected_edges = merged_edges = 0
        for first, other in star_edges(self._sorter.merged(), key_length=2):
            candidate_edges += 1
            if union_find.find(first) == union_find.find(other):
                continue  # the same pair often collides in several bands
            if signatures is not None and (
                np.mean(signatures[first] == signatures[other]) < self.config.verify_threshold
            ):
                rejected_edges += 1
                continue
            merged_edges += union_find.union(first, other)
        stats = {
            "candidate_edges": float(candidate_edges),
            "rejected_edges": float(rejected_edges),
            "merging_edges": float(merged_edges),
            "bucket_records": float(self._sorter.num_records),
            "spilled_runs": float(num_runs),
            "documents_without_words": float(self._empty_documents),
        }
        result = build_result(union_find, self._ids, stats)
        del signatures
        self._sorter.cleanup()
        if self._tempdir is not None:
            self._tempdir.cleanup()
        return result


def minhash_dedup(
    docs: Iterable[Document],
    config: MinHashConfig | None = None,
    work_dir: str | Path | None = None,
    max_records_in_memory: int = 1 << 22,
) -> DedupResult:
    """Near-duplicate dedup of `docs` (see `MinHashDeduplicator`); FineWeb defaults if no config."""
    deduplicator = MinHashDeduplicator(config, work_dir, max_records_in_memory)
    for doc in docs:
        deduplicator.add(doc)
    return deduplicator.finish()
