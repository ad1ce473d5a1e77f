"""Finalize as Beam stages on the workers; the launcher is left with counts and shard lists.

`add_finalize_stages` takes the pipeline's kept documents, removals and scores and adds

  kept ─► CombineGlobally(TokenizerSample): the train documents with the smallest id hashes
        up to a byte budget ─► one worker trains the tokenizer ─► OUTPUT/tokenizer.model
  kept ─► key by work unit ─► GroupByKey ─► one worker per unit sorts it by order key and runs
        `finalize.write_partition` (tokenizer file as a side input) ─► its shards in OUTPUT and
        a PartitionResult (shard infos and counts) in WORK/partitions/
  removals ─► JSONL parts in WORK ─► one worker streams them through report.write_removals
        (external sort, `output.sort_buffer_bytes` in memory) into OUTPUT/removed.jsonl and
        returns their RemovalTally (counts and examples) ─► WORK/removal_tally/
  scores ─► JSONL parts in WORK ─► one worker, report.external_sort by order key ─►
        OUTPUT/scores.jsonl
  dedup removals ─► cluster sizes (members per kept document, then clusters per size)

`finish` runs in the launcher once the pipeline is done: from the unit stats and dedup
summaries it is given and the partition results (one per unit) and removal tally in WORK, it
writes report.json and the manifest. None of these grows with the number of documents, so
neither does the launcher's memory (tests/test_curate_beam.py).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import ml_collections
from apache_beam.io.filesystems import FileSystems

from jaxpretrain import paths
from jaxpretrain import tokenizer as tokenizer_lib
from jaxpretrain.curate import finalize as finalize_lib
from jaxpretrain.curate import report as report_lib
from jaxpretrain.curate import stages
from jaxpretrain.curate import tokenizer_sample as sample_lib
from jaxpretrain.curate.document import Document

# Metadata key of the work unit (= finalize partition) a document was read from; stamped by the
# Beam reader so documents can be grouped per unit after dedup.
PARTITION_KEY = "_partition"
# Work-directory outputs the launcher reads back; none grows with the number of documents.
PARTITIONS, TALLY = "partitions", "removal_tally"
# Counter-key prefix of dedup cluster sizes: (CLUSTER_SIZE, stage, size) -> clusters.
CLUSTER_SIZE = "cluster_size"
DEDUP_STAGES = ("exact_dedup", "minhash_dedup")
# Carried on dedup removal records inside the pipeline only, dropped before writing: the kept
# document's order key names its cluster. Not its (source, id): input ids may repeat (reported
# as duplicate ids), and two clusters whose kept documents share an id are still two clusters.
KEPT_ORDER_KEY = "_kept_order_key"


def cluster_size_counters(removals: beam.PCollection, stage: str) -> beam.PCollection:
    """((CLUSTER_SIZE, stage, size), 1) per duplicate cluster of `stage`: members are counted
    per kept document (by its unique order key, as the local executor counts by document
    index), so no worker holds more than one cluster's count."""
    return (
        removals
        | f"Clusters/{stage}/Filter" >> beam.Filter(lambda r: r["stage"] == stage)
        | f"Clusters/{stage}/Key" >> beam.Map(lambda r: (r[KEPT_ORDER_KEY], 1))
        | f"Clusters/{stage}/Members" >> beam.CombinePerKey(sum)
        | f"Clusters/{stage}/Size" >> beam.MapTuple(lambda _, n: ((CLUSTER_SIZE, stage, n + 1), 1))
    )


def dedup_summary(
    counters: dict[Any, int], stage: str, documents_in: int, stats: dict[str, float]
) -> dict[str, Any]:
    """`report.dedup_summary`'s dict for one dedup stage, from the summed counters."""
    sizes = {key[2]: n for key, n in counters.items() if key[:2] == (CLUSTER_SIZE, stage)}
    return {
        "documents_in": documents_in,
        "removed": sum((size - 1) * n for size, n in sizes.items()),
        "clusters": sum(sizes.values()),
        "largest_cluster": max(sizes, default=1),
        "cluster_sizes": {str(size): sizes[size] for size in sorted(sizes)},
        "stats": stats,
    }


class TokenizerSample(beam.CombineFn):
    """`tokenizer_sample.TrainingSample` as a combiner: the train texts with the smallest
    sample ranks that fit in `tokenizer.max_training_bytes`, the same whatever the bundles (see
    its docstring), so the tokenizer equals the local executor's."""

    def __init__(self, cfg: ml_collections.ConfigDict):
        self._cfg = cfg
        self._max_bytes = int(cfg.tokenizer.max_training_bytes)
        self._seed = int(cfg.tokenizer.seed)

    def create_accumulator(self) -> sample_lib.TrainingSample:
        return sample_lib.TrainingSample(self._max_bytes)

    def add_input(self, sample: sample_lib.TrainingSample, doc: Document):
        if stages.assign_split(doc, self._cfg) == stages.TRAIN_SPLIT:
            sample.offer(sample_lib.sample_rank(doc, self._seed), doc.text)
        return sample

    def merge_accumulators(self, samples: Iterable[sample_lib.TrainingSample]):
        merged = self.create_accumulator()
        for sample in samples:
            merged.merge(sample)
        return merged

    def extract_output(self, sample: sample_lib.TrainingSample) -> list[str]:
        return sample.texts()


def _write_tokenizer(
    texts: list[str], cfg: ml_collections.ConfigDict, output_dir: str, kept_documents: int
) -> str:
    """Trains the tokenizer on `texts` (or copies `tokenizer.path`) into `output_dir` on one
    worker; returns its path, or '' when no document survived (the launcher reports that).

    Documents kept but none of them in the train split: `train_tokenizer` raises the local
    executor's error ("... the train split is empty"), instead of every partition writer
    failing later on a missing tokenizer file."""
    if not kept_documents and not cfg.tokenizer.path:
        return ""
    with tempfile.TemporaryDirectory() as scratch:
        local = os.path.join(scratch, finalize_lib.TOKENIZER_FILENAME)
        if cfg.tokenizer.path:
            shutil.copyfile(os.path.expanduser(cfg.tokenizer.path), local)
        else:
            tokenizer_lib.train_tokenizer(
                texts,
                local,
                vocab_size=cfg.tokenizer.vocab_size,
                model_type=cfg.tokenizer.model_type,
                seed=cfg.tokenizer.seed,
                num_threads=finalize_lib.TOKENIZER_TRAINING_THREADS,
            )
        return _copy_out(local, output_dir, finalize_lib.TOKENIZER_FILENAME)


def _copy_out(local_path: str | os.PathLike, output_dir: str, name: str) -> str:
    """Copies a file written on local disk to `output_dir` (local or a bucket); returns the
    destination."""
    destination = paths.resolve(output_dir) / name
    with open(local_path, "rb") as source, destination.open("wb") as out:
        shutil.copyfileobj(source, out, length=1 << 20)
    return str(destination)


class _WritePartition(beam.DoFn):
    """(partition, documents) in, the PartitionResult of its shards out (base64 pickle)."""

    def __init__(self, cfg: ml_collections.ConfigDict, output_dir: str):
        self._cfg = cfg
        self._output_dir = output_dir

    def process(self, element: tuple[int, Iterable[Document]], tokenizer_file: str):
        partition, documents = element
        # One input shard's kept documents: the only per-unit state held on a worker.
        ordered = sorted(documents, key=stages.order_key)
        result = finalize_lib.write_partition(
            ordered, tokenizer_file, self._output_dir, partition, self._cfg
        )
        yield encode(PartitionOutput(partition, result))


@dataclasses.dataclass(frozen=True)
class PartitionOutput:
    partition: int
    result: finalize_lib.PartitionResult


def encode(value: Any) -> str:
    """A picklable value as one text line (what WriteToText writes, `decode` reads)."""
    return base64.b64encode(pickle.dumps(value)).decode("ascii")


def decode(line: str) -> Any:
    return pickle.loads(base64.b64decode(line))


def _read_json_files(paths: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Streams the records of JSONL files one line at a time."""
    for path in paths:
        with FileSystems.open(path) as lines:
            for line in lines:
                yield json.loads(line)


def _write_removed_file(
    part_files: list[str], cfg: ml_collections.ConfigDict, output_dir: str
) -> report_lib.RemovalTally:
    """On one worker: removed.jsonl in removed-order through report's external sort (bounded
    memory: `output.sort_buffer_bytes`), counted on the way."""
    with tempfile.TemporaryDirectory() as scratch:
        local = os.path.join(scratch, finalize_lib.REMOVED_FILENAME)
        tally = report_lib.write_removals(
            local,
            _read_json_files(sorted(part_files)),
            scratch_dir=os.path.join(scratch, "runs"),
            sort_buffer_bytes=int(cfg.output.sort_buffer_bytes),
            examples_per_reason=int(cfg.output.examples_per_reason),
        )
        _copy_out(local, output_dir, finalize_lib.REMOVED_FILENAME)
    return tally


def _write_scores_file(
    part_files: list[str], cfg: ml_collections.ConfigDict, output_dir: str
) -> None:
    """On one worker: scores.jsonl in order-key order (the local executor's order), through
    report's external sort; the order key itself is not written."""

    def without_order_key(records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for record in records:
            record.pop("order_key")
            yield record

    with tempfile.TemporaryDirectory() as scratch:
        ordered = report_lib.external_sort(
            _read_json_files(sorted(part_files)),
            lambda record: (record["order_key"],),
            os.path.join(scratch, "runs"),
            int(cfg.output.sort_buffer_bytes),
        )
        local = os.path.join(scratch, finalize_lib.SCORES_FILENAME)
        report_lib.write_jsonl(local, without_order_key(ordered))
        _copy_out(local, output_dir, finalize_lib.SCORES_FILENAME)


def _write_json_parts(records: beam.PCollection, name: str, work_dir: str) -> beam.PCollection:
    """Writes records as JSONL part files under WORK/<name>/; returns their paths, one element
    (a list) once all are written."""
    return (
        records
        | f"{name}/Json" >> beam.Map(lambda record: json.dumps(record, sort_keys=True))
        | f"{name}/Files" >> beam.io.WriteToText(FileSystems.join(work_dir, name, "part"))
        | f"{name}/AllFiles" >> beam.combiners.ToList()
    )


def _write_lines(lines: beam.PCollection, name: str, work_dir: str) -> None:
    _ = lines | f"{name}/Write" >> beam.io.WriteToText(FileSystems.join(work_dir, name, "part"))


def add_finalize_stages(
    kept: beam.PCollection,
    removals: beam.PCollection,
    scores: beam.PCollection,
    cfg: ml_collections.ConfigDict,
    output_dir: str,
    work_dir: str,
) -> beam.PCollection:
    """Adds the tokenizer, shard, removed.jsonl and scores.jsonl stages; returns the dedup
    cluster-size counters ((key, 1) pairs) for the pipeline's counter sum.

    `kept` documents carry PARTITION_KEY in their metadata; dedup removals carry KEPT_ORDER_KEY;
    scores carry their 'order_key'.
    """
    if cfg.tokenizer.path:
        texts = kept.pipeline | "Tokenizer/Given" >> beam.Create([[]])
    else:
        texts = kept | "Tokenizer/Sample" >> beam.CombineGlobally(TokenizerSample(cfg))
    kept_documents = kept | "Tokenizer/KeptDocuments" >> beam.combiners.Count.Globally()
    tokenizer_file = texts | "Tokenizer/Write" >> beam.Map(
        _write_tokenizer, cfg, output_dir, beam.pvalue.AsSingleton(kept_documents)
    )

    partitions = (
        kept
        | "Partitions/Key" >> beam.Map(lambda doc: (doc.metadata[PARTITION_KEY], doc))
        | "Partitions/Group" >> beam.GroupByKey()
        | "Partitions/Write"
        >> beam.ParDo(_WritePartition(cfg, output_dir), beam.pvalue.AsSingleton(tokenizer_file))
    )
    _write_lines(partitions, PARTITIONS, work_dir)

    removed_parts = _write_json_parts(
        removals | "Removed/Strip" >> beam.Map(_without_kept_order_key), "removed", work_dir
    )
    tally = removed_parts | "Removed/Sort" >> beam.Map(_write_removed_file, cfg, output_dir)
    _write_lines(tally | "Removed/Tally" >> beam.Map(encode), TALLY, work_dir)
    score_parts = _write_json_parts(scores, "scores", work_dir)
    _ = score_parts | "Scores/Sort" >> beam.Map(_write_scores_file, cfg, output_dir)

    counters = [cluster_size_counters(removals, stage) for stage in DEDUP_STAGES]
    return tuple(counters) | "Count/ClustersFlatten" >> beam.Flatten()


def _without_kept_order_key(record: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in record.items() if k != KEPT_ORDER_KEY}


def read_partition_outputs(work_dir: str) -> list[PartitionOutput]:
    """What the partition writers returned, in partition order (one small record per unit)."""
    outputs = [decode(line) for line in read_lines(work_dir, PARTITIONS)]
    return sorted(outputs, key=lambda output: output.partition)


def read_removal_tally(work_dir: str) -> report_lib.RemovalTally:
    (tally,) = [decode(line) for line in read_lines(work_dir, TALLY)]
    return tally


def read_lines(work_dir: str, name: str) -> Iterator[str]:
    """The lines of every WORK/<name>/part* file."""
    pattern = FileSystems.join(work_dir, name, "part*")
    for match in FileSystems.match([pattern])[0].metadata_list:
        with FileSystems.open(match.path) as lines:
            for raw in lines:
                yield raw.decode("utf-8").rstrip("\n")


def finish(
    cfg: ml_collections.ConfigDict,
    output_dir: str,
    work_dir: str,
    stats: dict[str, Any],
) -> str:
    """In the launcher, after the pipeline: report.json and the manifest from the unit
    counters and dedup summaries in `stats`, and the partition results and removal tally in
    `work_dir`; returns the manifest path. Reads nothing per document."""
    output = paths.resolve(output_dir)
    results = [output.result for output in read_partition_outputs(work_dir)]
    if not any(result.counts() for result in results):
        raise ValueError(
            f"No document survived curation for {output}; see the removals and skipped "
            "inputs, fix the sources or loosen the filters in the data config."
        )
    tokenizer = tokenizer_lib.Tokenizer.load(output / finalize_lib.TOKENIZER_FILENAME)
    tally = read_removal_tally(work_dir)
    return finalize_lib.write_report_and_manifest(results, tally, stats, cfg, output, tokenizer)
