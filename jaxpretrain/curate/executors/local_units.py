"""One work unit's directory: written by `process_unit` (read, clean, filter one input shard),
read back by dedup (`dedup/run.py`: ids.jsonl and the key files) and by finalize
(`UnitDocuments`).

    docs.jsonl      documents kept by clean + filters (id, text, source, kind, order_key,
                    metadata)
    ids.jsonl       their ids, one JSON string per line (dedup reads these, not docs.jsonl)
    exact.u64, bands.u64, has_words.bool, signatures.u32
                    dedup keys, one raw little-endian file per column (uint64[N, 2] text hash,
                    uint64[N, bands] LSH buckets, bool[N], uint32[N, num_perm] or [N, 0] unless
                    dedup.minhash.verify_threshold), appended batch by batch as the unit is read
                    so that memory does not grow with the input file (`dedup.run.UnitKeyWriter`)
    keys.json       {"documents": N, "bands", "signature_columns"}: the key files' shape
    removed.jsonl   removals at stages 'clean' and 'filter'
    scores.jsonl    filter scores of every document that reached the filters
    stats.json      the unit's counters (report.new_unit_stats)
    unit.json       the document limit the unit was read with (-1: none)
    DONE            written last; holds a token that changes each time the unit is redone

A unit is written into `<dir>.tmp-<pid>` and renamed into place, so it is absent or complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np

from jaxpretrain.curate import config as config_lib
from jaxpretrain.curate import report as report_lib
from jaxpretrain.curate import sources, stages
from jaxpretrain.curate.dedup import run as dedup_run
from jaxpretrain.curate.dedup.exact import text_hash
from jaxpretrain.curate.dedup.minhash import has_words
from jaxpretrain.curate.document import Document

DONE = "DONE"
_UNIT_RECORD = "unit.json"
# Documents whose MinHash signatures are computed together (bounds a unit's memory).
_SIGNATURE_BATCH = 1_024


def is_done(unit_dir: pathlib.Path) -> bool:
    return (unit_dir / DONE).exists()


def made_with_limit(unit_dir: pathlib.Path, limit: int) -> bool:
    """Whether the finished unit read its input with this document limit."""
    return json.loads((unit_dir / _UNIT_RECORD).read_text())["limit"] == limit


def count_documents(unit_dir: pathlib.Path) -> int:
    """Documents the finished unit kept (lines of ids.jsonl)."""
    with open(unit_dir / "ids.jsonl", "rb") as lines:
        return sum(1 for _ in lines)


def process_unit(
    cfg: ml_collections.ConfigDict,
    curator: stages.Curator,
    unit: stages.WorkUnit,
    unit_dir: pathlib.Path,
    limit: int,
) -> dict[str, Any]:
    """Reads, cleans and filters one unit into a temporary directory, then renames it."""
    temporary = unit_dir.with_name(f"{unit_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    stats = report_lib.new_unit_stats(unit.spec.name, unit.shard.index, str(unit.shard.location))
    source_report = sources.SourceReport(source=unit.spec.name)
    keys = _UnitKeys(cfg, temporary)
    with (
        open(temporary / "docs.jsonl", "w", encoding="utf-8") as docs_file,
        open(temporary / "ids.jsonl", "w", encoding="utf-8") as ids_file,
        open(temporary / "removed.jsonl", "w", encoding="utf-8") as removed_file,
        open(temporary / "scores.jsonl", "w", encoding="utf-8") as scores_file,
    ):
        for document in stages.read_work_unit(unit, source_report, limit):
            report_lib.count_read(stats, document)
            outcome = curator.process(document)
            report_lib.count_outcome(stats, document, outcome, cfg.output.examples_per_reason)
            if outcome.scores:
                scores_file.write(_json_line({
                    "id": document.id, "source": document.source, "kept": outcome.removal is None,
                    "reason": outcome.removal["reason"] if outcome.removal else None,
                    "scores": outcome.scores,
                }))  # fmt: skip
            if outcome.removal is not None:
                removed_file.write(_json_line(outcome.removal))
                continue
            kept = outcome.document
            keys.add(kept.text)
            ids_file.write(_json_line(kept.id))
            metadata = {k: v for k, v in kept.metadata.items() if k != stages.ORDER_KEY}
            docs_file.write(_json_line({
                "id": kept.id, "text": kept.text, "source": kept.source, "kind": kept.kind,
                "order_key": stages.order_key(kept), "metadata": metadata,
            }))  # fmt: skip
    report_lib.add_source_report(stats, source_report)
    keys.close()
    (temporary / "stats.json").write_text(json.dumps(stats))
    (temporary / _UNIT_RECORD).write_text(json.dumps({"limit": limit}))
    (temporary / DONE).write_text(uuid.uuid4().hex)
    shutil.rmtree(unit_dir, ignore_errors=True)
    os.replace(temporary, unit_dir)  # Atomic: a unit directory is either absent or complete.
    return stats


class _UnitKeys:
    """Dedup keys of a unit's kept documents, computed in batches and appended to the unit's key
    files, so that a large input file never has its texts or its keys in memory at once."""

    def __init__(self, cfg: ml_collections.ConfigDict, unit_dir: pathlib.Path):
        self._cfg = cfg
        self._texts: list[str] = []
        # Kept only when collisions are verified against estimated Jaccard (the default is not).
        self._verify = cfg.dedup.minhash.verify_threshold is not None
        minhash = config_lib.minhash_config(cfg)
        self._writer = dedup_run.UnitKeyWriter(
            unit_dir, minhash.bands, minhash.num_perm if self._verify else 0
        )

    def add(self, text: str) -> None:
        self._texts.append(text)
        if len(self._texts) >= _SIGNATURE_BATCH:
            self._flush()

    def _flush(self) -> None:
        signatures = stages.minhash_signatures(self._texts, self._cfg)
        exact = np.array([text_hash(text) for text in self._texts], np.uint64).reshape(-1, 2)
        self._writer.append(
            exact,
            stages.band_key_array(signatures, self._cfg),
            has_words(signatures),
            signatures if self._verify else signatures[:, :0],
        )
        self._texts = []

    def close(self) -> None:
        self._flush()
        self._writer.close()


def _json_line(record: Any) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def read_jsonl(path: pathlib.Path) -> Iterator[Any]:
    """The JSON value of every line of `path`."""
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            yield json.loads(line)


@dataclasses.dataclass(frozen=True)
class UnitDocuments:
    """The documents of one finished unit that dedup kept, in order: a picklable zero-argument
    callable (one finalize partition).

    Attributes:
      docs_path: the unit's docs.jsonl.
      removed_mask_path: dedup's removed_mask.npy (bool per document, all units in order).
      first: the index of the unit's first document in that mask.
      order_prefix: '<source rank>:<shard index>:' of this run; the stored order keys carry
        the shard index of the run that made the unit, which shifts when inputs come and go.
    """

    docs_path: str
    removed_mask_path: str
    first: int
    order_prefix: str

    def __call__(self) -> Iterator[Document]:
        removed = np.load(self.removed_mask_path, mmap_mode="r")
        for index, record in enumerate(read_jsonl(pathlib.Path(self.docs_path))):
            if removed[self.first + index]:
                continue
            position = record["order_key"].rsplit(":", 1)[-1]
            yield Document(
                id=record["id"],
                text=record["text"],
                source=record["source"],
                kind=record["kind"],
                metadata={
                    **record.get("metadata", {}),
                    stages.ORDER_KEY: self.order_prefix + position,
                },
            )


@dataclasses.dataclass(frozen=True)
class UnitGroup:
    """Consecutive units read as one finalize partition (picklable, zero-argument)."""

    units: tuple[UnitDocuments, ...]

    def __call__(self) -> Iterator[Document]:
        for unit in self.units:
            yield from unit()


def unit_partitions(
    units: list[stages.WorkUnit],
    unit_dirs: list[pathlib.Path],
    removed_mask: pathlib.Path,
    target_bytes: int,
) -> list[UnitGroup]:
    """Finalize partitions in unit (= order key) order: consecutive units are grouped until
    their documents reach `target_bytes` (output.shard_bytes), so that many small input files
    make a few full shards rather than one small shard each. The grouping depends on the
    inputs only, never on the number of workers, so neither does the output."""
    groups: list[list[UnitDocuments]] = [[]]
    group_bytes, first = 0, 0
    for unit, unit_dir in zip(units, unit_dirs, strict=True):
        if group_bytes >= target_bytes:
            groups.append([])
            group_bytes = 0
        groups[-1].append(
            UnitDocuments(
                docs_path=str(unit_dir / "docs.jsonl"),
                removed_mask_path=str(removed_mask),
                first=first,
                order_prefix=f"{unit.source_rank:04d}:{unit.shard.index:08d}:",
            )
        )
        group_bytes += (unit_dir / "docs.jsonl").stat().st_size
        first += count_documents(unit_dir)
    return [UnitGroup(tuple(group)) for group in groups if group]
