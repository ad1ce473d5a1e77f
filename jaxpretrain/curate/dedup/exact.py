"""Exact deduplication: documents whose normalised text hashes equal are one cluster; the first
document in input order is kept.

The 128-bit hashes go through the same external sort as MinHash buckets, so memory stays bounded
by `max_records_in_memory` (plus the union-find array) however large the corpus is.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import unicodedata
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from jaxpretrain.curate.dedup.clusters import DedupResult, IdLog, UnionFind, build_result
from jaxpretrain.curate.dedup.spill import SpillSorter, star_edges
from jaxpretrain.curate.document import Document

_HASH_RECORD = np.dtype([("hash_high", "<u8"), ("hash_low", "<u8"), ("doc", "<i8")])
_SPACES_RE = re.compile(r"\s+")


def normalize_for_exact_match(text: str) -> str:
    """NFC, lowercase, whitespace runs collapsed to one space, stripped: formatting-only
    differences (trailing spaces, CRLF, capitalised headings) do not hide a duplicate."""
    return _SPACES_RE.sub(" ", unicodedata.normalize("NFC", text).lower()).strip()


def text_hash(text: str) -> tuple[int, int]:
    """128-bit BLAKE2b of the normalised text as (high, low) 64-bit integers."""
    digest = hashlib.blake2b(normalize_for_exact_match(text).encode("utf-8"), digest_size=16)
    value = digest.digest()
    return int.from_bytes(value[:8], "little"), int.from_bytes(value[8:], "little")


class ExactDeduplicator:
    """Streaming exact dedup: `add` documents in a deterministic order, then `finish`.

    Args:
      work_dir: directory for spill runs and the id log (a temporary one if None).
      max_records_in_memory: hash records held before a sorted run is written to disk.
    """

    def __init__(self, work_dir: str | Path | None = None, max_records_in_memory: int = 1 << 22):
        self._tempdir = tempfile.TemporaryDirectory() if work_dir is None else None
        self.work_dir = Path(self._tempdir.name if self._tempdir else work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._sorter = SpillSorter(
            _HASH_RECORD, self.work_dir / "exact_runs", max_records_in_memory
        )
        self._ids = IdLog(self.work_dir / "exact_ids.jsonl")
        self._pending: list[tuple[int, int, int]] = []
        self._batch = min(4096, max_records_in_memory)

    def add(self, doc: Document) -> None:
        index = self._ids.append(doc.id)
        self._pending.append((*text_hash(doc.text), index))
        if len(self._pending) >= self._batch:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._sorter.add(np.array(self._pending, dtype=_HASH_RECORD))
            self._pending = []

    def finish(self) -> DedupResult:
        """Merges the runs and returns which documents duplicate which kept one."""
        self._flush()
        union_find = UnionFind(self._ids.count)
        num_runs = len(self._sorter.run_paths)
        # Records sort by doc within a hash, so each hash run links to its earliest document.
        for kept, duplicate in star_edges(self._sorter.merged(), key_length=2):
            union_find.union(kept, duplicate)
        result = build_result(union_find, self._ids, {"spilled_runs": float(num_runs)})
        self._sorter.cleanup()
        if self._tempdir is not None:
            self._tempdir.cleanup()
        return result


def exact_dedup(
    docs: Iterable[Document],
    work_dir: str | Path | None = None,
    max_records_in_memory: int = 1 << 22,
) -> DedupResult:
    """Exact dedup of `docs` (see `ExactDeduplicator`)."""
    deduplicator = ExactDeduplicator(work_dir, max_records_in_memory)
    for doc in docs:
        deduplicator.add(doc)
    return deduplicator.finish()
