"""Prepare a data directory: read a source, split, train the tokenizer, tokenize, write shards.

This is the minimal path (no cleaning, filtering or dedup yet):

    documents ──► train/validation split by a stable hash of the document id
              ──► SentencePiece tokenizer trained on the train split only
              ──► token ids per document ──► ArrayRecord shards per split ──► manifest.json (last)

The format written is defined in `jaxpretrain/data/manifest.py`.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import pathlib
import time
from collections.abc import Sequence

import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from jaxpretrain import tokenizer as tokenizer_lib
from jaxpretrain.curate import sources
from jaxpretrain.curate.document import Document
from jaxpretrain.data import manifest as manifest_lib

TOKENIZER_FILENAME = "tokenizer.model"
TRAIN_SPLIT = "train"
VALIDATION_SPLIT = "validation"
# Documents encoded per call: bounds memory while keeping SentencePiece's threads busy.
_ENCODE_GROUP_SIZE = 1_024
# group_size:1 makes every record randomly addressable, which grain's shuffled reads need.
_ARRAY_RECORD_OPTIONS = "group_size:1"


def is_validation_document(doc_id: str, validation_fraction: float) -> bool:
    """Whether `doc_id` belongs to the validation split.

    Uses a hash of the id that is the same in every process and Python version (not `hash()`),
    so a document stays in its split when the corpus grows or is prepared elsewhere. Only the
    part before '#' is hashed: a derived document (`stdlib:json/__init__.py#docstrings`) goes to
    the split of its original, so validation text never leaks into train through a copy.
    """
    split_key = doc_id.split("#", 1)[0]
    digest = hashlib.blake2b(split_key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64 < validation_fraction


def shard_filename(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.array_record"


def prepare(
    output_dir: str | os.PathLike,
    source: str = sources.STDLIB_SOURCE,
    *,
    vocab_size: int = 4096,
    validation_fraction: float = 0.05,
    seed: int = 0,
    max_documents: int = -1,
    num_shards: int = 4,
    num_validation_shards: int = 1,
    tokenizer_model_type: str = "bpe",
    num_threads: int | None = None,
) -> str:
    """Prepares `output_dir` from `source` and returns the path of its `manifest.json`.

    Args:
      output_dir: created if needed; a previous manifest and shards there are replaced.
      source: 'stdlib' (embedded corpus), a directory or a file (see `curate/sources.py`).
      vocab_size: tokenizer vocabulary including the 361 reserved ids.
      validation_fraction: expected fraction of documents in the validation split, in [0, 1).
      seed: seeds the tokenizer's training sample (the split does not depend on it).
      max_documents: read at most this many documents (in source order); -1 reads all.
      num_shards: ArrayRecord shards for the train split (fewer if it has fewer documents).
      num_validation_shards: shards for the validation split.
      tokenizer_model_type: 'bpe' or 'unigram'.
      num_threads: threads for tokenizer training and encoding (default: all cores).

    Returns:
      Path of the manifest, written only once every other file is complete.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(
            f"validation_fraction={validation_fraction} is outside [0, 1); use e.g. 0.05."
        )
    if num_shards < 1 or num_validation_shards < 1:
        raise ValueError(
            f"num_shards={num_shards} and num_validation_shards={num_validation_shards} "
            "must both be at least 1."
        )
    threads = num_threads or os.cpu_count() or 1
    started = time.perf_counter()
    output_path = pathlib.Path(output_dir)
    output_path.mkdir(parents=True, exist_ok=True)
    _remove_previous_output(output_path)

    report = sources.SourceReport(source=source)
    documents = _read_documents(source, report, max_documents)
    split_documents: dict[str, list[Document]] = {TRAIN_SPLIT: [], VALIDATION_SPLIT: []}
    for document in documents:
        split = (
            VALIDATION_SPLIT
            if is_validation_document(document.id, validation_fraction)
            else TRAIN_SPLIT
        )
        split_documents[split].append(document)
    read_seconds = time.perf_counter() - started

    tokenizer = tokenizer_lib.train_tokenizer(
        (document.text for document in split_documents[TRAIN_SPLIT]),
        output_path / TOKENIZER_FILENAME,
        vocab_size=vocab_size,
        model_type=tokenizer_model_type,
        seed=seed,
        num_threads=threads,
    )
    tokenizer_seconds = time.perf_counter() - started - read_seconds

    splits = {
        TRAIN_SPLIT: _write_split(
            output_path, TRAIN_SPLIT, split_documents[TRAIN_SPLIT], tokenizer, num_shards, threads
        ),
        VALIDATION_SPLIT: _write_split(
            output_path,
            VALIDATION_SPLIT,
            split_documents[VALIDATION_SPLIT],
            tokenizer,
            num_validation_shards,
            threads,
        ),
    }
    total_seconds = time.perf_counter() - started
    manifest = manifest_lib.Manifest(
        data_dir=str(output_path),
        tokenizer_file=TOKENIZER_FILENAME,
        vocab_size=tokenizer.vocab_size,
        special_ids=tokenizer.special_ids,
        splits=splits,
        sources=({"name": source, "weight": 1.0, "documents": len(documents)},),
        report={
            "options": {
                "source": source,
                "vocab_size": vocab_size,
                "validation_fraction": validation_fraction,
                "seed": seed,
                "max_documents": max_documents,
                "num_shards": num_shards,
                "num_validation_shards": num_validation_shards,
                "tokenizer_model_type": tokenizer_model_type,
            },
            "seconds": {
                "read_and_split": round(read_seconds, 2),
                "train_tokenizer": round(tokenizer_seconds, 2),
                "tokenize_and_write": round(total_seconds - read_seconds - tokenizer_seconds, 2),
                "total": round(total_seconds, 2),
            },
            "sources": [report.to_json()],
        },
    )
    return manifest_lib.write_manifest(manifest)


def _read_documents(
    source: str, report: sources.SourceReport, max_documents: int
) -> list[Document]:
    stop = None if max_documents < 0 else max_documents
    documents = list(itertools.islice(sources.iter_documents(source, report), stop))
    if not documents:
        raise ValueError(
            f"Source {source!r} produced no documents ({report.num_skipped} inputs skipped: "
            f"{dict(report.skipped_by_reason)}); point it at text, .jsonl or .jsonl.gz files."
        )
    return documents


def _remove_previous_output(output_path: pathlib.Path) -> None:
    """Deletes an earlier manifest first, so an interrupted run can never look finished."""
    (output_path / manifest_lib.MANIFEST_FILENAME).unlink(missing_ok=True)
    for split in (TRAIN_SPLIT, VALIDATION_SPLIT):
        for stale_shard in output_path.glob(f"{split}-?????-of-?????.array_record"):
            stale_shard.unlink()


def _write_split(
    output_path: pathlib.Path,
    split: str,
    documents: Sequence[Document],
    tokenizer: tokenizer_lib.Tokenizer,
    num_shards: int,
    num_threads: int,
) -> manifest_lib.SplitInfo:
    """Tokenizes `documents` and deals them round-robin into shards (balanced sizes)."""
    shard_count = max(1, min(num_shards, len(documents)))
    filenames = [shard_filename(split, index, shard_count) for index in range(shard_count)]
    writers = [
        ArrayRecordWriter(str(output_path / filename), _ARRAY_RECORD_OPTIONS)
        for filename in filenames
    ]
    shard_documents = [0] * shard_count
    shard_tokens = [0] * shard_count
    try:
        for group_start in range(0, len(documents), _ENCODE_GROUP_SIZE):
            group = documents[group_start : group_start + _ENCODE_GROUP_SIZE]
            token_lists = tokenizer.encode_batch(
                [document.text for document in group], num_threads=num_threads
            )
            for offset, token_ids in enumerate(token_lists):
                shard = (group_start + offset) % shard_count
                writers[shard].write(
                    np.asarray(token_ids, dtype=manifest_lib.TOKEN_DTYPE).tobytes()
                )
                shard_documents[shard] += 1
                shard_tokens[shard] += len(token_ids)
    finally:
        for writer in writers:
            writer.close()
    return manifest_lib.SplitInfo(
        shards=tuple(
            manifest_lib.ShardInfo(file=filename, documents=documents, tokens=tokens)
            for filename, documents, tokens in zip(
                filenames, shard_documents, shard_tokens, strict=True
            )
        )
    )
