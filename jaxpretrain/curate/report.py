"""Curation accounting: per-unit counters, report.json, removed.jsonl and scores.jsonl writers.

Counters are plain JSON dicts so any executor can produce, store and merge them:

    stats = new_unit_stats("web", 3, "/data/web/part-3.jsonl")
    count_read(stats, doc)                 # every document a source yielded
    count_outcome(stats, doc, outcome, n)  # after clean + filters
    add_source_report(stats, report)       # inputs the source skipped (file, line, reason)

`write_removals` sorts removal records out of core into removed.jsonl and counts them on the way
(`RemovalTally`); `build_report` turns the unit stats, that tally, the dedup summaries and the
output counts into report.json: documents (and characters, tokens where they exist) in and out
per source and stage, removals per filter rule, dedup cluster statistics, bad inputs with file
and line, and examples. Memory stays bounded whatever the number of removals.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import json
import os
import pathlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from jaxpretrain.curate.document import Document

# How many skipped inputs are listed one by one per source (all are counted by reason).
MAX_LISTED_SKIPS = 1_000
# Characters of a removed document quoted as an example in report.json.
EXAMPLE_CHARS = 300
_STAGE_ORDER = ("clean", "filter", "exact_dedup", "minhash_dedup")


def new_unit_stats(source: str, shard_index: int, location: str) -> dict[str, Any]:
    """Empty counters for one work unit (one input shard of one source)."""
    return {
        "source": source,
        "shard": shard_index,
        "location": location,
        "read": {"documents": 0, "characters": 0},
        "clean": {"documents": 0, "characters": 0},
        "filter": {"documents": 0, "characters": 0},
        "skipped_by_reason": {},
        "skipped": [],
        "removed_by_reason": {},
        "examples": {},
    }


def count_read(stats: dict[str, Any], doc: Document) -> None:
    stats["read"]["documents"] += 1
    stats["read"]["characters"] += len(doc.text)


def count_outcome(
    stats: dict[str, Any], original: Document, outcome: Any, examples_per_reason: int
) -> None:
    """Counts a `stages.CurateOutcome` of `original` (the document as read)."""
    removal = outcome.removal
    if removal is None or removal["stage"] != "clean":
        # Cleaned text length is not kept for filter removals; the original length stands in.
        kept_text = outcome.document.text if outcome.document is not None else original.text
        stats["clean"]["documents"] += 1
        stats["clean"]["characters"] += len(kept_text)
    if removal is None:
        stats["filter"]["documents"] += 1
        stats["filter"]["characters"] += len(outcome.document.text)
        return
    reason = removal["reason"]
    stats["removed_by_reason"][reason] = stats["removed_by_reason"].get(reason, 0) + 1
    examples = stats["examples"].setdefault(reason, [])
    if len(examples) < examples_per_reason:
        examples.append({"id": original.id, "text": original.text[:EXAMPLE_CHARS]})


def add_source_report(stats: dict[str, Any], report: Any) -> None:
    """Adds a `sources.SourceReport`'s skipped inputs (counts by reason and the listed ones)."""
    for reason, count in report.skipped_by_reason.items():
        stats["skipped_by_reason"][reason] = stats["skipped_by_reason"].get(reason, 0) + count
    for skipped in report.skipped:
        if len(stats["skipped"]) < MAX_LISTED_SKIPS:
            stats["skipped"].append(
                {"path": str(skipped.path), "line": skipped.line, "reason": skipped.reason}
            )


def dedup_summary(result: Any) -> dict[str, Any]:
    """report.json's view of a `dedup.DedupResult`."""
    return {
        "documents_in": result.num_documents,
        "removed": result.num_removed,
        "clusters": result.num_clusters,
        "largest_cluster": result.largest_cluster,
        "cluster_sizes": {str(size): count for size, count in result.cluster_sizes.items()},
        "stats": dict(result.stats),
    }


def _add_counts(total: dict[str, int], more: Mapping[str, int]) -> None:
    for key, value in more.items():
        total[key] = total.get(key, 0) + value


def build_report(
    *,
    unit_stats: Iterable[dict[str, Any]],
    source_names: list[str],
    removals: RemovalTally,
    dedup: Mapping[str, Any],
    outputs: Mapping[str, Mapping[str, Mapping[str, int]]],
    kept_characters: Mapping[str, int],
    mixture: Mapping[str, Any],
    examples_per_reason: int,
    config: Mapping[str, Any],
    seconds: Mapping[str, float],
) -> dict[str, Any]:
    """The report.json content.

    Args:
      unit_stats: counters of every work unit (see `new_unit_stats`), in unit order.
      source_names: sources in config order.
      removals: the tally of every removed.jsonl record (see `write_removals`).
      dedup: {'exact': dedup_summary | None, 'minhash': dedup_summary | None}.
      outputs: {source: {split: {'documents': n, 'tokens': n}}} of the written shards.
      kept_characters: {source: characters of the documents written}.
      mixture: {'mode', 'temperature', 'weights': {source: weight}}.
    """
    per_source: dict[str, dict[str, Any]] = {
        name: {
            "input_shards": 0,
            "skipped_inputs": {},
            "skipped": [],
            "removed_by_reason": {},
            "read": {"documents": 0, "characters": 0},
            "clean": {"documents": 0, "characters": 0},
            "filter": {"documents": 0, "characters": 0},
        }
        for name in source_names
    }
    examples: dict[str, list] = {}
    for unit in unit_stats:
        source = per_source[unit["source"]]
        source["input_shards"] += 1
        _add_counts(source["skipped_inputs"], unit["skipped_by_reason"])
        room = MAX_LISTED_SKIPS - len(source["skipped"])
        source["skipped"].extend(unit["skipped"][: max(0, room)])
        _add_counts(source["removed_by_reason"], unit["removed_by_reason"])
        for stage in ("read", "clean", "filter"):
            _add_counts(source[stage], unit[stage])
        for reason, quoted in unit["examples"].items():
            listed = examples.setdefault(reason, [])
            listed.extend(quoted[: examples_per_reason - len(listed)])

    dedup_removed = removals.by_source_and_stage
    sources_json = {}
    totals = {stage: {"documents_in": 0, "documents_out": 0} for stage in (*_STAGE_ORDER,)}
    for name, source in per_source.items():
        after_filter = source["filter"]["documents"]
        after_exact = after_filter - dedup_removed[(name, "exact_dedup")]
        after_minhash = after_exact - dedup_removed[(name, "minhash_dedup")]
        written = outputs.get(name, {})
        stages = {
            "read": {"documents_out": source["read"]["documents"],
                     "characters_out": source["read"]["characters"]},
            "clean": {"documents_in": source["read"]["documents"],
                      "documents_out": source["clean"]["documents"],
                      "characters_in": source["read"]["characters"],
                      "characters_out": source["clean"]["characters"]},
            "filter": {"documents_in": source["clean"]["documents"],
                       "documents_out": after_filter,
                       "characters_out": source["filter"]["characters"]},
            "exact_dedup": {"documents_in": after_filter, "documents_out": after_exact},
            "minhash_dedup": {"documents_in": after_exact, "documents_out": after_minhash,
                              "characters_out": kept_characters.get(name, 0)},
            "tokenize": {
                "documents_in": after_minhash,
                "documents_out": sum(split["documents"] for split in written.values()),
                "tokens_out": sum(split["tokens"] for split in written.values()),
                "splits": {split: dict(counts) for split, counts in written.items()},
            },
        }  # fmt: skip
        for stage in _STAGE_ORDER:
            totals[stage]["documents_in"] += stages[stage]["documents_in"]
            totals[stage]["documents_out"] += stages[stage]["documents_out"]
        sources_json[name] = {
            "input_shards": source["input_shards"],
            "stages": stages,
            "removed_by_reason": dict(sorted(source["removed_by_reason"].items())),
            "skipped_inputs": dict(sorted(source["skipped_inputs"].items())),
            "skipped": source["skipped"],
        }

    removed_by_reason = removals.filter_reasons
    removed_by_filter: collections.Counter = collections.Counter()
    for reason, count in removed_by_reason.items():
        removed_by_filter[reason.split(":", 1)[0]] += count
    return {
        "sources": sources_json,
        "totals": totals,
        "filters": {
            "removed_by_reason": dict(sorted(removed_by_reason.items())),
            "removed_by_filter": dict(sorted(removed_by_filter.items())),
        },
        "dedup": dict(dedup),
        "examples": {
            "removed": dict(sorted(examples.items())),
            "duplicates": removals.duplicate_examples,
        },
        "mixture": dict(mixture),
        "seconds": dict(seconds),
        "config": dict(config),
    }


def removal_sort_key(record: Mapping[str, str]) -> tuple:
    """removed.jsonl order: pipeline stage, then source, then id (same for every executor)."""
    stage = record["stage"]
    rank = _STAGE_ORDER.index(stage) if stage in _STAGE_ORDER else len(_STAGE_ORDER)
    return rank, record["source"], record["id"]


@dataclasses.dataclass
class RemovalTally:
    """What report.json needs from removed.jsonl, counted while it is written.

    Attributes:
      by_source_and_stage: removals per (source, stage).
      filter_reasons: removals at stage 'filter' per reason ('<filter>:<rule>').
      duplicate_examples: the first dedup removals (with `duplicate_of`) in removed.jsonl order.
    """

    examples_per_reason: int
    by_source_and_stage: collections.Counter = dataclasses.field(
        default_factory=collections.Counter
    )
    filter_reasons: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    duplicate_examples: list[dict[str, str]] = dataclasses.field(default_factory=list)

    def add(self, record: Mapping[str, str]) -> None:
        self.by_source_and_stage[record["source"], record["stage"]] += 1
        if record["stage"] == "filter":
            self.filter_reasons[record["reason"]] += 1
        if "duplicate_of" in record and len(self.duplicate_examples) < self.examples_per_reason:
            self.duplicate_examples.append(dict(record))


def write_removals(
    path: str | os.PathLike,
    removals: Iterable[Mapping[str, str]],
    *,
    scratch_dir: str | os.PathLike,
    sort_buffer_bytes: int,
    examples_per_reason: int,
) -> RemovalTally:
    """Writes removed.jsonl in `removal_sort_key` order and returns its tally.

    An external sort: runs of at most `sort_buffer_bytes` of JSON lines are sorted in memory and
    spilled to `scratch_dir` (deleted by the caller), then merged; memory holds one run while
    sorting and one line per run while merging, never every removal.
    """
    tally = RemovalTally(examples_per_reason)

    def counted(records: Iterator[Mapping[str, str]]) -> Iterator[Mapping[str, str]]:
        for record in records:
            tally.add(record)
            yield record

    write_jsonl(
        path,
        counted(external_sort(removals, removal_sort_key, scratch_dir, sort_buffer_bytes)),
    )
    return tally


# Runs merged at once: each holds an open file, and a terabyte corpus's removals or scores make
# thousands of runs (over the usual limit of 1,024 open files); more are merged in passes.
MAX_MERGE_FAN_IN = 64


def external_sort(
    records: Iterable[Mapping[str, Any]],
    key: Callable[[Mapping[str, Any]], tuple],
    scratch_dir: str | os.PathLike,
    buffer_bytes: int,
) -> Iterator[dict[str, Any]]:
    """`records` (JSON objects) sorted by `key`, holding about `buffer_bytes` of JSON text in
    memory: full buffers are sorted and written as run files to `scratch_dir`, then merged,
    at most `MAX_MERGE_FAN_IN` at a time. Records with equal keys come out in the order of
    their JSON text, so the output never depends on the order records arrive in.

    Keys must be tuples of strings and numbers (stored beside each line, so the merge never
    recomputes them). For fixed-size numeric records `dedup.spill.SpillSorter` is leaner.
    """
    scratch = pathlib.Path(scratch_dir)
    runs: list[pathlib.Path] = []
    buffer: list[tuple[tuple, str]] = []  # (key, JSON line): a str is far smaller than a dict
    buffered = 0
    for record in records:
        line = json.dumps(record, ensure_ascii=False, sort_keys=True)
        buffer.append((key(record), line))
        buffered += len(line)
        if buffered >= buffer_bytes:
            runs.append(_write_run(sorted(buffer), scratch / f"run_{len(runs):06d}"))
            buffer, buffered = [], 0
    if not runs:
        for _, line in sorted(buffer):
            yield json.loads(line)
        return
    if buffer:
        runs.append(_write_run(sorted(buffer), scratch / f"run_{len(runs):06d}"))
        buffer = []
    merge_pass = 0
    while len(runs) > MAX_MERGE_FAN_IN:
        merge_pass += 1
        groups = [runs[i : i + MAX_MERGE_FAN_IN] for i in range(0, len(runs), MAX_MERGE_FAN_IN)]
        runs = [
            _merge_runs(group, scratch / f"pass{merge_pass}_run_{index:06d}")
            for index, group in enumerate(groups)
        ]
    for _, line in heapq.merge(*(_read_run(run) for run in runs)):
        yield json.loads(line)


def _merge_runs(runs: list[pathlib.Path], path: pathlib.Path) -> pathlib.Path:
    """Merges sorted run files into one (then deletes them: disk holds each record once)."""
    merged = _write_run(heapq.merge(*(_read_run(run) for run in runs)), path)
    for run in runs:
        run.unlink()
    return merged


def _write_run(sorted_lines: Iterable[tuple[tuple, str]], path: pathlib.Path) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as run:
        for record_key, line in sorted_lines:
            # JSON escapes tabs inside strings, so the first tab ends the key.
            run.write(f"{json.dumps(record_key, ensure_ascii=False)}\t{line}\n")
    return path


def _read_run(path: pathlib.Path) -> Iterator[tuple[tuple, str]]:
    with open(path, encoding="utf-8") as run:
        for row in run:
            record_key, line = row.rstrip("\n").split("\t", 1)
            yield tuple(json.loads(record_key)), line


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> int:
    """Writes one JSON object per line through a temporary file and a rename; returns the count."""
    temporary = f"{path}.tmp-{os.getpid()}"
    count = 0
    with open(temporary, "w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
            count += 1
    os.replace(temporary, path)
    return count


def write_json(path: str | os.PathLike, content: Mapping[str, Any]) -> None:
    """Writes `content` as indented JSON, atomically."""
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as out:
        json.dump(content, out, indent=2, ensure_ascii=False)
        out.write("\n")
    os.replace(temporary, path)
