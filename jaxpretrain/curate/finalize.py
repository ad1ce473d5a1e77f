"""The last stage of every executor: split, tokenizer, shards per source and split, report,
removed.jsonl, scores.jsonl and, last, the manifest.

Kept documents arrive as partitions: picklable zero-argument callables, each yielding its
documents in `stages.order_key` order, partition i's documents all before partition i+1's.

    sample pass   every partition (in parallel) keeps its train documents with the smallest
                  id hashes that fit in `tokenizer.max_training_bytes`; the merged sample
                  trains the tokenizer (`curate/tokenizer_sample.py`)
    write pass    every partition (in parallel, `write_partition`) tokenizes its documents
                  into its own shards, `<source>/<split>-p<partition>-<index>.array_record`,
                  starting a new shard once one holds `output.shard_bytes` bytes of tokens
    report        removals are sorted out of core into removed.jsonl while being counted

Memory is bounded by the sample, the sort buffer and one encode group per process, whatever
the corpus size. The output directory may be local or a bucket (gs://): shards are then written
on local disk one at a time and uploaded as each is closed, the manifest last.

The output depends only on the partitions, removals and scores, not on `executor.workers` or
the order removals arrive in, so the local and Beam executors write identical directories from
the same input.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import multiprocessing
import os
import pathlib
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import ml_collections
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter
from etils import epath

from jaxpretrain import paths
from jaxpretrain import tokenizer as tokenizer_lib
from jaxpretrain.curate import config as config_lib
from jaxpretrain.curate import report as report_lib
from jaxpretrain.curate import stages, tokenizer_sample
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
_TOKEN_BYTES = np.dtype(manifest_lib.TOKEN_DTYPE).itemsize
# SentencePiece records its thread count in the model file; a fixed count makes the model
# byte-identical whatever the machine or the number of workers.
TOKENIZER_TRAINING_THREADS = 8
# Scratch folders of finalize inside the output directory (removed by the next run if killed).
_SCRATCH_PREFIX = ".finalize-"
_UPLOAD_BLOCK_BYTES = 16 << 20

Partition = Callable[[], Iterable[Document]]


@dataclasses.dataclass(frozen=True)
class InMemoryPartition:
    """A partition of documents already in memory (small inputs, tests, the Beam launcher)."""

    documents: tuple[Document, ...]

    def __call__(self) -> Iterable[Document]:
        return self.documents


@dataclasses.dataclass(frozen=True)
class PartitionResult:
    """What `write_partition` wrote: its shards per split (in writing order) and the characters
    of the documents it kept per source."""

    shards: dict[str, tuple[manifest_lib.ShardInfo, ...]]
    kept_characters: dict[str, int]

    def counts(self) -> dict[tuple[str, str], dict[str, int]]:
        """{(source, split): {'documents': n, 'tokens': n}} over this partition's shards."""
        totals: dict[tuple[str, str], dict[str, int]] = {}
        for split, shards in self.shards.items():
            for shard in shards:
                total = totals.setdefault((shard.source, split), {"documents": 0, "tokens": 0})
                total["documents"] += shard.documents
                total["tokens"] += shard.tokens
        return totals


def shard_filename(source: str, split: str, partition: int, index: int) -> str:
    """'<source>/<split>-p<partition>-<index>.array_record', relative to the output directory."""
    return f"{source}/{split}-p{partition:05d}-{index:05d}.array_record"


# Shard names of this layout and of earlier ones (`<split>-<index>-of-<count>`, flat in v1).
_SHARD_NAME = re.compile(r"(train|validation)-(p\d{5}-\d{5}|\d{5}-of-\d{5})\.array_record")


def remove_previous_output(output: epath.Path) -> None:
    """Deletes an earlier manifest first (so an interrupted run never looks finished), then
    old shards of this layout and of earlier ones, and scratch folders of killed runs."""
    (output / manifest_lib.MANIFEST_FILENAME).unlink(missing_ok=True)
    if not output.exists():  # a bucket folder exists only once it holds an object
        return
    for entry in output.iterdir():
        if entry.name.startswith(_SCRATCH_PREFIX):
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.is_dir() and not entry.name.startswith("."):
            for child in entry.iterdir():
                if _SHARD_NAME.fullmatch(child.name):
                    child.unlink()
        elif _SHARD_NAME.fullmatch(entry.name):
            entry.unlink()


def as_partitions(kept: Sequence[Partition] | Iterable[Document]) -> list[Partition]:
    """`kept` as a list of partitions: a sequence of callables as is, and any other iterable of
    documents sorted in memory into one partition."""
    if isinstance(kept, Sequence) and kept and all(callable(item) for item in kept):
        return list(kept)
    return [InMemoryPartition(tuple(sorted(kept, key=stages.order_key)))]


def finalize(
    partitions: Sequence[Partition] | Iterable[Document],
    removals: Iterable[dict[str, str]],
    scores: Iterable[dict[str, Any]],
    stats: dict[str, Any],
    cfg: ml_collections.ConfigDict,
    output_dir: str | os.PathLike,
) -> str:
    """Writes the prepared directory and returns the manifest path.

    Args:
      partitions: picklable zero-argument callables, each returning its kept documents in
        `stages.order_key` order (called twice: sample pass, write pass; in worker processes
        when `cfg.executor.workers` allows); or any iterable of documents, sorted here in memory.
      removals: every removed document's record (`stages.removal_record`), any order; sorted
        out of core into removed.jsonl.
      scores: per-document filter scores ({'id', 'source', 'scores', 'kept', 'reason'}),
        written to scores.jsonl in the order given (give them in order_key order).
      stats: {'units': [unit stats], 'dedup': {'exact': ..., 'minhash': ...},
        'seconds': {...}} (see `report.build_report`).
      cfg: the data config.
      output_dir: created if needed; a previous manifest and shards there are replaced.
    """
    output = paths.resolve(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    remove_previous_output(output)
    partitions = as_partitions(partitions)
    if not any(next(iter(partition()), None) is not None for partition in partitions):
        raise ValueError(
            f"No document survived curation for {output}; see the removals and skipped "
            "inputs, fix the sources or loosen the filters in the data config."
        )
    remote = paths.is_remote(output)
    # Files other than shards are written on local disk first when the output is a bucket.
    with tempfile.TemporaryDirectory(
        prefix=_SCRATCH_PREFIX, dir=None if remote else output
    ) as scratch:
        local = pathlib.Path(scratch) if remote else pathlib.Path(output)
        tokenizer, results, seconds = _tokenize_partitions(partitions, cfg, local, str(output))
        removal_tally = report_lib.write_removals(
            local / REMOVED_FILENAME,
            removals,
            scratch_dir=pathlib.Path(scratch) / "removal_runs",
            sort_buffer_bytes=int(cfg.output.sort_buffer_bytes),
            examples_per_reason=cfg.output.examples_per_reason,
        )
        report_lib.write_jsonl(local / SCORES_FILENAME, scores)
        if remote:
            for name in (TOKENIZER_FILENAME, REMOVED_FILENAME, SCORES_FILENAME):
                _upload(local / name, output / name)
    stats = {**stats, "seconds": {**stats.get("seconds", {}), **seconds}}
    return write_report_and_manifest(results, removal_tally, stats, cfg, output, tokenizer)


def write_report_and_manifest(
    results: Sequence[PartitionResult],
    removal_tally: report_lib.RemovalTally,
    stats: dict[str, Any],
    cfg: ml_collections.ConfigDict,
    output_dir: str | os.PathLike,
    tokenizer: tokenizer_lib.Tokenizer,
) -> str:
    """The last step of every executor: report.json, then manifest.json, from the partitions'
    results (in partition order), the removal tally and the run's `stats`; nothing per
    document. Returns the manifest path."""
    output = paths.resolve(output_dir)
    source_names = [source.name for source in cfg.sources]
    shards = _manifest_shards(results, source_names, str(output))
    outputs = _output_counts(results, source_names)
    weights = mixture_weights(
        {name: outputs[name][stages.TRAIN_SPLIT]["tokens"] for name in source_names},
        {source.name: float(source.weight) for source in cfg.sources},
        mode=cfg.mixture.mode,
        temperature=float(cfg.mixture.temperature),
    )
    kept_characters: collections.Counter = collections.Counter()
    for result in results:
        kept_characters.update(result.kept_characters)
    full_report = report_lib.build_report(
        unit_stats=stats["units"],
        source_names=source_names,
        removals=removal_tally,
        dedup=stats.get("dedup", {}),
        outputs=outputs,
        kept_characters=dict(kept_characters),
        mixture={"mode": cfg.mixture.mode, "temperature": cfg.mixture.temperature,
                 "weights": weights},
        examples_per_reason=cfg.output.examples_per_reason,
        config=config_lib.as_json(cfg),
        seconds=stats.get("seconds", {}),
    )  # fmt: skip
    paths.write_text_atomic(
        output / REPORT_FILENAME, json.dumps(full_report, indent=2, ensure_ascii=False) + "\n"
    )
    manifest = manifest_lib.Manifest(
        data_dir=str(output),
        tokenizer_file=TOKENIZER_FILENAME,
        vocab_size=tokenizer.vocab_size,
        special_ids=tokenizer.special_ids,
        splits={split: manifest_lib.SplitInfo(shards=shards[split]) for split in SPLITS},
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


def _tokenize_partitions(
    partitions: list[Partition], cfg: ml_collections.ConfigDict, local: pathlib.Path, output: str
) -> tuple[tokenizer_lib.Tokenizer, list[PartitionResult], dict[str, float]]:
    """Trains (or copies) the tokenizer into `local`, then writes every partition's shards
    under `output`, in `executor.workers` processes sharing one pool; returns the tokenizer,
    the partitions' results and the seconds of both steps."""
    started = time.perf_counter()
    workers = int(cfg.executor.workers) or os.cpu_count() or 1
    processes = max(1, min(workers, len(partitions)))
    encode_threads = max(1, workers // processes)
    tokenizer_path = local / TOKENIZER_FILENAME
    with _partition_runner(processes) as run_on_partitions:
        if cfg.tokenizer.path:
            shutil.copyfile(os.path.expanduser(cfg.tokenizer.path), tokenizer_path)
            tokenizer = tokenizer_lib.Tokenizer.load(tokenizer_path)
        else:
            tokenizer = tokenizer_lib.train_tokenizer(
                tokenizer_sample.tokenizer_training_sample(partitions, cfg, run_on_partitions),
                tokenizer_path,
                vocab_size=cfg.tokenizer.vocab_size,
                model_type=cfg.tokenizer.model_type,
                seed=cfg.tokenizer.seed,
                num_threads=TOKENIZER_TRAINING_THREADS,
            )
        tokenizer_done = time.perf_counter()
        indexed_results = run_on_partitions(
            _write_partition_task,
            (
                (partition, str(tokenizer_path), output, index, cfg, encode_threads)
                for index, partition in enumerate(partitions)
            ),
        )
        results = [result for _, result in sorted(indexed_results, key=lambda pair: pair[0])]
    seconds = {
        "train_tokenizer": round(tokenizer_done - started, 2),
        "tokenize_and_write": round(time.perf_counter() - tokenizer_done, 2),
    }
    return tokenizer, results, seconds


def _upload(local: pathlib.Path, target: epath.Path) -> None:
    """Copies a local file to `target` (any epath), streaming: shards are hundreds of MiB."""
    with open(local, "rb") as source, target.open("wb") as destination:
        shutil.copyfileobj(source, destination, _UPLOAD_BLOCK_BYTES)


# Runs a task over argument tuples (one per partition); yields the results in input order.
PartitionRunner = Callable[[Callable[..., Any], Iterable[tuple]], Iterator[Any]]


@contextlib.contextmanager
def _partition_runner(processes: int) -> Iterator[PartitionRunner]:
    """A runner in this process (`processes` 1) or over a pool of spawned processes, shared by
    the sample and the write pass so the pool starts once."""
    if processes <= 1:
        yield lambda task, arguments: (task(*args) for args in arguments)
        return
    context = multiprocessing.get_context("spawn")  # fork is unsafe next to JAX threads
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
        yield functools.partial(_bounded_map, pool, processes)


def _bounded_map(
    pool: concurrent.futures.Executor, window: int, task: Callable[..., Any], arguments: Iterable
) -> Iterator[Any]:
    """`task(*args)` for every args, run in `pool`, yielded as they finish with at most `window`
    tasks submitted and not yet consumed: results (a tokenizer sample each) never pile up in
    memory, as they would with `pool.map` when there are many more partitions than workers,
    and one large partition does not hold the other workers idle (results come in completion
    order: callers merge order-free or sort)."""
    pending: set[concurrent.futures.Future] = set()
    for args in arguments:
        pending.add(pool.submit(task, *args))
        if len(pending) >= window:
            done, pending = concurrent.futures.wait(
                pending, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in done:
                yield future.result()
    for future in concurrent.futures.as_completed(pending):
        yield future.result()


class _ShardSequence:
    """The shards of one (source, split) in one partition: a new one is started when the
    current one holds `shard_bytes` bytes of tokens. For a bucket output each shard is written
    on local disk and uploaded once closed, so the disk holds one shard at a time."""

    def __init__(self, output_dir: str, source: str, split: str, partition: int,
                 shard_bytes: int):  # fmt: skip
        self._output = epath.Path(output_dir)
        self._staging = (
            pathlib.Path(tempfile.mkdtemp(prefix=_SCRATCH_PREFIX))
            if paths.is_remote(output_dir)
            else None
        )
        self._source, self._split, self._partition = source, split, partition
        self._shard_bytes = shard_bytes
        self._writer: ArrayRecordWriter | None = None
        self.shards: list[manifest_lib.ShardInfo] = []

    def write(self, token_ids: list[int]) -> None:
        current = self.shards[-1] if self.shards else None
        if current is None or current.tokens * _TOKEN_BYTES >= self._shard_bytes:
            self.start_shard()
            current = self.shards[-1]
        self._writer.write(np.asarray(token_ids, dtype=manifest_lib.TOKEN_DTYPE).tobytes())
        self.shards[-1] = dataclasses.replace(
            current, documents=current.documents + 1, tokens=current.tokens + len(token_ids)
        )

    def start_shard(self) -> None:
        self.close()
        name = shard_filename(self._source, self._split, self._partition, len(self.shards))
        (self._output / self._source).mkdir(parents=True, exist_ok=True)
        self._writer = ArrayRecordWriter(str(self._local_path(name)), _ARRAY_RECORD_OPTIONS)
        self.shards.append(manifest_lib.ShardInfo(name, 0, 0, self._source))

    def _local_path(self, name: str) -> pathlib.Path:
        if self._staging is None:
            return pathlib.Path(self._output / name)
        return self._staging / name.replace("/", "_")

    def close(self) -> None:
        """Closes the current shard (uploading it for a bucket output)."""
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        if self._staging is not None:
            local = self._local_path(self.shards[-1].file)
            _upload(local, self._output / self.shards[-1].file)
            local.unlink()

    def finish(self) -> None:
        self.close()
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)


def write_partition(
    documents: Iterable[Document],
    tokenizer_file: str,
    output_dir: str,
    partition: int,
    cfg: ml_collections.ConfigDict,
    encode_threads: int = 1,
) -> PartitionResult:
    """Tokenizes one partition's documents (in order) into its own shards of each source and
    split, `<source>/<split>-p<partition>-<index>.array_record` under `output_dir` (local or any
    path ArrayRecord writes). Runs anywhere: a local worker process or a Beam worker."""
    tokenizer = tokenizer_lib.Tokenizer.load(tokenizer_file)
    sequences: dict[tuple[str, str], _ShardSequence] = {}
    kept_characters: collections.Counter = collections.Counter()

    def flush(group: list[tuple[Document, str]]) -> None:
        texts = [document.text for document, _ in group]
        for (document, split), token_ids in zip(
            group, tokenizer.encode_batch(texts, num_threads=encode_threads), strict=True
        ):
            key = (document.source, split)
            if key not in sequences:
                sequences[key] = _ShardSequence(
                    output_dir, document.source, split, partition, int(cfg.output.shard_bytes)
                )
            sequences[key].write(token_ids)
            kept_characters[document.source] += len(document.text)

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
        for sequence in sequences.values():
            sequence.finish()
    shards = {
        split: tuple(
            shard
            for (_, s), sequence in sequences.items()
            if s == split
            for shard in sequence.shards
        )
        for split in SPLITS
    }
    return PartitionResult(shards=shards, kept_characters=dict(kept_characters))


def _write_partition_task(
    partition: Partition,
    tokenizer_file: str,
    output_dir: str,
    index: int,
    cfg: ml_collections.ConfigDict,
    encode_threads: int,
) -> tuple[int, PartitionResult]:
    """(index, result): results arrive in completion order."""
    return index, write_partition(
        partition(), tokenizer_file, output_dir, index, cfg, encode_threads
    )


def _manifest_shards(
    results: Sequence[PartitionResult], source_names: list[str], output_dir: str
) -> dict[str, tuple[manifest_lib.ShardInfo, ...]]:
    """Every split's shards: sources in config order, partitions in order within a source (so a
    source's documents stay in order_key order). A (source, split) without documents gets one
    empty shard, so every source is listed in every split as before."""
    ordered: dict[str, tuple[manifest_lib.ShardInfo, ...]] = {}
    for split in SPLITS:
        shards = []
        for name in source_names:
            own = [s for result in results for s in result.shards[split] if s.source == name]
            if not own:
                empty = _ShardSequence(output_dir, name, split, partition=0, shard_bytes=1)
                empty.start_shard()
                empty.finish()
                own = empty.shards
            shards.extend(own)
        ordered[split] = tuple(shards)
    return ordered


def _output_counts(
    results: Sequence[PartitionResult], source_names: list[str]
) -> dict[str, dict[str, dict[str, int]]]:
    """{source: {split: {'documents': n, 'tokens': n}}} over all partitions."""
    outputs = {
        name: {split: {"documents": 0, "tokens": 0} for split in SPLITS} for name in source_names
    }
    for result in results:
        for (source, split), counts in result.counts().items():
            outputs[source][split]["documents"] += counts["documents"]
            outputs[source][split]["tokens"] += counts["tokens"]
    return outputs


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
