"""The last stage of every executor: split, tokenizer, shards per source and split, report,
removed.jsonl, scores.jsonl and, last, the manifest.

The output depends only on the kept documents, removals and scores, not on the order they
arrive in: documents are processed in `stages.order_key` order and removals are sorted, so the
local and Beam executors write identical directories from the same input.
"""

from __future__ import annotations

import collections
import os
import pathlib
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import ml_collections
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from jaxpretrain import tokenizer as tokenizer_lib
from jaxpretrain.curate import config as config_lib
from jaxpretrain.curate import report as report_lib
from jaxpretrain.curate import stages
from jaxpretrain.curate.document import Document
from jaxpretrain.curate.mixture import mixture_weights
from jaxpretrain.data import manifest as manifest_lib

TOKENIZER_FILENAME = "tokenizer.model"
REPORT_FILENAME = "report.json"
REMOVED_FILENAME = "removed.jsonl"
SCORES_FILENAME = "scores.jsonl"
SPLITS = (stages.TRAIN_SPLIT, stages.VALIDATION_SPLIT)
# Documents encoded per call: bounds memory while keeping SentencePiece's threads busy.
_ENCODE_GROUP_SIZE = 1_024
# group_size:1 makes every record randomly addressable, which grain's shuffled reads need.
_ARRAY_RECORD_OPTIONS = "group_size:1"
# SentencePiece records its thread count in the model file; a fixed count makes the model
# byte-identical whatever the machine or the number of workers.
TOKENIZER_TRAINING_THREADS = 8

KeptDocuments = Callable[[], Iterable[Document]] | Iterable[Document]


def shard_filename(source: str, split: str, index: int, count: int) -> str:
    """'<source>/<split>-<index>-of-<count>.array_record', relative to the output directory."""
    return f"{source}/{split}-{index:05d}-of-{count:05d}.array_record"


def remove_previous_output(output_path: pathlib.Path) -> None:
    """Deletes an earlier manifest first (so an interrupted run never looks finished), then
    old shards of this layout and of format version 1."""
    (output_path / manifest_lib.MANIFEST_FILENAME).unlink(missing_ok=True)
    for pattern in (
        "*/train-?????-of-?????.array_record",
        "*/validation-?????-of-?????.array_record",
        "train-?????-of-?????.array_record",
        "validation-?????-of-?????.array_record",
    ):
        for stale in output_path.glob(pattern):
            stale.unlink()


def finalize(
    kept_documents: KeptDocuments,
    removals: Iterable[dict[str, str]],
    scores: Iterable[dict[str, Any]],
    stats: dict[str, Any],
    cfg: ml_collections.ConfigDict,
    output_dir: str | os.PathLike,
) -> str:
    """Writes the prepared directory and returns the manifest path.

    Args:
      kept_documents: a function returning the documents that survived curation in
        `stages.order_key` order (called twice: tokenizer pass, then write pass), or any
        iterable of them, which is sorted here in memory.
      removals: every removed document's record (`stages.removal_record`), any order.
      scores: per-document filter scores ({'id', 'source', 'scores', 'kept', 'reason'}),
        written to scores.jsonl in the order given (give them in order_key order).
      stats: {'units': [unit stats], 'dedup': {'exact': ..., 'minhash': ...},
        'seconds': {...}} (see `report.build_report`).
      cfg: the data config.
      output_dir: created if needed; a previous manifest and shards there are replaced.
    """
    started = time.perf_counter()
    output_path = pathlib.Path(output_dir)
    output_path.mkdir(parents=True, exist_ok=True)
    remove_previous_output(output_path)
    if callable(kept_documents):
        documents_in_order = kept_documents
    else:
        ordered = sorted(kept_documents, key=stages.order_key)
        documents_in_order = lambda: ordered  # noqa: E731
    source_names = [source.name for source in cfg.sources]
    threads = int(cfg.executor.workers) or os.cpu_count() or 1

    if next(iter(documents_in_order()), None) is None:
        raise ValueError(
            f"No document survived curation for {output_path}; see the removals and skipped "
            "inputs, fix the sources or loosen the filters in the data config."
        )
    counts: collections.Counter = collections.Counter()

    def train_texts() -> Iterator[str]:
        for document in documents_in_order():
            split = stages.assign_split(document, cfg)
            counts[document.source, split] += 1
            if split == stages.TRAIN_SPLIT:
                yield document.text

    tokenizer_path = output_path / TOKENIZER_FILENAME
    if cfg.tokenizer.path:
        for _ in train_texts():
            pass
        shutil.copyfile(os.path.expanduser(cfg.tokenizer.path), tokenizer_path)
        tokenizer = tokenizer_lib.Tokenizer.load(tokenizer_path)
    else:
        tokenizer = tokenizer_lib.train_tokenizer(
            train_texts(),
            tokenizer_path,
            vocab_size=cfg.tokenizer.vocab_size,
            model_type=cfg.tokenizer.model_type,
            seed=cfg.tokenizer.seed,
            num_threads=TOKENIZER_TRAINING_THREADS,
        )
    tokenizer_seconds = time.perf_counter() - started

    shards, kept_characters = _write_shards(
        output_path, documents_in_order(), tokenizer, counts, cfg, threads
    )
    outputs = {
        name: {
            split: {
                "documents": sum(s.documents for s in shards[split] if s.source == name),
                "tokens": sum(s.tokens for s in shards[split] if s.source == name),
            }
            for split in SPLITS
        }
        for name in source_names
    }
    train_tokens = {name: outputs[name][stages.TRAIN_SPLIT]["tokens"] for name in source_names}
    weights = mixture_weights(
        train_tokens,
        {source.name: float(source.weight) for source in cfg.sources},
        mode=cfg.mixture.mode,
        temperature=float(cfg.mixture.temperature),
    )

    removals = sorted(removals, key=report_lib.removal_sort_key)
    report_lib.write_jsonl(output_path / REMOVED_FILENAME, removals)
    report_lib.write_jsonl(output_path / SCORES_FILENAME, scores)
    seconds = {
        **stats.get("seconds", {}),
        "train_tokenizer": round(tokenizer_seconds, 2),
        "tokenize_and_write": round(time.perf_counter() - started - tokenizer_seconds, 2),
    }
    full_report = report_lib.build_report(
        unit_stats=stats["units"],
        source_names=source_names,
        removals=removals,
        dedup=stats.get("dedup", {}),
        outputs=outputs,
        kept_characters=kept_characters,
        mixture={"mode": cfg.mixture.mode, "temperature": cfg.mixture.temperature,
                 "weights": weights},
        examples_per_reason=cfg.output.examples_per_reason,
        config=config_lib.as_json(cfg),
        seconds=seconds,
    )  # fmt: skip
    report_lib.write_json(output_path / REPORT_FILENAME, full_report)

    manifest = manifest_lib.Manifest(
        data_dir=str(output_path),
        tokenizer_file=TOKENIZER_FILENAME,
        vocab_size=tokenizer.vocab_size,
        special_ids=tokenizer.special_ids,
        splits={split: manifest_lib.SplitInfo(shards=tuple(shards[split])) for split in SPLITS},
        sources=tuple(
            {
                "name": name,
                "weight": weights[name],
                "configured_weight": float(cfg.sources[rank].weight),
                "documents": sum(split["documents"] for split in outputs[name].values()),
                "tokens": sum(split["tokens"] for split in outputs[name].values()),
            }
            for rank, name in enumerate(source_names)
        ),
        report=_manifest_report(full_report),
    )
    return manifest_lib.write_manifest(manifest)


def _manifest_report(full_report: dict[str, Any]) -> dict[str, Any]:
    """The manifest's short report: totals, per-source reading summary and file pointers."""
    return {
        "report_file": REPORT_FILENAME,
        "removed_file": REMOVED_FILENAME,
        "scores_file": SCORES_FILENAME,
        "totals": full_report["totals"],
        "seconds": full_report["seconds"],
        "sources": [
            {
                "source": name,
                "documents": source["stages"]["read"]["documents_out"],
                "num_skipped": sum(source["skipped_inputs"].values()),
                "skipped_by_reason": source["skipped_inputs"],
                "skipped": source["skipped"],
            }
            for name, source in full_report["sources"].items()
        ],
    }


def _write_shards(
    output_path: pathlib.Path,
    documents: Iterable[Document],
    tokenizer: tokenizer_lib.Tokenizer,
    counts: collections.Counter,
    cfg: ml_collections.ConfigDict,
    threads: int,
) -> tuple[dict[str, list[manifest_lib.ShardInfo]], dict[str, int]]:
    """Tokenizes documents and deals each (source, split)'s round-robin into its shards."""
    wanted = {
        stages.TRAIN_SPLIT: cfg.output.shards_per_source,
        stages.VALIDATION_SPLIT: cfg.output.validation_shards_per_source,
    }
    files: dict[tuple[str, str], list[str]] = {}
    writers: dict[tuple[str, str], list[ArrayRecordWriter]] = {}
    for source in cfg.sources:
        for split in SPLITS:
            count = max(1, min(wanted[split], counts[source.name, split]))
            names = [shard_filename(source.name, split, i, count) for i in range(count)]
            (output_path / source.name).mkdir(exist_ok=True)
            files[source.name, split] = names
            writers[source.name, split] = [
                ArrayRecordWriter(str(output_path / name), _ARRAY_RECORD_OPTIONS) for name in names
            ]
    written = collections.Counter()
    shard_documents: collections.Counter = collections.Counter()
    shard_tokens: collections.Counter = collections.Counter()
    kept_characters: collections.Counter = collections.Counter()

    def flush(group: list[tuple[Document, str]]) -> None:
        token_lists = tokenizer.encode_batch([doc.text for doc, _ in group], num_threads=threads)
        for (doc, split), token_ids in zip(group, token_lists, strict=True):
            key = (doc.source, split)
            shard = written[key] % len(writers[key])
            written[key] += 1
            writers[key][shard].write(
                np.asarray(token_ids, dtype=manifest_lib.TOKEN_DTYPE).tobytes()
            )
            shard_documents[files[key][shard]] += 1
            shard_tokens[files[key][shard]] += len(token_ids)
            kept_characters[doc.source] += len(doc.text)

    try:
        group: list[tuple[Document, str]] = []
        for document in documents:
            group.append((document, stages.assign_split(document, cfg)))
            if len(group) >= _ENCODE_GROUP_SIZE:
                flush(group)
                group = []
        if group:
            flush(group)
    finally:
        for shard_writers in writers.values():
            for writer in shard_writers:
                writer.close()
    shards: dict[str, list[manifest_lib.ShardInfo]] = {split: [] for split in SPLITS}
    for (source, split), names in files.items():
        shards[split].extend(
            manifest_lib.ShardInfo(
                file=name,
                documents=shard_documents[name],
                tokens=shard_tokens[name],
                source=source,
            )
            for name in names
        )
    return shards, dict(kept_characters)
