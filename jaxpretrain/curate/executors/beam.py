"""The Apache Beam executor: the curation stages as one Beam pipeline (the `beam` extra).

    from jaxpretrain.curate.executors.beam import run_beam
    manifest_path = run_beam(cfg, "/data/prepared", ["--runner=DirectRunner"])

The same pipeline runs on the DirectRunner (here, in tests) and on Dataflow, Flink or Spark
(see docs/scale_out.md); every step is a ParDo or a keyed group-by, nothing gathers the corpus
on one worker:

  Create(jobs of work units) ─► Reshuffle ─► read, clean, filter (Curator) ─► removals, scores
  ─► exact dedup: key by exact_dedup_key, GroupByKey, keep the smallest order_key
  ─► MinHash: band keys per document, GroupByKey per bucket, star edges from the bucket's smallest
     document, connected components (dedup/components.py), join members back to documents
  ─► kept documents, removals, scores, unit stats and counters written as JSONL under
     <output_dir>/.work/
  then, in the launching process: stages.finalize (tokenizer, shards, report, manifest).

A document is identified in the graph by its node `(order_key, id, source)`: tuples order by
the order key first, so the smallest node of a cluster is the document the local executor keeps.

The last stage is single-process for now: the launcher reads the kept documents back and calls
`stages.finalize`, which trains the tokenizer on a sample and writes the shards. To make it a
Beam stage, train the tokenizer first (its sample is small), then key kept documents by
(source, split, shard index) in a ParDo, GroupByKey, and write one ArrayRecord shard per key;
only the manifest, which needs every shard's counts, is written afterwards.
"""

from __future__ import annotations

import collections
import json
import os
import shlex
import time
from collections.abc import Generator, Iterable, Iterator
from typing import Any

import apache_beam as beam
import ml_collections
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from jaxpretrain.curate import config as config_lib
from jaxpretrain.curate import report as report_lib
from jaxpretrain.curate import sources, stages
from jaxpretrain.curate.dedup.clusters import DedupResult
from jaxpretrain.curate.dedup.components import ConnectedComponents
from jaxpretrain.curate.document import Document

WORK_DIR_NAME = ".work"
# Removal reasons of the dedup stages (the local executor writes the same strings).
EXACT_DUPLICATE_REASON = "exact duplicate"
NEAR_DUPLICATE_REASON = "near duplicate"
_OUTPUTS = ("kept", "removed", "scores", "units", "counters")
_REMOVALS, _SCORES, _UNITS, _COUNTERS = "removals", "scores", "units", "counters"

Node = tuple[str, str, str]  # (order_key, document id, source)
# Carried on dedup removal records inside the pipeline only (ids are unique per source, so a
# cluster is named by its kept document's source and id); dropped before finalize.
_KEPT_SOURCE = "_kept_source"


def document_to_json(doc: Document) -> dict[str, Any]:
    """A JSON-serialisable dict with every field of `doc` (inverse: `document_from_json`)."""
    return {
        "id": doc.id,
        "text": doc.text,
        "source": doc.source,
        "kind": doc.kind,
        "metadata": dict(doc.metadata),
    }


def document_from_json(record: dict[str, Any]) -> Document:
    return Document(**record)


def _node(doc: Document) -> Node:
    return stages.order_key(doc), doc.id, doc.source


def _dedup_removal(doc: Document, stage: str, reason: str, kept: Node) -> dict[str, str]:
    return {
        **stages.removal_record(doc, stage, reason, duplicate_of=kept[1]),
        _KEPT_SOURCE: kept[2],
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
            stats = yield from self._process_unit(unit, remaining)
            if remaining >= 0:
                remaining = max(0, remaining - stats["read"]["documents"])
            yield beam.pvalue.TaggedOutput(_UNITS, {"position": position, "stats": stats})

    def _process_unit(self, unit: stages.WorkUnit, limit: int) -> Generator[Any, None, dict]:
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
                yield outcome.document
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
) -> None:
    """Adds the curation stages to `pipeline`, writing JSONL outputs under `work_dir`
    (kept/, removed/, scores/, units/, counters/; read back with `read_work_outputs`)."""
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
    if cfg.dedup.exact:
        kept, exact_removals = _exact_dedup(kept)
        removals.append(exact_removals)
    if cfg.dedup.minhash.enabled:
        counters.append(kept | "Count/MinHashIn" >> beam.Map(lambda _: ("minhash/in", 1)))
        kept, near_removals, minhash_counters = _minhash_dedup(kept, cfg)
        removals.append(near_removals)
        counters.extend(minhash_counters)

    def write(collection: beam.PCollection, name: str) -> None:
        _ = (
            collection
            | f"Write/{name}/Json" >> beam.Map(lambda record: json.dumps(record, sort_keys=True))
            | f"Write/{name}/Files"
            >> beam.io.WriteToText(
                FileSystems.join(work_dir, name, "part"), file_name_suffix=".jsonl"
            )
        )

    write(kept | "Kept/Json" >> beam.Map(document_to_json), "kept")
    write(tuple(removals) | "Removals/Flatten" >> beam.Flatten(), "removed")
    write(curated[_SCORES], "scores")
    write(curated[_UNITS], "units")
    write(
        tuple(counters)
        | "Counters/Flatten" >> beam.Flatten()
        | "Counters/Sum" >> beam.CombinePerKey(sum),
        "counters",
    )


def _read_jsonl(work_dir: str, name: str) -> list[Any]:
    pattern = FileSystems.join(work_dir, name, "part*")
    records = []
    for match in FileSystems.match([pattern])[0].metadata_list:
        with FileSystems.open(match.path) as lines:
            records.extend(json.loads(line) for line in lines.read().decode("utf-8").splitlines())
    return records


def _delete_work_outputs(work_dir: str) -> None:
    patterns = [FileSystems.join(work_dir, name, "part*") for name in _OUTPUTS]
    stale = [m.path for result in FileSystems.match(patterns) for m in result.metadata_list]
    if stale:
        FileSystems.delete(stale)


def read_work_outputs(work_dir: str) -> dict[str, list[Any]]:
    """{'kept', 'removed', 'scores', 'units', 'counters'}: the records the pipeline wrote."""
    return {name: _read_jsonl(work_dir, name) for name in _OUTPUTS}


def _summary(
    documents_in: int, removals: list[dict[str, str]], stats: dict[str, float]
) -> dict[str, Any]:
    """report.dedup_summary of one dedup stage, rebuilt from its removal records."""
    duplicate_of = {(r["source"], r["id"]): r["duplicate_of"] for r in removals}
    members_per_kept = collections.Counter((r[_KEPT_SOURCE], r["duplicate_of"]) for r in removals)
    cluster_sizes = collections.Counter(members + 1 for members in members_per_kept.values())
    result = DedupResult(
        duplicate_of=duplicate_of,
        num_documents=documents_in,
        num_clusters=len(members_per_kept),
        cluster_sizes=dict(sorted(cluster_sizes.items())),
        stats=stats,
    )
    return report_lib.dedup_summary(result)


def dedup_summaries(
    cfg: ml_collections.ConfigDict, removals: list[dict[str, str]], counters: dict[str, int]
) -> dict[str, Any]:
    """{'exact', 'minhash'}: the dedup summaries of report.json, with the local executor's keys.

    `spilled_runs` is 0 (the runner's shuffle replaces the external sort). With
    `verify_threshold` set, `rejected_edges` counts every rejected candidate edge, while the
    local executor skips edges between documents an earlier edge already joined.
    """
    summaries: dict[str, Any] = {"exact": None, "minhash": None}
    if cfg.dedup.exact:
        exact = [r for r in removals if r["stage"] == "exact_dedup"]
        summaries["exact"] = _summary(counters.get("filter/kept", 0), exact, {"spilled_runs": 0.0})
    if cfg.dedup.minhash.enabled:
        near = [r for r in removals if r["stage"] == "minhash_dedup"]
        stats = {
            "spilled_runs": 0.0,
            "candidate_edges": float(counters.get("minhash/candidate_edges", 0)),
            "rejected_edges": float(counters.get("minhash/rejected_edges", 0)),
        }
        summaries["minhash"] = _summary(counters.get("minhash/in", 0), near, stats)
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
      output_dir: the prepared directory, written by this process (a local path).
      pipeline_options: Beam flags, e.g. ['--runner=DataflowRunner', '--project=...'];
        None takes them from `cfg.executor.beam_options` (one string, split like a shell
        command line) when that key exists, else runs on the DirectRunner.
      work_dir: where the workers write their JSONL outputs, read back here; any path Beam's
        FileSystems handle (gs://... on Dataflow, where workers cannot reach this machine's
        disk). None: `cfg.executor.beam_work_dir` if set, else `<output_dir>/.work/beam`.

    The prepared directory equals the local executor's for the same config, except timings and
    the dedup `stats` noted in `dedup_summaries`.
    """
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
    _delete_work_outputs(work_dir)  # an earlier run's files would be read back as ours
    pipeline = beam.Pipeline(options=PipelineOptions(pipeline_options))
    build_pipeline(pipeline, cfg, units, work_dir)
    pipeline.run().wait_until_finish()
    pipeline_seconds = time.perf_counter() - started

    outputs = read_work_outputs(work_dir)
    counters = dict(outputs["counters"])
    scores = sorted(outputs["scores"], key=lambda record: record["order_key"])
    for record in scores:
        del record["order_key"]
    stats = {
        "units": [item["stats"] for item in sorted(outputs["units"], key=lambda u: u["position"])],
        "dedup": dedup_summaries(cfg, outputs["removed"], counters),
        "seconds": {"beam_pipeline": round(pipeline_seconds, 2)},
    }
    for record in outputs["removed"]:
        record.pop(_KEPT_SOURCE, None)
    kept = [document_from_json(record) for record in outputs["kept"]]
    return stages.finalize(kept, outputs["removed"], scores, stats, cfg, output_dir)
