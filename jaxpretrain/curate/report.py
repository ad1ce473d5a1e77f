"""Curation accounting: per-unit counters, report.json, removed.jsonl and scores.jsonl writers.

Counters are plain JSON dicts so any executor can produce, store and merge them:

    stats = new_unit_stats("web", 3, "/data/web/part-3.jsonl")
    count_read(stats, doc)                 # every document a source yielded
    count_outcome(stats, doc, outcome, n)  # after clean + filters
    add_source_report(stats, report)       # inputs the source skipped (file, line, reason)

`build_report` turns the unit stats, the dedup summaries and the output counts into report.json:
documents (and characters, tokens where they exist) in and out per source and stage, removals
per filter rule, dedup cluster statistics, bad inputs with file and line, and examples.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Iterable, Mapping
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
    removals: list[dict[str, str]],
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
      removals: every removed.jsonl record.
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

    dedup_removed = collections.Counter((r["source"], r["stage"]) for r in removals)
    duplicate_examples = [r for r in removals if "duplicate_of" in r][:examples_per_reason]
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

    removed_by_reason = collections.Counter(r["reason"] for r in removals if r["stage"] == "filter")
    removed_by_filter = collections.Counter(
        reason.split(":", 1)[0] for reason in removed_by_reason.elements()
    )
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
            "duplicates": duplicate_examples,
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
