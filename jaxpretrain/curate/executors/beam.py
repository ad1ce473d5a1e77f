"""The Apache Beam executor: the curation stages as one Beam pipeline (the `beam` extra).

    from jaxpretrain.curate.executors.beam import run_beam
    manifest_path = run_beam(cfg, "/data/prepared", ["--runner=DirectRunner"])

The same pipeline runs on the DirectRunner (here, in tests) and on Dataflow, Flink or Spark
(see docs/scale_out.md); every step is a ParDo or a keyed group-by, nothing gathers the corpus
on one worker:

  Create(jobs of work units) ─► Reshuffle ─► read, clean, filter (Curator) ─► removals, scores
  ─► duplicate input ids: GroupByKey on (source, id), later copies counted (as dedup/run.py)
  ─► exact dedup: key by exact_dedup_key, GroupByKey, keep the smallest order_key
  ─► MinHash: band keys per document, GroupByKey per bucket, star edges from the bucket's smallest
     document, connected components (dedup/components.py), join members back to documents
  ─► finalize on the workers (executors/beam_finalize.py): tokenizer trained on a bounded
     sample, each work unit's kept documents tokenized into its own shards, removed.jsonl and
     scores.jsonl sorted out of core; unit stats and counters as JSONL under the work directory
  then, in the launching process: report.json and the manifest, from counts and shard lists;
  then the work files are deleted (unless executor.keep_work).

A document is identified in the graph by its node `(order_key, id, source)`: tuples order by
the order key first, so the smallest node of a cluster is the document the local executor keeps.
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import time
from collections.abc import Generator, Iterable, Iterator
from typing import Any

import apache_beam as beam
import ml_collections
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from jaxpretrain import paths
from jaxpretrain.curate import config as config_lib
from jaxpretrain.curate import finalize as finalize_lib
from jaxpretrain.curate import report as report_lib
from jaxpretrain.curate import sources, stages
from jaxpretrain.curate.dedup import run as dedup_run
from jaxpretrain.curate.dedup.components import ConnectedComponents
from jaxpretrain.curate.document import Document
from jaxpretrain.curate.executors import beam_finalize
from jaxpretrain.curate.executors.beam_finalize import KEPT_ORDER_KEY

WORK_DIR_NAME = ".work"
# Removal reasons of the dedup stages (the local executor writes the same strings).
EXACT_DUPLICATE_REASON = "exact duplicate"
NEAR_DUPLICATE_REASON = "near duplicate"
_REMOVALS, _SCORES, _UNITS, _COUNTERS = "removals", "scores", "units", "counters"
_DUPLICATE_IDS = "duplicate_ids"
# Work-directory outputs of a run: deleted after a successful run (unless executor.keep_work),
# and at the start of every run (a failed run's files would be read back as the new run's).
_OUTPUTS = (
    "removed", "scores", _UNITS, _COUNTERS, _DUPLICATE_IDS, beam_finalize.PARTITIONS,
    beam_finalize.TALLY,
)  # fmt: skip

Node = tuple[str, str, str]  # (order_key, document id, source)


def _node(doc: Document) -> Node:
    return stages.order_key(doc), doc.id, doc.source


def _dedup_removal(doc: Document, stage: str, reason: str, kept: Node) -> dict[str, str]:
    return {
        **stages.removal_record(doc, stage, reason, duplicate_of=kept[1]),
        KEPT_ORDER_KEY: kept[0],
    }


class _ReadAndCurate(beam.DoFn):
    """One job (a list of (unit position, work unit)) in, its documents cleaned and filtered out.

    Main output: kept documents; tagged outputs: removal records, score records (with their
    order key, for sorting) and each unit's counters (with its position, for sorting).
    """

    def __init__(self, cfg: ml_collections.ConfigDict):
        self._cfg = cfg
        self._curator: stages.Curator | None = None

    def setup(self) -> None:
        self._curator = stages.Curator(self._cfg)

    def process(self, job: list[tuple[int, stages.WorkUnit]]) -> Iterator[Any]:
        remaining = job[0][1].spec.max_documents
        for position, unit in job:
            stats = yield from self._process_unit(unit, position, remaining)
            if remaining >= 0:
                remaining = max(0, remaining - stats["read"]["documents"])
            yield beam.pvalue.TaggedOutput(_UNITS, {"position": position, "stats": stats})

    def _process_unit(
        self, unit: stages.WorkUnit, position: int, limit: int
    ) -> Generator[Any, None, dict]:
        """Yields the unit's outputs (at most `limit` documents read, -1: all); returns its
        counters (`report.new_unit_stats`)."""
        stats = report_lib.new_unit_stats(
            unit.spec.name, unit.shard.index, str(unit.shard.location)
        )
        source_report = sources.SourceReport(source=unit.spec.name)
        examples_per_reason = self._cfg.output.examples_per_reason
        for doc in stages.read_work_unit(unit, source_report, limit):
            report_lib.count_read(stats, doc)
            outcome = self._curator.process(doc)
            report_lib.count_outcome(stats, doc, outcome, examples_per_reason)
            if outcome.scores:
                yield beam.pvalue.TaggedOutput(_SCORES, {
                    "order_key": stages.order_key(doc), "id": doc.id, "source": doc.source,
                    "kept": outcome.removal is None,
                    "reason": outcome.removal["reason"] if outcome.removal else None,
                    "scores": outcome.scores,
                })  # fmt: skip
            if outcome.removal is not None:
                yield beam.pvalue.TaggedOutput(_REMOVALS, outcome.removal)
            else:
                # Finalize groups kept documents by unit again after dedup (one partition each).
                yield outcome.document.with_metadata(**{beam_finalize.PARTITION_KEY: position})
        report_lib.add_source_report(stats, source_report)
        return stats


def curation_jobs(units: list[stages.WorkUnit]) -> list[list[tuple[int, stages.WorkUnit]]]:
    """Units grouped as the local executor groups them: one job per unit, except that the units
    of a source with `max_documents >= 0` form one job read in order, so the cap means "the
    first N documents" (as in executors/local.py). Each unit carries its position in `units`."""
    jobs: list[list[tuple[int, stages.WorkUnit]]] = []
    capped: dict[int, list[tuple[int, stages.WorkUnit]]] = {}
    for position, unit in enumerate(units):
        if unit.spec.max_documents >= 0:
            if unit.source_rank not in capped:
                capped[unit.source_rank] = []
                jobs.append(capped[unit.source_rank])
            capped[unit.source_rank].append((position, unit))
        else:
            jobs.append([(position, unit)])
    return jobs


def _keep_smallest_exact(key: str, docs: Iterable[Document]) -> Iterator[Any]:
    """One exact-duplicate group: the smallest node is kept, the others are removed with
    `duplicate_of` naming it. Iterates the group twice (a re-iterable on every runner) instead
    of holding a hot key's copies in a list."""
    kept = min(docs, key=_node)
    kept_node = _node(kept)
    yield kept
    for doc in docs:
        if _node(doc) != kept_node:
            yield beam.pvalue.TaggedOutput(
                _REMOVALS, _dedup_removal(doc, "exact_dedup", EXACT_DUPLICATE_REASON, kept_node)
            )


class _BandRecords(beam.DoFn):
    """A batch of documents in, one (band key, (node, signature or None)) per band and document
    out; signatures are hashed a batch at a time (vectorised), and carried only when edges are
    verified."""

    def __init__(self, cfg: ml_collections.ConfigDict):
        self._cfg = cfg

    def process(self, batch: list[Document]) -> Iterator[Any]:
        signatures = stages.minhash_signatures([doc.text for doc in batch], self._cfg)
        with_words = stages.has_words(signatures)
        keys = stages.band_key_array(signatures, self._cfg)
        verify = self._cfg.dedup.minhash.verify_threshold is not None
        without_words = 0
        for doc, signature, doc_has_words, doc_keys in zip(
            batch, signatures, with_words, keys, strict=True
        ):
            if not doc_has_words:
                without_words += 1
                continue
            value = (_node(doc), signature.tobytes() if verify else None)
            for band, bucket in enumerate(doc_keys):
                yield f"{band}:{int(bucket):016x}", value
        bucket_records = int(with_words.sum()) * keys.shape[1]
        yield beam.pvalue.TaggedOutput(_COUNTERS, ("minhash/bucket_records", bucket_records))
        yield beam.pvalue.TaggedOutput(
            _COUNTERS, ("minhash/documents_without_words", without_words)
        )


def _star_edges(verify_threshold: float | None):
    """Bucket -> edges (smallest member, other member), as the local LSH's star edges; with a
    threshold, an edge whose signatures agree on fewer permutations is dropped."""

    def edges(bucket: str, members: Iterable[tuple[Node, bytes | None]]) -> Iterator[Any]:
        first_node, first_signature = min(members, key=lambda member: member[0])
        for node, signature in members:
            if node == first_node:
                continue
            yield beam.pvalue.TaggedOutput(_COUNTERS, ("minhash/candidate_edges", 1))
            if verify_threshold is not None:
                agreement = np.mean(
                    np.frombuffer(signature, np.uint32) == np.frombuffer(first_signature, np.uint32)
                )
                if agreement < verify_threshold:
                    yield beam.pvalue.TaggedOutput(_COUNTERS, ("minhash/rejected_edges", 1))
                    continue
            yield first_node, node

    return edges


def _split_near_duplicates(node: Node, joined: dict[str, list]) -> Iterator[Any]:
    """A document joined with its component's representative (if it is not one itself)."""
    (doc,) = joined["documents"]
    representatives = joined["representatives"]
    if not representatives:
        yield doc
        return
    (representative,) = representatives
    yield beam.pvalue.TaggedOutput(
        _REMOVALS, _dedup_removal(doc, "minhash_dedup", NEAR_DUPLICATE_REASON, representative)
    )


def _exact_dedup(documents: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
    results = (
        documents
        | "Exact/Key" >> beam.Map(lambda doc: (stages.exact_dedup_key(doc), doc))
        | "Exact/Group" >> beam.GroupByKey()
        | "Exact/KeepSmallest"
        >> beam.FlatMapTuple(_keep_smallest_exact).with_outputs(_REMOVALS, main="kept")
    )
    return results.kept, results[_REMOVALS]


def _repeated_ids(documents: beam.PCollection) -> beam.PCollection:
    """(order_key, source, id) of every document whose (source, id) a document earlier in
    order_key order already has: what dedup/run.py reports as duplicate input ids."""

    def later_copies(key: tuple[str, str], order_keys: Iterable[str]) -> Iterator[tuple]:
        for order_key in sorted(order_keys)[1:]:
            yield order_key, *key

    return (
        documents
        | "DuplicateIds/Key" >> beam.Map(lambda doc: ((doc.source, doc.id), stages.order_key(doc)))
        | "DuplicateIds/Group" >> beam.GroupByKey()
        | "DuplicateIds/Later" >> beam.FlatMapTuple(later_copies)
    )


def _minhash_dedup(
    documents: beam.PCollection, cfg: ml_collections.ConfigDict
) -> tuple[beam.PCollection, beam.PCollection, list[beam.PCollection]]:
    minhash = config_lib.minhash_config(cfg)
    bands = (
        documents
        | "MinHash/Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=minhash.batch_size)
        | "MinHash/BandKeys" >> beam.ParDo(_BandRecords(cfg)).with_outputs(_COUNTERS, main="bands")
    )
    edges = (
        bands.bands
        | "MinHash/GroupBuckets" >> beam.GroupByKey()
        | "MinHash/StarEdges"
        >> beam.FlatMapTuple(_star_edges(minhash.verify_threshold)).with_outputs(
            _COUNTERS, main="edges"
        )
    )
    max_rounds = int(cfg.executor.components_max_rounds)
    representatives = edges.edges | "MinHash/Components" >> ConnectedComponents(
        max_rounds=max_rounds
    )
    joined = (
        {
            "documents": documents | "MinHash/ByNode" >> beam.Map(lambda doc: (_node(doc), doc)),
            "representatives": representatives,
        }
        | "MinHash/Join" >> beam.CoGroupByKey()
        | "MinHash/Split"
        >> beam.FlatMapTuple(_split_near_duplicates).with_outputs(_REMOVALS, main="kept")
    )
    return joined.kept, joined[_REMOVALS], [bands[_COUNTERS], edges[_COUNTERS]]


def build_pipeline(
    pipeline: beam.Pipeline,
    cfg: ml_collections.ConfigDict,
    units: list[stages.WorkUnit],
    work_dir: str,
    output_dir: str,
) -> None:
    """Adds the curation and finalize stages to `pipeline`: shards, tokenizer, removed.jsonl
    and scores.jsonl go to `output_dir`; unit stats, counters, partition results and the
    removal tally to `work_dir` (read back by `run_beam`)."""
    curated = (
        pipeline
        | "Jobs" >> beam.Create(curation_jobs(units))
        # Spread jobs over workers: Create would otherwise keep them in one bundle.
        | "Spread" >> beam.Reshuffle()
        | "ReadAndCurate"
        >> beam.ParDo(_ReadAndCurate(cfg)).with_outputs(_REMOVALS, _SCORES, _UNITS, main="kept")
    )
    kept = curated.kept
    removals = [curated[_REMOVALS]]
    counters = [kept | "Count/FilterKept" >> beam.Map(lambda _: ("filter/kept", 1))]
    repeated_ids = _repeated_ids(kept)
    counters.append(repeated_ids | "Count/DuplicateIds" >> beam.Map(lambda _: (_DUPLICATE_IDS, 1)))
    _ = (
        repeated_ids
        | "DuplicateIds/First" >> beam.combiners.Top.Smallest(dedup_run.DUPLICATE_ID_EXAMPLES)
        | "DuplicateIds/Examples"
        >> beam.Map(lambda repeats: [{"source": source, "id": id_} for _, source, id_ in repeats])
        | "DuplicateIds/Json" >> beam.Map(json.dumps)
        | "DuplicateIds/Write"
        >> beam.io.WriteToText(FileSystems.join(work_dir, _DUPLICATE_IDS, "part"))
    )
    if cfg.dedup.exact:
        kept, exact_removals = _exact_dedup(kept)
        removals.append(exact_removals)
    if cfg.dedup.minhash.enabled:
        counters.append(kept | "Count/MinHashIn" >> beam.Map(lambda _: ("minhash/in", 1)))
        kept, near_removals, minhash_counters = _minhash_dedup(kept, cfg)
        removals.append(near_removals)
        counters.extend(minhash_counters)
    all_removals = tuple(removals) | "Removals/Flatten" >> beam.Flatten()
    counters.append(
        beam_finalize.add_finalize_stages(
            kept, all_removals, curated[_SCORES], cfg, output_dir, work_dir
        )
    )

    def write(collection: beam.PCollection, name: str) -> None:
        _ = (
            collection
            | f"Write/{name}/Json" >> beam.Map(lambda record: json.dumps(record, sort_keys=True))
            | f"Write/{name}/Files"
            >> beam.io.WriteToText(
                FileSystems.join(work_dir, name, "part"), file_name_suffix=".jsonl"
            )
        )

    write(curated[_UNITS], _UNITS)
    write(
        tuple(counters)
        | "Counters/Flatten" >> beam.Flatten()
        | "Counters/Sum" >> beam.CombinePerKey(sum),
        _COUNTERS,
    )


def _read_jsonl(work_dir: str, name: str) -> list[Any]:
    return [json.loads(line) for line in beam_finalize.read_lines(work_dir, name)]


def _delete_work_outputs(work_dir: str) -> None:
    """Deletes the part files this executor writes under `work_dir`, nothing else (the work
    directory may be shared)."""
    patterns = [FileSystems.join(work_dir, name, "part*") for name in _OUTPUTS]
    stale = [m.path for result in FileSystems.match(patterns) for m in result.metadata_list]
    if stale:
        FileSystems.delete(stale)


def remove_work(work_dir: str) -> None:
    """After a successful run: deletes its work files (removed/ and scores/ hold a record per
    removed or scored document), then, on a local disk, the folders they were in and the work
    directory and its `.work` parent once empty. Object stores have no folders to remove."""
    _delete_work_outputs(work_dir)
    if paths.is_remote(work_dir):
        return
    work = pathlib.Path(work_dir)
    folders = [*(work / name for name in _OUTPUTS), work]
    if work.parent.name == WORK_DIR_NAME:  # the default, OUTPUT/.work/beam
        folders.append(work.parent)
    for folder in folders:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def read_counters(work_dir: str) -> dict[Any, int]:
    """The pipeline's summed counters: string keys, and tuple keys for the finalize counts."""
    return {
        tuple(key) if isinstance(key, list) else key: value
        for key, value in _read_jsonl(work_dir, _COUNTERS)
    }


def read_unit_stats(work_dir: str) -> list[dict[str, Any]]:
    """Every work unit's counters (`report.new_unit_stats`), in unit order."""
    records = sorted(_read_jsonl(work_dir, _UNITS), key=lambda record: record["position"])
    return [record["stats"] for record in records]


def dedup_summaries(
    cfg: ml_collections.ConfigDict, counters: dict[Any, int], work_dir: str
) -> dict[str, Any]:
    """{'exact', 'minhash', 'duplicate_ids'}: the dedup summaries of report.json, with the local
    executor's keys (`dedup.run.dedup_units`).

    `spilled_runs` is 0 (the runner's shuffle replaces the external sort). The other stats
    equal the local executor's: both count every candidate (star) edge and, with
    `verify_threshold` set, every rejected one.
    """
    (examples,) = _read_jsonl(work_dir, _DUPLICATE_IDS)
    summaries: dict[str, Any] = {
        "exact": None,
        "minhash": None,
        "duplicate_ids": {"count": counters.get(_DUPLICATE_IDS, 0), "examples": examples},
    }
    if cfg.dedup.exact:
        summaries["exact"] = beam_finalize.dedup_summary(
            counters, "exact_dedup", counters.get("filter/kept", 0), {"spilled_runs": 0.0}
        )
    if cfg.dedup.minhash.enabled:
        stats = {
            "spilled_runs": 0.0,
            "candidate_edges": float(counters.get("minhash/candidate_edges", 0)),
            "rejected_edges": float(counters.get("minhash/rejected_edges", 0)),
            "bucket_records": float(counters.get("minhash/bucket_records", 0)),
            "documents_without_words": float(counters.get("minhash/documents_without_words", 0)),
        }
        summaries["minhash"] = beam_finalize.dedup_summary(
            counters, "minhash_dedup", counters.get("minhash/in", 0), stats
        )
    return summaries


def run_beam(
    cfg: ml_collections.ConfigDict,
    output_dir: str,
    pipeline_options: list[str] | None = None,
    work_dir: str | None = None,
) -> str:
    """Curates `cfg`'s sources with Beam and writes the prepared directory; returns the manifest
    path.

    Args:
      cfg: the data config (`curate/config.py`); sources must be readable from the workers.
      output_dir: the prepared directory: the workers write its shards, tokenizer,
        removed.jsonl and scores.jsonl, this process its report and manifest (a local path, or
        one both can reach).
      pipeline_options: Beam flags, e.g. ['--runner=DataflowRunner', '--project=...'];
        None takes them from `cfg.executor.beam_options` (one string, split like a shell
        command line) when that key exists, else runs on the DirectRunner.
      work_dir: where the workers write their small outputs (unit stats, counters, partition
        results), read back here; any path Beam's FileSystems handle (gs://... on Dataflow).
        None: `cfg.executor.beam_work_dir` if set, else `<output_dir>/.work/beam`.

    The prepared directory equals the local executor's for the same config, except timings,
    `spilled_runs` (see `dedup_summaries`) and shard boundaries when input files are smaller
    than `output.shard_bytes` (Beam writes one finalize partition per input file, the local
    executor groups consecutive small files into one; the token streams are the same). After
    success the work files are deleted unless `executor.keep_work`.
    """
    work_dir, pipeline_seconds = run_pipeline(cfg, output_dir, pipeline_options, work_dir)
    return finish_run(cfg, output_dir, work_dir, pipeline_seconds)


def run_pipeline(
    cfg: ml_collections.ConfigDict,
    output_dir: str,
    pipeline_options: list[str] | None = None,
    work_dir: str | None = None,
) -> tuple[str, float]:
    """The Beam part of `run_beam` (same arguments): runs the pipeline to completion; returns
    the work directory it used and the seconds it took."""
    started = time.perf_counter()
    config_lib.validate_data_config(cfg)
    units = stages.list_work_units(cfg)  # raises for a missing source before any work
    if pipeline_options is None:
        pipeline_options = shlex.split(cfg.executor.beam_options)
    work_dir = (
        work_dir
        or cfg.executor.beam_work_dir
        or os.path.join(str(output_dir), WORK_DIR_NAME, "beam")
    )
    output = paths.resolve(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    finalize_lib.remove_previous_output(output)
    _delete_work_outputs(work_dir)  # an earlier run's files would be read back as ours
    pipeline = beam.Pipeline(options=PipelineOptions(pipeline_options))
    build_pipeline(pipeline, cfg, units, work_dir, str(output))
    pipeline.run().wait_until_finish()
    return work_dir, time.perf_counter() - started


def finish_run(
    cfg: ml_collections.ConfigDict, output_dir: str, work_dir: str, pipeline_seconds: float
) -> str:
    """What the launcher does after the pipeline: reads the unit stats and counters, writes
    report.json and the manifest (`beam_finalize.finish`), then deletes the work files unless
    `executor.keep_work` (as the local executor does); returns the manifest path."""
    counters = read_counters(work_dir)
    stats = {
        "units": read_unit_stats(work_dir),
        "dedup": dedup_summaries(cfg, counters, work_dir),
        "seconds": {"beam_pipeline": round(pipeline_seconds, 2)},
    }
    manifest_path = beam_finalize.finish(cfg, output_dir, work_dir, stats)
    if not cfg.executor.keep_work:
        remove_work(work_dir)
    return manifest_path
