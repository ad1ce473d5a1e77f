"""Exact deduplication: documents whose normalised text hashes equal are one cluster; the first
document in input order is kept.

The 128-bit hashes go through the clustering core (`clustering.KeyClustering`, external sort and
parallel merge), so memory stays bounded by `max_records_in_memory` (plus the cluster array)
however large the corpus is.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import unicodedata
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from jaxpretrain.curate.dedup.clustering import KeyClustering
from jaxpretrain.curate.dedup.clusters import DedupResult, IdTable, build_result
from jaxpretrain.curate.document import Document

_SPACES_RE = re.compile(r"\s+")
HASH_COLUMNS = 2  # a 128-bit hash as two uint64 key columns


def normalize_for_exact_match(text: str) -> str:
    """NFC, lowercase, whitespace runs collapsed to one space, stripped: formatting-only
    differences (trailing spaces, CRLF, capitalised headings) do not hide a duplicate."""
    return _SPACES_RE.sub(" ", unicodedata.normalize("NFC", text).lower()).strip()


def text_hash(text: str) -> tuple[int, int]:
    """128-bit BLAKE2b of the normalised text as (high, low) 64-bit integers."""
    return hash128(normalize_for_exact_match(text))


def hash128(text: str) -> tuple[int, int]:
    """128-bit BLAKE2b of `text` as (high, low) 64-bit integers."""
    value = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
    return int.from_bytes(value[:8], "little"), int.from_bytes(value[8:], "little")


def hash_clustering(
    directory: str | Path, max_records_in_memory: int, workers: int = 1
) -> KeyClustering:
    """The clustering of 128-bit hash keys (exact text, or source + id), split into one hash
    range per worker."""
    return KeyClustering(directory, HASH_COLUMNS, max(1, workers), max_records_in_memory)


class ExactDeduplicator:
    """Streaming exact dedup: `add` documents in a deterministic order, then `finish`.

    Args:
      work_dir: directory for spill runs and the id table (a temporary one if None).
      max_records_in_memory: hash records held before a sorted run is written to disk.
      workers: processes merging hash ranges in `finish`.
    """

    def __init__(
        self,
        work_dir: str | Path | None = None,
        max_records_in_memory: int = 1 << 22,
        workers: int = 1,
    ):
        self._tempdir = tempfile.TemporaryDirectory() if work_dir is None else None
        self.work_dir = Path(self._tempdir.name if self._tempdir else work_dir)
        self._ids = IdTable(self.work_dir, "exact_ids", keepalive=self._tempdir)
        self._clustering = hash_clustering(
            self.work_dir / "exact_runs", max_records_in_memory, workers
        )
        self._workers = workers
        self._pending_ids: list[str] = []
        self._pending_hashes: list[tuple[int, int]] = []
        self._batch = min(4096, max_records_in_memory)

    def add(self, doc: Document) -> None:
        self._pending_ids.append(doc.id)
        self._pending_hashes.append(text_hash(doc.text))
        if len(self._pending_ids) >= self._batch:
            self._flush()

    def _flush(self) -> None:
        if not self._pending_ids:
            return
        first = self._ids.count
        self._ids.extend(self._pending_ids)
        hashes = np.array(self._pending_hashes, np.uint64).reshape(-1, HASH_COLUMNS)
        self._clustering.add_by_hash(hashes, np.arange(first, self._ids.count))
        self._pending_ids, self._pending_hashes = [], []

    def finish(self) -> DedupResult:
        """Merges the runs and returns which documents duplicate which kept one."""
        self._flush()
        kept_index, stats = self._clustering.finish(self._ids.count, self._workers)
        return build_result(kept_index, self._ids, {"spilled_runs": stats["spilled_runs"]})


def exact_dedup(
    docs: Iterable[Document],
    work_dir: str | Path | None = None,
    max_records_in_memory: int = 1 << 22,
    workers: int = 1,
) -> DedupResult:
    """Exact dedup of `docs` (see `ExactDeduplicator`)."""
    deduplicator = ExactDeduplicator(work_dir, max_records_in_memory, workers)
    for doc in docs:
        deduplicator.add(doc)
    return deduplicator.finish()
