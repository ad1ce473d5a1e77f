"""Dedup of the local executor's finished work units: exact, then MinHash LSH on what exact kept,
and a check for duplicate input ids — with memory bounded by `dedup.max_records_in_memory`.

    dedup_units([(source, unit_dir), ...], dedup_dir, cfg, workers, progress) -> summary

Reads from every unit directory (in the given order, which is document index order):
    ids.jsonl        one JSON string per line, the document ids (docs.jsonl is never parsed)
    keys.json        {"documents": N, "bands": B, "signature_columns": P}, written last
    exact.u64        uint64[N, 2] exact text hashes       ─┐ raw little-endian rows, appended
    bands.u64        uint64[N, B] LSH bucket keys           │ while the unit is written
    has_words.bool   bool[N]                                │ (`UnitKeyWriter`) and read back
    signatures.u32   uint32[N, P] (P = num_perm when        │ by memory map in slices of
                     verify_threshold is set, else 0)      ─┘ max_records_in_memory rows
Writes in `dedup_dir`:
    removed_mask.npy   bool[total documents], True for documents dedup removed
    removed.jsonl      {id, source, stage, reason, duplicate_of} per removed document, streamed
    summary.json       {'exact': report.dedup_summary | None, 'minhash': ... | None,
                        'duplicate_ids': {'count', 'examples'}}
    DONE               written last; a directory with DONE is reused as is
Memory: ~18 bytes per document (measured: a bool removed mask, the int64 union-find array of
the stage being clustered, an int64 per removed document) plus buffers bounded by
max_records_in_memory, however large one unit is; ids stay in an on-disk table.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
from collections.abc import Iterator, Sequence
from typing import Any

import ml_collections
import numpy as np
import tqdm

from jaxpretrain.curate import config as config_lib
from jaxpretrain.curate import report as report_lib
from jaxpretrain.curate.dedup.clustering import KeyClustering
from jaxpretrain.curate.dedup.clusters import IdTable, build_result, removed_indices
from jaxpretrain.curate.dedup.exact import hash128, hash_clustering
from jaxpretrain.curate.dedup.lsh import BandClustering

DONE = "DONE"
# Separates source and id in the duplicate-id hash (ids are unique per source, not across).
_ID_SEPARATOR = "\x1f"
_BATCH = 1 << 13  # ids read, hashed or written per step (a bounded Python list)
DUPLICATE_ID_EXAMPLES = 5
_OUTPUTS = ("removed_mask.npy", "removed.jsonl", "summary.json", DONE)


def dedup_units(
    units: Sequence[tuple[str, pathlib.Path]],
    dedup_dir: pathlib.Path,
    cfg: ml_collections.ConfigDict,
    workers: int,
    progress: bool,
) -> dict[str, Any]:
    """Deduplicates the documents of `units` ((source name, unit dir), in order) into
    `dedup_dir`; returns the summary (also written to summary.json). Each cluster keeps its
    smallest index, i.e. its first document in unit order."""
    dedup_dir = pathlib.Path(dedup_dir)
    if (dedup_dir / DONE).exists():
        return json.loads((dedup_dir / "summary.json").read_text())
    shutil.rmtree(dedup_dir, ignore_errors=True)
    dedup_dir.mkdir(parents=True)
    workers = max(1, int(workers))
    max_records = int(cfg.dedup.max_records_in_memory)
    ids = IdTable(dedup_dir, "ids")
    # Both clusterings buffer during the first pass: they share the budget.
    first_pass_records = max(1, max_records // 2) if cfg.dedup.exact else max_records
    exact = (
        hash_clustering(dedup_dir / "exact", first_pass_records, workers)
        if cfg.dedup.exact
        else None
    )
    id_keys = hash_clustering(dedup_dir / "id_keys", first_pass_records, workers)
    unit_starts = _add_ids_and_exact_keys(units, ids, exact, id_keys, first_pass_records, progress)
    id_keys.spill()  # its buffer would otherwise sit in memory through both stages
    total = ids.count
    sources = _SourceOfIndex([source for source, _ in units], unit_starts)
    removed = np.zeros(total, dtype=bool)
    summary: dict[str, Any] = {"exact": None, "minhash": None}
    with open(dedup_dir / "removed.jsonl", "w", encoding="utf-8") as removals:
        if exact is not None:
            kept_index, stats = exact.finish(total, workers)
            summary["exact"] = _record_stage(
                removals, kept_index, ids, sources, removed, "exact_dedup", "exact duplicate",
                {"spilled_runs": stats["spilled_runs"]},
            )  # fmt: skip
            del kept_index  # 8 bytes per document that MinHash's own union-find needs
        if cfg.dedup.minhash.enabled:
            documents_in = int(total - removed.sum())
            kept_index, stats = _minhash(
                units, unit_starts, removed, dedup_dir, cfg, workers, progress
            )
            summary["minhash"] = _record_stage(
                removals, kept_index, ids, sources, removed, "minhash_dedup", "near duplicate",
                stats,
            )  # fmt: skip
            summary["minhash"]["documents_in"] = documents_in
            del kept_index
    id_index, _ = id_keys.finish(total, workers)
    summary["duplicate_ids"] = _duplicate_ids(id_index, ids, sources)
    del id_index
    np.save(dedup_dir / "removed_mask.npy", removed)
    report_lib.write_json(dedup_dir / "summary.json", summary)
    _remove_scratch(dedup_dir)
    (dedup_dir / DONE).write_text("")
    return summary


def _add_ids_and_exact_keys(
    units: Sequence[tuple[str, pathlib.Path]],
    ids: IdTable,
    exact: KeyClustering | None,
    id_keys: KeyClustering,
    slice_rows: int,
    progress: bool,
) -> list[int]:
    """First pass: ids into the table and (source, id) hashes into `id_keys`, exact text hashes
    into `exact` (read `slice_rows` at a time); returns the first document index of every
    unit."""
    unit_starts = []
    for source, unit_dir in tqdm.tqdm(units, desc="dedup: ids", unit="shard", disable=not progress):
        first = ids.count
        unit_starts.append(first)
        for batch in _read_id_batches(unit_dir / "ids.jsonl"):
            documents = np.arange(ids.count, ids.count + len(batch))
            ids.extend(batch)
            keys = [hash128(f"{source}{_ID_SEPARATOR}{doc_id}") for doc_id in batch]
            id_keys.add_by_hash(np.array(keys, np.uint64).reshape(-1, 2), documents)
        if exact is not None:
            hashes = read_unit_keys(unit_dir, ids.count - first).exact
            for start, stop in _slices(len(hashes), slice_rows):
                exact.add_by_hash(
                    np.array(hashes[start:stop]), np.arange(first + start, first + stop)
                )
    ids.close()
    return unit_starts


def _slices(count: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of consecutive slices of at most `size` rows covering `count` rows."""
    size = max(1, size)
    for start in range(0, count, size):
        yield start, min(start + size, count)


def _remove_scratch(dedup_dir: pathlib.Path) -> None:
    """Deletes everything but the outputs (the id table is as large as the ids themselves)."""
    for path in dedup_dir.iterdir():
        if path.name not in _OUTPUTS:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def _read_id_batches(path: pathlib.Path) -> Iterator[list[str]]:
    batch: list[str] = []
    with open(path, encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, 1):
            doc_id = json.loads(line)
            if not isinstance(doc_id, str):
                raise ValueError(
                    f"{path}:{line_number}: expected a JSON string (a document id), got "
                    f"{line.strip()[:80]!r}; rerun curation to rewrite the unit."
                )
            batch.append(doc_id)
            if len(batch) == _BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


# A unit's key files: name -> (dtype, name of the keys.json field giving its columns or None).
_KEY_FILES = {
    "exact": ("exact.u64", np.dtype("<u8"), None),
    "bands": ("bands.u64", np.dtype("<u8"), "bands"),
    "has_words": ("has_words.bool", np.dtype(bool), None),
    "signatures": ("signatures.u32", np.dtype("<u4"), "signature_columns"),
}
_KEYS_RECORD = "keys.json"
KEY_FILE_NAMES = (*(name for name, _, _ in _KEY_FILES.values()), _KEYS_RECORD)


class UnitKeyWriter:
    """Appends a unit's dedup keys to one raw file per column as documents are processed, so a
    unit never holds more than one batch of keys in memory; `close` writes keys.json (the row
    count) last."""

    def __init__(self, unit_dir: pathlib.Path, bands: int, signature_columns: int):
        self._unit_dir = pathlib.Path(unit_dir)
        self._shape = {"bands": bands, "signature_columns": signature_columns}
        self._files = {
            column: open(self._unit_dir / name, "wb")  # noqa: SIM115 (closed in close())
            for column, (name, _, _) in _KEY_FILES.items()
        }
        self.count = 0

    def append(
        self, exact: np.ndarray, bands: np.ndarray, has_words: np.ndarray, signatures: np.ndarray
    ) -> None:
        """Adds rows: uint64[n, 2], uint64[n, bands], bool[n], uint32[n, signature_columns]."""
        columns = {"exact": exact, "bands": bands, "has_words": has_words, "signatures": signatures}
        for column, values in columns.items():
            _, dtype, width_field = _KEY_FILES[column]
            width = 2 if column == "exact" else self._shape.get(width_field or "", 1)
            if values.size != len(has_words) * width:
                raise ValueError(
                    f"{column}: shape {values.shape}, expected [{len(has_words)}, {width}]"
                )
            np.ascontiguousarray(values, dtype).tofile(self._files[column])
        self.count += len(has_words)

    def close(self) -> None:
        for file in self._files.values():
            file.close()
        record = {"documents": self.count, **self._shape}
        (self._unit_dir / _KEYS_RECORD).write_text(json.dumps(record))


@dataclasses.dataclass(frozen=True)
class UnitKeys:
    """A unit's key columns as read-only memory maps (nothing is read until sliced)."""

    exact: np.ndarray
    bands: np.ndarray
    has_words: np.ndarray
    signatures: np.ndarray


def read_unit_keys(unit_dir: pathlib.Path, count: int) -> UnitKeys:
    """Memory maps the unit's key files, checked against `count` (its ids.jsonl lines)."""
    record = json.loads((unit_dir / _KEYS_RECORD).read_text())
    if record["documents"] != count:
        raise ValueError(
            f"{unit_dir}: {_KEYS_RECORD} has {record['documents']} documents but ids.jsonl has "
            f"{count}; the unit is inconsistent, delete it and rerun curation."
        )
    columns = {}
    for column, (name, dtype, width_field) in _KEY_FILES.items():
        width = 2 if column == "exact" else record[width_field] if width_field else None
        shape = (count,) if width is None else (count, width)
        path = unit_dir / name
        if path.stat().st_size != dtype.itemsize * int(np.prod(shape)):
            raise ValueError(
                f"{path}: {path.stat().st_size} bytes, expected {shape} {dtype}; the unit is "
                "inconsistent, delete it and rerun curation."
            )
        # mmap cannot map an empty file.
        columns[column] = (
            np.memmap(path, dtype, "r", shape=shape)
            if path.stat().st_size
            else np.empty(shape, dtype)
        )
    return UnitKeys(**columns)


def _minhash(
    units: Sequence[tuple[str, pathlib.Path]],
    unit_starts: list[int],
    removed: np.ndarray,
    dedup_dir: pathlib.Path,
    cfg: ml_collections.ConfigDict,
    workers: int,
    progress: bool,
) -> tuple[np.ndarray, dict[str, float]]:
    """LSH over the documents exact dedup kept; (kept index, stats)."""
    minhash_config = config_lib.minhash_config(cfg)
    max_records = int(cfg.dedup.max_records_in_memory)
    bands = BandClustering(dedup_dir / "minhash", minhash_config, max_records)
    verify = minhash_config.verify_threshold is not None
    # A slice adds `bands` records per document: keep a slice within the record budget.
    slice_rows = max(1, max_records // minhash_config.bands)
    bar = tqdm.tqdm(units, desc="dedup: bands", unit="shard", disable=not progress)
    stops = [*unit_starts[1:], len(removed)] if units else []
    for (_, unit_dir), first, stop in zip(bar, unit_starts, stops, strict=True):
        keys = read_unit_keys(unit_dir, stop - first)
        for start, end in _slices(stop - first, slice_rows):
            bands.add(
                first + start,
                np.array(keys.bands[start:end]),
                np.array(keys.has_words[start:end]),
                np.array(keys.signatures[start:end]) if verify else None,
                excluded=removed[first + start : first + end],
            )
    return bands.finish(len(removed), workers)


class _SourceOfIndex:
    """Source name of a document index, from the first index of every unit."""

    def __init__(self, names: list[str], unit_starts: list[int]):
        self._names = np.array(names, dtype=object)
        self._starts = np.array(unit_starts, np.int64)

    def __call__(self, indices: np.ndarray) -> np.ndarray:
        return self._names[np.searchsorted(self._starts, indices, side="right") - 1]


def _record_stage(
    out: Any,
    kept_index: np.ndarray,
    ids: IdTable,
    sources: _SourceOfIndex,
    removed: np.ndarray,
    stage: str,
    reason: str,
    stats: dict[str, float],
) -> dict:
    """Streams the stage's removals to `out`, marks them in `removed`; returns its summary."""
    removed_now = removed_indices(kept_index)  # int64 per removed document, not per document
    summary = report_lib.dedup_summary(build_result(kept_index, ids, stats, removed_now))
    _write_removals(out, removed_now, kept_index, ids, sources, stage, reason)
    removed[removed_now] = True
    return summary


def _write_removals(
    out: Any,
    removed_now: np.ndarray,
    kept_index: np.ndarray,
    ids: IdTable,
    sources: _SourceOfIndex,
    stage: str,
    reason: str,
) -> None:
    """Streams one removal record per index of `removed_now`."""
    # One record per removed document: built from its JSON-escaped strings (3x faster than
    # json.dumps of a dict, which matters at a billion records).
    fixed = f'"stage": {_json(stage)}, "reason": {_json(reason)}'
    for start in range(0, len(removed_now), _BATCH):
        chunk = removed_now[start : start + _BATCH]
        removed_ids, kept_ids = ids.lookup(chunk), ids.lookup(kept_index[chunk])
        out.writelines(
            f'{{"id": {_json(removed_id)}, "source": {_json(source)}, {fixed}, '
            f'"duplicate_of": {_json(kept_id)}}}\n'
            for removed_id, kept_id, source in zip(
                removed_ids, kept_ids, sources(chunk), strict=True
            )
        )


def _json(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _duplicate_ids(id_index: np.ndarray, ids: IdTable, sources: _SourceOfIndex) -> dict:
    """{'count': documents whose (source, id) an earlier document already had, 'examples'}."""
    repeated = removed_indices(id_index)
    shown = repeated[:DUPLICATE_ID_EXAMPLES]
    examples = [
        {"source": str(source), "id": ids[index]}
        for index, source in zip(shown.tolist(), sources(shown), strict=True)
    ]
    return {"count": len(repeated), "examples": examples}
