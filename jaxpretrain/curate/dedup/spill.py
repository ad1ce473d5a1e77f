"""External sort of uint64 records: sorted runs spill to disk, a vectorised block merge reads
them back, and runs of equal keys become star edges.

A record is one row of a uint64[n, width] array: the key columns first, the document index last.
Documents are added in increasing index order, so a stable sort on the key columns alone leaves
equal keys in document order: every run of equal keys starts at its smallest document, and every
run file holds smaller documents than the files written after it.

Memory holds at most `max_records_in_memory` records while adding, and about as many while merging
(one read block per run plus the block being emitted); the corpus-sized record set only ever
exists on disk. This is the shape of the bucket files of large curation pipelines (datatrove's
MinHash stages, Dolma's dedupe), merged in numpy blocks instead of record by record.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np


class SpillSorter:
    """Sorts uint64[n, width] records by their first `width - 1` columns, out of core.

    `add` buffers records and writes a sorted run file to `directory` whenever the buffer reaches
    `max_records_in_memory`; `merged_blocks` yields every record once, in global (key, document)
    order, as sorted uint64[m, width] blocks. The sorter pickles to its run paths once `spill_all`
    has emptied the buffer, so another process can merge it.
    """

    def __init__(self, width: int, directory: str | Path, max_records_in_memory: int):
        if max_records_in_memory < 1:
            raise ValueError(
                f"max_records_in_memory={max_records_in_memory} must be >= 1; it bounds how many "
                "records are held before spilling to disk."
            )
        self.width = width
        self.directory = Path(directory)
        self.max_records_in_memory = max_records_in_memory
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._last_document = -1
        self.run_paths: list[Path] = []
        self.num_records = 0

    def add(self, records: np.ndarray) -> None:
        """Buffers uint64[n, width] `records` whose document column never decreases across calls,
        spilling full buffers as sorted runs."""
        if records.ndim != 2 or records.shape[1] != self.width:
            raise ValueError(f"records of shape {records.shape}; expected [n, {self.width}].")
        if not len(records):
            return
        documents = records[:, -1]
        if documents[0] < self._last_document or np.any(documents[1:] < documents[:-1]):
            raise ValueError(
                "SpillSorter.add got document indices out of order; add documents in increasing "
                "index order (the kept document of a cluster is its smallest index)."
            )
        self._last_document = int(documents[-1])
        start = 0
        while start < len(records):
            piece = records[start : start + self.max_records_in_memory - self._buffered]
            self._buffer.append(piece)
            self._buffered += len(piece)
            self.num_records += len(piece)
            start += len(piece)
            if self._buffered >= self.max_records_in_memory:
                self._spill()

    def spill_all(self) -> None:
        """Writes any buffered records as a run, so the sorter holds nothing but paths."""
        if self._buffered:
            self._spill()

    def _sorted_buffer(self) -> np.ndarray:
        records = (
            np.concatenate(self._buffer) if self._buffer else np.empty((0, self.width), np.uint64)
        )
        self._buffer, self._buffered = [], 0
        return sort_by_key(records)

    def _spill(self) -> None:
        records = self._sorted_buffer()
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"run_{len(self.run_paths):06d}.bin"
        records.tofile(path)
        self.run_paths.append(path)

    def merged_blocks(self, budget: int | None = None) -> Iterator[np.ndarray]:
        """All added records in sorted order, as uint64[m, width] blocks. Consumes the sorter.

        `budget` bounds the records held while merging (`max_records_in_memory` if None). When
        the runs are too many for read blocks of `MIN_READ_BLOCK` records within the budget,
        groups of consecutive runs are first merged into longer ones (which keeps each file's
        documents below the next file's), in as many passes as it takes.
        """
        if not self.run_paths:
            records = self._sorted_buffer()
            if len(records):
                yield records
            return
        self.spill_all()
        budget = budget or self.max_records_in_memory
        fan_in = max(2, budget // (2 * MIN_READ_BLOCK))
        merge_pass = 0
        while len(self.run_paths) > fan_in:
            merge_pass += 1
            groups = [self.run_paths[i : i + fan_in] for i in range(0, len(self.run_paths), fan_in)]
            merged_paths = []
            for index, group in enumerate(groups):
                path = self.directory / f"pass{merge_pass}_run_{index:06d}.bin"
                with open(path, "wb") as out:
                    for block in _merge_runs(group, self.width, budget):
                        block.tofile(out)
                for run in group:
                    os.remove(run)
                merged_paths.append(path)
            self.run_paths = merged_paths
        yield from _merge_runs(self.run_paths, self.width, budget)

    def cleanup(self) -> None:
        """Deletes the run files."""
        for path in self.run_paths:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        self.run_paths = []


# Each run merged in one step keeps a read block of budget / (2 x runs) records; blocks of a few
# records would make the merge's per-step work (a few numpy calls per run) dominate, so runs are
# merged in passes until blocks of at least this many records fit.
MIN_READ_BLOCK = 1024


def _merge_runs(run_paths: list[Path], width: int, budget: int) -> Iterator[np.ndarray]:
    """The records of sorted run files (each holding smaller documents than the next), merged
    into sorted blocks, holding about `budget` records.

    Each step takes, from every run's current read block, the records up to the smallest last
    record among runs that still have unread data; nothing later can sort before them.
    """
    # Half the budget for read blocks, half for the block being sorted and emitted.
    block = max(1, budget // (2 * len(run_paths)))
    runs = [_RunReader(path, width, block) for path in run_paths]
    pending = [run.read() for run in runs]
    while True:
        unfinished = [i for i, run in enumerate(runs) if not run.exhausted]
        bound = min((tuple(pending[i][-1]) for i in unfinished), default=None)
        pieces = []
        for i, run in enumerate(runs):
            take = len(pending[i]) if bound is None else _count_up_to(pending[i], bound)
            pieces.append(pending[i][:take])
            pending[i] = pending[i][take:]
            if not len(pending[i]) and not run.exhausted:
                pending[i] = run.read()
        # Run i holds smaller documents than run i + 1, so a stable key sort of the pieces
        # in run order is (key, document) order.
        merged = sort_by_key(np.concatenate(pieces))
        if len(merged):
            yield merged
        if bound is None:
            return


class _RunReader:
    """Reads one run file in blocks of `block` records."""

    def __init__(self, path: Path, width: int, block: int):
        self.path, self.width, self.block = path, width, block
        self._remaining = os.path.getsize(path) // (8 * width)
        self._offset = 0

    @property
    def exhausted(self) -> bool:
        return self._remaining == 0

    def read(self) -> np.ndarray:
        count = min(self.block, self._remaining)
        records = np.fromfile(
            self.path, np.uint64, count * self.width, offset=self._offset
        ).reshape(count, self.width)
        self._offset += records.nbytes
        self._remaining -= count
        return records


def sort_by_key(records: np.ndarray) -> np.ndarray:
    """`records` stably sorted by their key columns (all but the last), lexicographically."""
    if len(records) < 2:
        return records
    if records.shape[1] == 2:
        order = np.argsort(records[:, 0], kind="stable")
    else:  # lexsort sorts by its last key first
        order = np.lexsort(records[:, -2::-1].T)
    return records[order]


def _count_up_to(records: np.ndarray, bound: tuple[int, ...]) -> int:
    """How many rows of lexicographically sorted `records` are <= `bound` (a full row)."""
    low, high = 0, len(records)
    for column, value in enumerate(bound):
        values = records[low:high, column]
        left = low + int(np.searchsorted(values, value, side="left"))
        right = low + int(np.searchsorted(values, value, side="right"))
        if left == right:
            return left
        low, high = left, right  # rows tied on this column are decided by the next one
    return high


def star_edges(blocks: Iterator[np.ndarray], key_columns: int) -> Iterator[tuple[np.ndarray, ...]]:
    """For sorted blocks of (key..., document) records: one edge (first document, document) for
    every other record of a run of equal keys, as int64 arrays (first, other) per block.

    A run of m records gives m - 1 edges, not m(m-1)/2 pairs, and runs may span blocks, so a huge
    bucket never sits in memory whole.
    """
    carry_key: np.ndarray | None = None
    carry_first = -1
    for block in blocks:
        keys = block[:, :key_columns]
        documents = block[:, -1].astype(np.int64)
        starts = np.ones(len(block), bool)
        starts[1:] = np.any(keys[1:] != keys[:-1], axis=1)
        if carry_key is not None and np.array_equal(keys[0], carry_key):
            starts[0] = False  # this block opens with the run the previous one ended with
        run_of_record = np.cumsum(starts) - 1
        run_firsts = np.append(documents[starts], carry_first)
        first = run_firsts[run_of_record]  # -1 (the carried run) picks the appended carry_first
        others = ~starts
        if others.any():
            yield first[others], documents[others]
        carry_key, carry_first = keys[-1].copy(), int(first[-1])
