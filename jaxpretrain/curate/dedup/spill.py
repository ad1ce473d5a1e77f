"""External sort of fixed-size records: sorted runs spill to disk, a k-way merge reads them back.

Memory holds at most `max_records_in_memory` records while adding, and one read block per run
while merging; the corpus-sized record set only ever exists on disk. This is the same shape as
the bucket files of large curation pipelines (datatrove's MinHash stages, Dolma's dedupe).
"""

from __future__ import annotations

import contextlib
import heapq
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

# Upper bound on one merge read block, in records (~24 bytes each for LSH records).
_MAX_READ_BLOCK = 1 << 16


class SpillSorter:
    """Accumulates records of a structured `dtype`, sorted by all its fields in order.

    `add` buffers records and writes a sorted run file to `directory` whenever the buffer reaches
    `max_records_in_memory`; `merged` yields every record as a tuple in global sorted order.
    """

    def __init__(self, dtype: np.dtype, directory: str | Path, max_records_in_memory: int):
        if max_records_in_memory < 1:
            raise ValueError(
                f"max_records_in_memory={max_records_in_memory} must be >= 1; it bounds how many "
                "records are held before spilling to disk."
            )
        self.dtype = np.dtype(dtype)
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_records_in_memory = max_records_in_memory
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self.run_paths: list[Path] = []
        self.num_records = 0

    def add(self, records: np.ndarray) -> None:
        """Buffers `records` (an array of `dtype`), spilling full buffers as sorted runs."""
        start = 0
        while start < len(records):
            room = self.max_records_in_memory - self._buffered
            piece = records[start : start + room]
            self._buffer.append(piece)
            self._buffered += len(piece)
            self.num_records += len(piece)
            start += len(piece)
            if self._buffered >= self.max_records_in_memory:
                self._spill()

    def _sorted_buffer(self) -> np.ndarray:
        records = np.concatenate(self._buffer) if self._buffer else np.empty(0, self.dtype)
        self._buffer, self._buffered = [], 0
        records.sort(order=list(self.dtype.names))
        return records

    def _spill(self) -> None:
        records = self._sorted_buffer()
        path = self.directory / f"run_{len(self.run_paths):06d}.bin"
        records.tofile(path)
        self.run_paths.append(path)

    def _read_run(self, path: Path, block: int) -> Iterator[tuple]:
        with open(path, "rb") as run:
            while True:
                records = np.fromfile(run, dtype=self.dtype, count=block)
                if not len(records):
                    return
                yield from records.tolist()

    def merged(self) -> Iterator[tuple]:
        """All added records as tuples, in sorted order. Consumes the sorter."""
        if not self.run_paths:
            yield from self._sorted_buffer().tolist()
            return
        if self._buffered:
            self._spill()
        # Split the memory budget across runs so the merge stays within the same bound.
        block = max(1, min(_MAX_READ_BLOCK, self.max_records_in_memory // len(self.run_paths)))
        yield from heapq.merge(*(self._read_run(path, block) for path in self.run_paths))

    def cleanup(self) -> None:
        """Deletes the run files."""
        for path in self.run_paths:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        self.run_paths = []


def star_edges(records: Iterator[tuple], key_length: int) -> Iterator[tuple[int, int]]:
    """For records sorted by (key fields..., doc): one edge (first doc, doc) for every other
    record of a run of equal keys. A run of m records gives m - 1 edges, not m(m-1)/2 pairs, and
    is streamed, so a huge bucket never sits in memory."""
    current_key = None
    first_doc = -1
    for record in records:
        key = record[:key_length]
        if key != current_key:
            current_key, first_doc = key, record[-1]
        else:
            yield first_doc, record[-1]
