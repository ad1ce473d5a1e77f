"""Fuzzy deduplication with MinHash LSH, out of core.

  add(doc) ─► signature ─► one bucket key per band ─► one sorted-run group per band
  finish() ─► bands merged in parallel (clustering.KeyClustering) ─► runs of equal buckets
           ─► star edges (first doc, each other doc) [─► verification] ─► clusters keep their
              smallest index ─► DedupResult

No all-pairs comparison: a bucket of m documents yields m - 1 edges (a star on its smallest
member), which connect the same documents as all m(m-1)/2 pairs would. Signatures go to a disk
file only when `verify_threshold` is set, and are read back by memory map; verification compares
each bucket member with the bucket's smallest member only, so it can only remove edges LSH
proposed. The clusters are the connected components of the edges that pass.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from jaxpretrain.curate.dedup.clustering import KeyClustering, Verification
from jaxpretrain.curate.dedup.clusters import DedupResult, IdTable, build_result
from jaxpretrain.curate.dedup.minhash import MinHashConfig, MinHasher, band_buckets, has_words
from jaxpretrain.curate.document import Document


class BandClustering:
    """LSH bucket keys to clusters: the part shared by `MinHashDeduplicator` and the local
    executor's `run.dedup_units`. `add` documents in index order, then `finish` once.

    Args:
      directory: for band runs, edges and (when verifying) the signature file.
      config: banding and `verify_threshold`.
      max_records_in_memory: bucket records held across all bands before spilling.
    """

    def __init__(self, directory: str | Path, config: MinHashConfig, max_records_in_memory: int):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config = config
        self._clustering = KeyClustering(
            self.directory / "bands", 1, config.bands, max_records_in_memory
        )
        self._signature_path = self.directory / "signatures.u32"
        self._signature_file = (
            open(self._signature_path, "wb")  # noqa: SIM115 (closed in finish())
            if config.verify_threshold is not None
            else None
        )
        self._without_words = 0

    def add(
        self,
        first_document: int,
        bands: np.ndarray,
        has_words: np.ndarray,
        signatures: np.ndarray | None = None,
        excluded: np.ndarray | None = None,
    ) -> None:
        """Adds documents first_document, first_document + 1, ...: uint64[n, bands] bucket keys,
        bool[n] has_words, uint32[n, num_perm] signatures (needed when verifying), and bool[n]
        `excluded` (already removed by an earlier stage, e.g. exact dedup)."""
        if self._signature_file is not None:
            if signatures is None or signatures.shape != (len(bands), self.config.num_perm):
                raise ValueError(
                    f"verify_threshold={self.config.verify_threshold} needs uint32 signatures "
                    f"of shape [{len(bands)}, {self.config.num_perm}], got "
                    f"{None if signatures is None else signatures.shape}; keep signatures "
                    "when dedup.minhash.verify_threshold is set."
                )
            self._signature_file.write(np.ascontiguousarray(signatures, np.uint32).tobytes())
        # Documents without words have the all-max signature; they would all share buckets, so
        # they are left out of LSH (exact dedup handles empty text).
        candidates = np.ones(len(bands), bool) if excluded is None else ~excluded
        self._without_words += int((candidates & ~has_words).sum())
        usable = candidates & has_words
        documents = first_document + np.flatnonzero(usable)
        usable_bands = bands[usable]
        for band in range(self.config.bands):
            self._clustering.add(band, usable_bands[:, band], documents)

    def finish(self, num_documents: int, workers: int = 1) -> tuple[np.ndarray, dict[str, float]]:
        """(int64[N] kept index per document, stats) after merging every band."""
        verification = None
        if self._signature_file is not None:
            self._signature_file.close()
            verification = Verification(
                self._signature_path, self.config.num_perm, self.config.verify_threshold
            )
        bucket_records = self._clustering.num_records
        kept_index, stats = self._clustering.finish(num_documents, workers, verification)
        self._signature_path.unlink(missing_ok=True)
        stats["bucket_records"] = float(bucket_records)
        stats["documents_without_words"] = float(self._without_words)
        return kept_index, stats


class MinHashDeduplicator:
    """Streaming near-duplicate detection: `add` documents in a deterministic order, then `finish`.

    Args:
      config: shingling, permutations, banding and optional verification.
      work_dir: directory for spill runs, the id table and signatures (temporary if None).
      max_records_in_memory: bucket records held before a sorted run is written to disk.
      workers: processes merging bands in `finish`.
    """

    def __init__(
        self,
        config: MinHashConfig | None = None,
        work_dir: str | Path | None = None,
        max_records_in_memory: int = 1 << 22,
        workers: int = 1,
    ):
        self.config = config = config or MinHashConfig()
        self._hasher = MinHasher(config)
        self._tempdir = tempfile.TemporaryDirectory() if work_dir is None else None
        self.work_dir = Path(self._tempdir.name if self._tempdir else work_dir)
        self._ids = IdTable(self.work_dir, "lsh_ids", keepalive=self._tempdir)
        self._bands = BandClustering(self.work_dir / "lsh", config, max_records_in_memory)
        self._workers = workers
        self._pending_ids: list[str] = []
        self._pending_texts: list[str] = []

    def add(self, doc: Document) -> None:
        self._pending_ids.append(doc.id)
        self._pending_texts.append(doc.text)
        if len(self._pending_texts) >= self.config.batch_size:
            self._flush()

    def _flush(self) -> None:
        if not self._pending_texts:
            return
        first = self._ids.count
        self._ids.extend(self._pending_ids)
        signatures = self._hasher.signatures(self._pending_texts)
        bands = band_buckets(signatures, self.config.bands, self.config.rows)
        self._bands.add(first, bands, has_words(signatures), signatures)
        self._pending_ids, self._pending_texts = [], []

    def finish(self) -> DedupResult:
        """Merges bucket runs into clusters and returns the dedup result."""
        self._flush()
        kept_index, stats = self._bands.finish(self._ids.count, self._workers)
        return build_result(kept_index, self._ids, stats)


def minhash_dedup(
    docs: Iterable[Document],
    config: MinHashConfig | None = None,
    work_dir: str | Path | None = None,
    max_records_in_memory: int = 1 << 22,
    workers: int = 1,
) -> DedupResult:
    """Near-duplicate dedup of `docs` (see `MinHashDeduplicator`); FineWeb defaults if no config."""
    deduplicator = MinHashDeduplicator(config, work_dir, max_records_in_memory, workers)
    for doc in docs:
        deduplicator.add(doc)
    return deduplicator.finish()
