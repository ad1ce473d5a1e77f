"""Executor-agnostic curation stages: what happens to one document, one unit, one key.

The local executor (`executors/local.py`) and the Beam executor (`executors/beam.py`) both run

    list_work_units(cfg) ─► read_work_unit(unit, report) ─► Curator(cfg).process(doc)
        (clean → filters; removals carry stage 'clean' or 'filter')
    ─► exact dedup on exact_dedup_key(doc)
    ─► MinHash LSH dedup on band_key_array(minhash_signatures(texts))
        (each cluster keeps the document with the smallest order_key(doc))
    ─► finalize(partitions, removals, scores, stats, cfg, output_dir)
        (split with assign_split, a tokenizer from a bounded sample, each partition tokenized
        into its own shards in parallel, report, manifest last; Beam runs the same
        `finalize.write_partition` on its workers)

Stable interface (the Beam executor calls these names):

    Curator(cfg).process(doc) -> CurateOutcome(document | None, removal | None, scores)
    order_key(doc) -> str                 total order; read_work_unit stamps it in metadata
    exact_dedup_key(doc) -> str           32 hex digits of the normalised-text hash
    minhash_signatures(texts, cfg) -> uint32[N, num_perm]; band_key_array(signatures, cfg) ->
        uint64[N, bands]; has_words(signatures) -> bool[N] (texts without words skip LSH)
    assign_split(doc, cfg) -> 'train' | 'validation'
    removal_record(doc, stage, reason, duplicate_of=None) -> dict   a removed.jsonl line
    finalize(partitions, removals, scores, stats, cfg, output_dir) -> manifest path
        (defined in curate/finalize.py, re-exported here; partitions are picklable callables
        yielding kept documents in order_key order)

`stats` passed to finalize is `{"units": [unit stats (see report.new_unit_stats)],
"dedup": {"exact": dedup summary, "minhash": dedup summary}, "seconds": {...}}`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from collections.abc import Iterable, Iterator
from typing import Any

import ml_collections
import numpy as np

from jaxpretrain import paths
from jaxpretrain.curate import clean as clean_lib
from jaxpretrain.curate import config as config_lib
from jaxpretrain.curate import filters as filters_lib
from jaxpretrain.curate import sources
from jaxpretrain.curate.dedup.exact import text_hash
from jaxpretrain.curate.dedup.minhash import MinHasher, band_buckets, has_words  # noqa: F401 - has_words: part of the interface above
from jaxpretrain.curate.document import Document

TRAIN_SPLIT = "train"
VALIDATION_SPLIT = "validation"
# Removal stages in pipeline order (removed.jsonl is sorted by this order first).
STAGES = ("clean", "filter", "exact_dedup", "minhash_dedup")
# Metadata key under which read_work_unit stores a document's order key.
ORDER_KEY = "order_key"


@dataclasses.dataclass(frozen=True)
class CurateOutcome:
    """What cleaning and filtering made of one document.

    Attributes:
      document: the cleaned (possibly rewritten) document, None when it was removed.
      removal: the removed.jsonl record when it was removed, else None.
      scores: filter scores '<filter>.<score>' (empty when no filter ran).
    """

    document: Document | None
    removal: dict | None
    scores: dict[str, float]


@dataclasses.dataclass(frozen=True)
class WorkUnit:
    """One input shard of one source: the unit of parallel work and of resumption.

    `source_rank` is the source's position in `cfg.sources`; with the shard index it orders
    units, and thereby documents (see `order_key`).
    """

    source_rank: int
    spec: sources.SourceSpec
    shard: sources.InputShard


def source_specs(cfg: ml_collections.ConfigDict) -> list[sources.SourceSpec]:
    """`sources.SourceSpec`s of `cfg.sources`, relative paths joined to `cfg.input_dir`."""
    specs = []
    for source in cfg.sources:
        fields = {key: source[key] for key in config_lib.source_fields()}
        path = fields["path"]
        if path and cfg.input_dir and not os.path.isabs(path) and not paths.is_remote(path):
            fields["path"] = os.path.join(cfg.input_dir, path)
        specs.append(sources.SourceSpec(**fields))
    return specs


def list_work_units(cfg: ml_collections.ConfigDict) -> list[WorkUnit]:
    """Every (source, input shard) of `cfg` in a deterministic order.

    Raises (see `sources.check_source`) naming the source when it cannot be read (missing or
    unreadable path, unknown dataset), so a bad config fails before any work starts.
    """
    units = []
    for rank, spec in enumerate(source_specs(cfg)):
        sources.check_source(spec)
        shards = sources.list_input_shards(spec)
        units.extend(WorkUnit(rank, spec, shard) for shard in shards)
    return units


def read_work_unit(
    unit: WorkUnit, report: sources.SourceReport, limit: int = -1
) -> Iterator[Document]:
    """The documents of `unit` in input order, at most `limit` (-1: all), each with its source
    name, its kind (when the spec forces one) and its order key in metadata."""
    documents = sources.iter_shard_documents(unit.spec, unit.shard, report)
    for position, document in enumerate(documents):
        if 0 <= limit <= position:
            return
        key = f"{unit.source_rank:04d}:{unit.shard.index:08d}:{position:012d}"
        changes: dict[str, Any] = {"source": unit.spec.name}
        if unit.spec.kind != "auto":
            changes["kind"] = unit.spec.kind
        yield document.replace(**changes, metadata={**document.metadata, ORDER_KEY: key})


def order_key(doc: Document) -> str:
    """The document's place in the total order (source rank, input shard, position), as
    stamped by `read_work_unit`; a duplicate cluster keeps its smallest key. Falls back to
    '<source>:<id>' for documents that did not come from `read_work_unit`."""
    return str(doc.metadata.get(ORDER_KEY) or f"~{doc.source}:{doc.id}")


def exact_dedup_key(doc: Document) -> str:
    """128-bit hash of the normalised text as 32 hex digits (equal text, equal key)."""
    high, low = text_hash(doc.text)
    return f"{high:016x}{low:016x}"


@functools.lru_cache(maxsize=4)
def _minhasher(minhash_config) -> MinHasher:
    return MinHasher(minhash_config)


def minhash_signatures(texts: list[str], cfg: ml_collections.ConfigDict) -> np.ndarray:
    """uint32[len(texts), num_perm] MinHash signatures (all 0xFFFFFFFF for a text with no word)."""
    return _minhasher(config_lib.minhash_config(cfg)).signatures(texts)


def band_key_array(signatures: np.ndarray, cfg: ml_collections.ConfigDict) -> np.ndarray:
    """uint64[N, bands] LSH bucket keys of `signatures`."""
    minhash = config_lib.minhash_config(cfg)
    return band_buckets(signatures, minhash.bands, minhash.rows)


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


def assign_split(doc: Document, cfg: ml_collections.ConfigDict) -> str:
    """'validation' or 'train' by a stable hash of the id (see `is_validation_document`)."""
    if is_validation_document(doc.id, cfg.split.validation_fraction):
        return VALIDATION_SPLIT
    return TRAIN_SPLIT


def removal_record(
    doc: Document, stage: str, reason: str, duplicate_of: str | None = None
) -> dict[str, str]:
    """One removed.jsonl line: id, source, stage (one of STAGES), reason [, duplicate_of]."""
    record = {"id": doc.id, "source": doc.source, "stage": stage, "reason": reason}
    if duplicate_of is not None:
        record["duplicate_of"] = duplicate_of
    return record


class Curator:
    """Cleaning and quality filtering of single documents, built once per worker from `cfg`.

    A document of a source whose `filter_chain` names an entry of `cfg.filters.chains` goes
    through that chain; otherwise prose ('text') documents go through `cfg.filters.chain` and
    code documents through `cfg.filters.code_chain`. A document that cleaning leaves empty is
    removed at stage 'clean'.
    """

    def __init__(self, cfg: ml_collections.ConfigDict):
        self._clean = config_lib.clean_config(cfg) if cfg.clean.enabled else None
        self._score_all = bool(cfg.filters.score_all)
        self._chains_by_kind = {
            "text": _build_chain(cfg, cfg.filters.chain),
            "code": _build_chain(cfg, cfg.filters.code_chain),
        }
        named = {source.filter_chain for source in cfg.sources if source.filter_chain}
        chains = {name: _build_chain(cfg, cfg.filters.chains[name]) for name in sorted(named)}
        self._chains_by_source = {
            source.name: chains[source.filter_chain]
            for source in cfg.sources
            if source.filter_chain
        }

    def process(self, doc: Document) -> CurateOutcome:
        if self._clean is not None:
            doc = clean_lib.clean_document(doc, self._clean)
        if not doc.text.strip():
            return CurateOutcome(None, removal_record(doc, "clean", "empty after cleaning"), {})
        chain = self._chains_by_source.get(doc.source)
        if chain is None:
            chain = self._chains_by_kind[doc.kind]
        if not chain:
            return CurateOutcome(doc, None, {})
        result = filters_lib.apply_filters(doc, chain, score_all=self._score_all)
        if result.kept:
            return CurateOutcome(result.document, None, result.scores)
        return CurateOutcome(None, removal_record(doc, "filter", str(result.reason)), result.scores)


def _build_chain(cfg: ml_collections.ConfigDict, names: Iterable[str]) -> list[filters_lib.Filter]:
    """The filters `names`, each with its `cfg.filters.settings`."""
    return [filters_lib.get(name, **config_lib.filter_settings(cfg, name)) for name in names]


def finalize(*args, **kwargs) -> str:
    """See `jaxpretrain.curate.finalize.finalize` (imported lazily: it loads the tokenizer)."""
    from jaxpretrain.curate import finalize as finalize_lib

    return finalize_lib.finalize(*args, **kwargs)
