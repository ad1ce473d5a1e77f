"""Exact and MinHash LSH dedup against a brute-force Jaccard reference on planted near-dups."""

import itertools
import json
import time
import tracemalloc

import numpy as np
import pytest
from datasketch import MinHash

from jaxpretrain.curate.dedup import (
    ExactDeduplicator,
    MinHashConfig,
    MinHasher,
    SpillSorter,
    UnionFind,
    band_buckets,
    estimated_jaccard,
    exact_dedup,
    minhash_dedup,
    shingles,
)
from jaxpretrain.curate.dedup.spill import star_edges
from jaxpretrain.curate.document import Document

_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


def _vocabulary(rng, size=3000):
    return ["".join(rng.choice(_LETTERS, rng.integers(3, 10))) for _ in range(size)]


def _edit(rng, words, vocabulary, num_edits, spaced=False):
    """Replaces `num_edits` positions; `spaced` keeps them >= 5 apart and away from the ends so
    that each edit changes exactly 5 distinct 5-gram shingles."""
    words = list(words)
    if spaced:
        slots = np.arange(5, len(words) - 5, 5)
        positions = rng.choice(slots, num_edits, replace=False)
    else:
        positions = rng.choice(len(words), num_edits, replace=False)
    for position in positions:
        words[position] = "zz" + vocabulary[rng.integers(len(vocabulary))]  # never the old word
    return words


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def _planted_corpus(seed=0, families=40, base_words=200, edits=(1, 3, 4, 5, 6, 10, 20), loners=40):
    rng = np.random.default_rng(seed)
    vocabulary = _vocabulary(rng)
    docs = []
    for family in range(families):
        base = list(rng.choice(vocabulary, base_words))
        docs.append(Document(f"f{family}-base", " ".join(base), "test"))
        for k in edits:
            docs.append(
                Document(f"f{family}-edit{k}", " ".join(_edit(rng, base, vocabulary, k)), "test")
            )
    for loner in range(loners):
        docs.append(Document(f"loner{loner}", " ".join(rng.choice(vocabulary, base_words)), "test"))
    order = rng.permutation(len(docs))  # interleave families so clusters are not contiguous
    return [docs[i] for i in order]


def _brute_force_jaccard(docs):
    sets = [set(shingles(doc.text)) for doc in docs]
    return {
        (i, j): _jaccard(sets[i], sets[j]) for i, j in itertools.combinations(range(len(docs)), 2)
    }


def _clusters(docs, result):
    index = {doc.id: i for i, doc in enumerate(docs)}
    root = {i: index[result.duplicate_of.get(doc.id, doc.id)] for i, doc in enumerate(docs)}
    return root


def test_sha1_signatures_equal_datasketch_minhash_bit_for_bit():
    rng = np.random.default_rng(1)
    vocabulary = _vocabulary(rng)
    texts = [" ".join(rng.choice(vocabulary, n)) for n in (3, 7, 60, 250)]
    hasher = MinHasher(MinHashConfig(shingle_hash="sha1", num_perm=112, seed=7))
    ours = hasher.signatures(texts)
    for text, signature in zip(texts, ours, strict=True):
        reference = MinHash(num_perm=112, seed=7)
        reference.update_batch([s.encode("utf-8") for s in shingles(text)])
        np.testing.assert_array_equal(signature, reference.hashvalues)


def test_signatures_are_deterministic_from_seed_and_empty_text_is_all_max():
    texts = ["one two three four five six seven", "", "alpha beta gamma delta epsilon zeta"]
    first = MinHasher(MinHashConfig(seed=3)).signatures(texts)
    again = MinHasher(MinHashConfig(seed=3)).signatures(texts)
    other = MinHasher(MinHashConfig(seed=4)).signatures(texts)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first[0], other[0])
    assert np.all(first[1] == np.uint32(0xFFFFFFFF))


@pytest.mark.parametrize("shingle_hash", ["fast", "sha1"])
def test_signature_agreement_estimates_true_jaccard(shingle_hash):
    rng = np.random.default_rng(2)
    vocabulary = _vocabulary(rng)
    hasher = MinHasher(MinHashConfig(shingle_hash=shingle_hash, num_perm=256))
    errors = []
    for k in (2, 5, 10, 20, 40):
        base = list(rng.choice(vocabulary, 300))
        other = _edit(rng, base, vocabulary, k)
        a, b = " ".join(base), " ".join(other)
        signatures = hasher.signatures([a, b])
        truth = _jaccard(set(shingles(a)), set(shingles(b)))
        errors.append(estimated_jaccard(signatures[0], signatures[1]) - truth)
    # Standard error at 256 permutations is <= 0.031; allow ~3 sigma per pair.
    assert np.max(np.abs(errors)) < 0.1, errors


def test_config_rejects_more_bands_than_permutations():
    with pytest.raises(ValueError, match="num_perm"):
        MinHashConfig(num_perm=64, bands=14, rows=8)
    assert MinHashConfig().candidate_probability(0.8) == pytest.approx(0.924, abs=0.001)


def test_union_find_chain_collapses_to_smallest_member_in_any_edge_order():
    for edges in ([(0, 1), (1, 2), (2, 3)], [(3, 2), (2, 1), (1, 0)], [(2, 3), (0, 1), (1, 3)]):
        union_find = UnionFind(6)
        for a, b in edges:
            union_find.union(a, b)
        np.testing.assert_array_equal(union_find.roots(), [0, 0, 0, 0, 4, 5])
    union_find = UnionFind(4)
    assert union_find.union(3, 2) and not union_find.union(2, 3)
    assert union_find.find(3) == 2


def test_union_edges_equals_one_edge_at_a_time_on_random_graphs():
    rng = np.random.default_rng(9)
    for num_nodes, num_edges in ((50, 30), (300, 400), (2000, 1500)):
        a = rng.integers(0, num_nodes, num_edges)
        b = rng.integers(0, num_nodes, num_edges)
        one_by_one = UnionFind(num_nodes)
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            one_by_one.union(x, y)
        vectorised = UnionFind(num_nodes)
        for chunk in np.array_split(np.arange(num_edges), 3):  # edges arrive in chunks
            vectorised.union_edges(a[chunk], b[chunk])
        np.testing.assert_array_equal(vectorised.roots(), one_by_one.roots())


def test_union_edges_collapses_a_long_chain_given_in_one_chunk():
    chain = np.arange(100_000)
    union_find = UnionFind(len(chain))
    union_find.union_edges(chain[1:], chain[:-1])
    np.testing.assert_array_equal(union_find.roots(), np.zeros(len(chain), np.int64))


def test_spill_sorter_merges_many_runs_in_global_order(tmp_path):
    rng = np.random.default_rng(3)
    records = np.empty((1000, 3), np.uint64)
    records[:, 0] = rng.integers(0, 3, 1000)  # few distinct values: ties span runs and blocks
    records[:, 1] = rng.integers(0, 50, 1000)
    records[:, 2] = np.arange(1000)  # documents arrive in index order
    sorter = SpillSorter(3, tmp_path, max_records_in_memory=64)
    for chunk in np.array_split(records, 7):
        sorter.add(chunk)
    assert len(sorter.run_paths) == 1000 // 64
    blocks = list(sorter.merged_blocks())
    assert len(blocks) > 1
    expected = records[np.lexsort((records[:, 2], records[:, 1], records[:, 0]))]
    np.testing.assert_array_equal(np.concatenate(blocks), expected)
    sorter.cleanup()
    assert not list(tmp_path.glob("run_*"))


def test_spill_sorter_rejects_documents_out_of_order(tmp_path):
    sorter = SpillSorter(2, tmp_path, max_records_in_memory=8)
    sorter.add(np.array([[5, 3], [1, 4]], np.uint64))
    with pytest.raises(ValueError, match="increasing index order"):
        sorter.add(np.array([[2, 2]], np.uint64))


def test_star_edges_link_every_bucket_member_to_its_first_across_blocks():
    rng = np.random.default_rng(10)
    keys = rng.integers(0, 30, 2000).astype(np.uint64)
    records = np.stack([keys, np.arange(2000, dtype=np.uint64)], axis=1)
    ordered = records[np.argsort(keys, kind="stable")]
    blocks = np.array_split(ordered, 17)  # runs of equal keys cross block boundaries
    pairs = [np.stack(edge, axis=1) for edge in star_edges(iter(blocks), key_columns=1)]
    edges = np.concatenate(pairs)
    first_of_key = {}
    for key, doc in records.tolist():
        first_of_key.setdefault(key, doc)
    expected = [
        (first_of_key[key], doc) for key, doc in ordered.tolist() if doc != first_of_key[key]
    ]
    assert edges.tolist() == [list(edge) for edge in expected]


def test_minhash_dedup_chain_a_b_c_keeps_only_the_first(tmp_path):
    rng = np.random.default_rng(4)
    vocabulary = _vocabulary(rng)
    a = list(rng.choice(vocabulary, 300))
    b = _edit(rng, a, vocabulary, 3)
    c = _edit(rng, b, vocabulary, 3)
    far = _edit(rng, c, vocabulary, 60)
    docs = [
        Document(name, " ".join(words))
        for name, words in (("a", a), ("b", b), ("c", c), ("unrelated", far))
    ]
    result = minhash_dedup(docs, work_dir=tmp_path, max_records_in_memory=5)
    assert result.duplicate_of == {"b": "a", "c": "a"}
    assert result.num_clusters == 1 and result.cluster_sizes == {3: 1}
    # The same chain fed in reverse keeps the first document of that order.
    reverse = minhash_dedup(list(reversed(docs)))
    assert reverse.duplicate_of == {"b": "c", "a": "c"}


def test_exact_dedup_normalises_and_keeps_first_occurrence(tmp_path):
    docs = [
        Document("1", "Hello   world.\nSecond line."),
        Document("2", "Something else entirely."),
        Document("3", "hello world. second line.  "),
        Document("4", "Hello world.\r\nSecond line."),
        Document("5", "Hello world, second line."),
        Document("6", "SOMETHING ELSE ENTIRELY."),
    ]
    result = exact_dedup(docs, work_dir=tmp_path, max_records_in_memory=2)
    assert result.duplicate_of == {"3": "1", "4": "1", "6": "2"}
    assert result.cluster_sizes == {2: 1, 3: 1}
    assert result.stats["spilled_runs"] >= 2
    streaming = ExactDeduplicator()
    for doc in docs[::-1]:
        streaming.add(doc)
    assert streaming.finish().duplicate_of == {"2": "6", "3": "4", "1": "4"}


def test_exact_dedup_keeps_earliest_in_input_order():
    docs = [Document(str(i), text) for i, text in enumerate(["b", "a", "b", "a", "c", "b"])]
    assert exact_dedup(docs).duplicate_of == {"2": "0", "5": "0", "3": "1"}


def test_minhash_recall_and_precision_against_brute_force_jaccard(tmp_path):
    docs = _planted_corpus()
    truth = _brute_force_jaccard(docs)
    started = time.perf_counter()
    result = minhash_dedup(docs, work_dir=tmp_path, max_records_in_memory=500)
    seconds = time.perf_counter() - started
    assert result.stats["spilled_runs"] >= 5  # the bound really forced the external sort
    root = _clusters(docs, result)
    predicted = {pair for pair in truth if root[pair[0]] == root[pair[1]]}
    positives = {pair for pair, j in truth.items() if j >= 0.8}
    recall = len(predicted & positives) / len(positives)
    # For each removed document, its best Jaccard with another member of its cluster.
    best_match = [
        max(truth[min(i, j), max(i, j)] for j in range(len(docs)) if j != i and root[j] == root[i])
        for i, doc in enumerate(docs)
        if doc.id in result.duplicate_of
    ]
    figures = {
        "documents": len(docs),
        "pairs_jaccard_ge_0.8": len(positives),
        "recall_at_0.8": round(recall, 4),
        "removed": result.num_removed,
        "removed_precision_at_0.8": round(float(np.mean(np.array(best_match) >= 0.8)), 4),
        "removed_precision_at_0.7": round(float(np.mean(np.array(best_match) >= 0.7)), 4),
        "cluster_pair_precision_at_0.8": round(len(predicted & positives) / len(predicted), 4),
        "cluster_pair_precision_at_0.5": round(
            sum(truth[pair] >= 0.5 for pair in predicted) / len(predicted), 4
        ),
        "seconds": round(seconds, 3),
        **result.stats,
    }
    print("minhash dedup vs brute force:", json.dumps(figures))
    assert len(positives) > 100
    assert recall >= 0.9
    # 14 x 8 bands put the LSH threshold near Jaccard 0.72 and the corpus plants many pairs at
    # 0.6-0.8 on purpose, so removals are judged against 0.7; union-find is transitive, so
    # cluster pairs are judged against 0.5 (two variants of one base).
    assert figures["removed_precision_at_0.7"] >= 0.9
    assert figures["cluster_pair_precision_at_0.5"] >= 0.95
    # Nothing between families or loners (Jaccard ~0) is merged.
    assert all(truth[pair] > 0.2 for pair in predicted)


def test_candidate_rate_at_jaccard_0_8_matches_lsh_theory():
    """Pairs at Jaccard exactly 0.8 must share a bucket ~92.4% of the time for 14 x 8 bands."""
    rng = np.random.default_rng(5)
    vocabulary = _vocabulary(rng)
    config = MinHashConfig()
    hasher = MinHasher(config)
    hits, jaccards = [], []
    for _ in range(200):
        base = list(rng.choice(vocabulary, 184))  # 180 shingles; 4 spaced edits -> J = 160/200
        other = _edit(rng, base, vocabulary, 4, spaced=True)
        a, b = " ".join(base), " ".join(other)
        jaccards.append(_jaccard(set(shingles(a)), set(shingles(b))))
        buckets = band_buckets(hasher.signatures([a, b]), config.bands, config.rows)
        hits.append(bool(np.any(buckets[0] == buckets[1])))
    rate = float(np.mean(hits))
    theory = config.candidate_probability(0.8)
    print(f"candidate rate at J=0.8: measured {rate:.3f}, theory {theory:.3f}")
    assert np.allclose(jaccards, 0.8)
    assert abs(rate - theory) < 3 * np.sqrt(theory * (1 - theory) / len(hits)) + 0.01


def test_spilling_does_not_change_the_result(tmp_path):
    docs = _planted_corpus(seed=6, families=10, loners=10)
    spilled = minhash_dedup(docs, work_dir=tmp_path / "a", max_records_in_memory=37)
    in_memory = minhash_dedup(docs, work_dir=tmp_path / "b", max_records_in_memory=1 << 20)
    assert spilled.stats["spilled_runs"] > 1 and in_memory.stats["spilled_runs"] == 0
    assert spilled.duplicate_of == in_memory.duplicate_of


def test_verification_rejects_bucket_collisions_below_threshold():
    docs = _planted_corpus(seed=7, families=10, loners=0)
    loose = minhash_dedup(docs)
    strict = minhash_dedup(docs, MinHashConfig(verify_threshold=0.9))
    assert strict.stats["rejected_edges"] > 0
    assert strict.num_removed < loose.num_removed
    assert set(strict.duplicate_of) <= set(loose.duplicate_of)


def test_documents_without_words_are_not_clustered_by_lsh():
    docs = [Document("a", ""), Document("b", "  ...  "), Document("c", "!!")]
    result = minhash_dedup(docs)
    assert result.duplicate_of == {} and result.stats["documents_without_words"] == 3


def test_throughput_report_signatures_vs_datasketch():
    """Not a speed assertion (DESIGN.md): prints docs/s of our signatures and of datasketch's
    `MinHash.update_batch` on the same documents, for the curation notes."""
    rng = np.random.default_rng(8)
    vocabulary = _vocabulary(rng)
    texts = [" ".join(rng.choice(vocabulary, 400)) for _ in range(300)]
    rates = {}
    for mode in ("fast", "sha1"):
        hasher = MinHasher(MinHashConfig(shingle_hash=mode))
        started = time.perf_counter()
        hasher.signatures(texts)
        rates[f"ours_{mode}"] = len(texts) / (time.perf_counter() - started)
    started = time.perf_counter()
    for text in texts:
        MinHash(num_perm=112, seed=1).update_batch([s.encode("utf-8") for s in shingles(text)])
    rates["datasketch_update_batch"] = len(texts) / (time.perf_counter() - started)
    print("minhash docs/s (400-word docs):", {k: round(v) for k, v in rates.items()})
    assert all(rate > 0 for rate in rates.values())


def test_exact_dedup_holds_a_few_bytes_per_removed_document_not_a_dict_entry(tmp_path):
    """A billion near-duplicates must not need a Python object each: the result and the peak of
    the whole pass stay at a few int64s per document (traced by tracemalloc, numpy included)."""
    num_documents, distinct = 40_000, 1_000

    def documents():  # generated lazily, so the input itself is not traced
        for i in range(num_documents):
            yield Document(f"doc-{i}", f"text number {i % distinct}")

    tracemalloc.start()
    try:
        result = exact_dedup(documents(), work_dir=tmp_path, max_records_in_memory=4096)
        retained, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.num_removed == num_documents - distinct
    assert result.duplicate_of["doc-1001"] == "doc-1"
    print(f"bytes per removed document: retained {retained / result.num_removed:.1f}, "
          f"peak {peak / result.num_removed:.1f}")  # fmt: skip
    assert retained / result.num_removed < 40  # a dict of ids: 88 here (short ids), 260 peak
    assert peak / result.num_removed < 120


def test_spill_sorter_merges_more_runs_than_its_fan_in_in_passes(tmp_path):
    """A terabyte corpus spills thousands of runs per band; merging them in one step would give
    each a read block of a few records. Runs beyond what the budget reads in blocks of
    MIN_READ_BLOCK are merged in passes first, and the result is still every record in (key,
    document) order."""
    from jaxpretrain.curate.dedup import spill

    rng = np.random.default_rng(0)
    count = 20_000
    records = np.stack(
        [rng.integers(0, 300, count, dtype=np.uint64), np.arange(count, dtype=np.uint64)], axis=1
    )
    sorter = spill.SpillSorter(2, tmp_path, max_records_in_memory=100)  # 200 runs
    for start in range(0, count, 1_000):
        sorter.add(records[start : start + 1_000])
    merged = np.concatenate(list(sorter.merged_blocks()))
    expected = records[np.lexsort((records[:, 1], records[:, 0]))]
    np.testing.assert_array_equal(merged, expected)
    assert len(sorter.run_paths) <= 2  # a budget of 100 records merges 2 runs at a time
    assert all(path.name.startswith("pass") for path in sorter.run_paths)
