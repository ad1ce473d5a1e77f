"""Deduplication: exact (hash of normalised text) and fuzzy (MinHash LSH), both out of core.

    from jaxpretrain.curate import dedup
    result = dedup.minhash_dedup(docs, dedup.MinHashConfig(), work_dir="/tmp/dedup")
    kept = [d for d in docs if result.is_kept(d.id)]

Documents must arrive in a deterministic order: each cluster keeps its first document. One core
(`clustering.KeyClustering`: sorted runs on disk, a parallel block merge, star edges, vectorised
union-find) serves these front-ends and the local executor's `run.dedup_units`.
"""

from jaxpretrain.curate.dedup.clusters import DedupResult, UnionFind
from jaxpretrain.curate.dedup.exact import (
    ExactDeduplicator,
    exact_dedup,
    normalize_for_exact_match,
    text_hash,
)
from jaxpretrain.curate.dedup.lsh import MinHashDeduplicator, minhash_dedup
from jaxpretrain.curate.dedup.minhash import (
    MinHashConfig,
    MinHasher,
    band_buckets,
    estimated_jaccard,
    shingle_words,
    shingles,
)
from jaxpretrain.curate.dedup.spill import SpillSorter

__all__ = [
    "DedupResult",
    "ExactDeduplicator",
    "MinHashConfig",
    "MinHashDeduplicator",
    "MinHasher",
    "SpillSorter",
    "UnionFind",
    "band_buckets",
    "estimated_jaccard",
    "exact_dedup",
    "minhash_dedup",
    "normalize_for_exact_match",
    "shingle_words",
    "shingles",
    "text_hash",
]
