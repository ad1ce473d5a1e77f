"""dedup_units: the local executor's dedup over unit directories, against the streaming
front-ends (exact, then MinHash on what exact kept), with duplicate ids and bounded memory."""

import json
import tracemalloc

import numpy as np
import pytest

from jaxpretrain.curate import config as config_lib
from jaxpretrain.curate import stages
from jaxpretrain.curate.dedup import MinHashConfig, exact_dedup, minhash_dedup
from jaxpretrain.curate.dedup.exact import text_hash
from jaxpretrain.curate.dedup.minhash import has_words
from jaxpretrain.curate.dedup.run import KEY_FILE_NAMES, UnitKeyWriter, dedup_units
from jaxpretrain.curate.document import Document

_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


def _write_unit(unit_dir, documents, cfg):
    """A unit directory as the local executor writes it (ids.jsonl + key files; no docs.jsonl,
    which dedup must not need)."""
    unit_dir.mkdir(parents=True)
    with open(unit_dir / "ids.jsonl", "w", encoding="utf-8") as ids:
        ids.writelines(json.dumps(doc.id) + "\n" for doc in documents)
    texts = [doc.text for doc in documents]
    signatures = stages.minhash_signatures(texts, cfg)
    verify = cfg.dedup.minhash.verify_threshold is not None
    signatures_kept = signatures if verify else signatures[:, :0]
    _write_keys(
        unit_dir,
        np.array([text_hash(t) for t in texts], np.uint64).reshape(-1, 2),
        stages.band_key_array(signatures, cfg),
        has_words(signatures),
        signatures_kept,
    )
    return unit_dir


def _write_keys(unit_dir, exact, bands, words, signatures):
    writer = UnitKeyWriter(unit_dir, bands.shape[1], signatures.shape[1])
    writer.append(exact, bands, words, signatures)
    writer.close()


def _corpus(seed=0, families=12):
    """Documents with exact copies (reformatted), near copies and loners, interleaved."""
    rng = np.random.default_rng(seed)
    vocabulary = ["".join(rng.choice(_LETTERS, rng.integers(3, 9))) for _ in range(2000)]
    docs = []
    for family in range(families):
        base = list(rng.choice(vocabulary, 150))
        docs.append(Document(f"f{family}", " ".join(base)))
        docs.append(Document(f"f{family}-copy", " ".join(base).upper()))
        for k in (2, 4):
            near = list(base)
            for position in rng.choice(len(near), k, replace=False):
                near[position] = "zz" + vocabulary[rng.integers(len(vocabulary))]
            docs.append(Document(f"f{family}-near{k}", " ".join(near)))
    docs += [Document(f"loner{i}", " ".join(rng.choice(vocabulary, 150))) for i in range(10)]
    docs.append(Document("empty-a", ""))
    docs.append(Document("empty-b", "  "))
    return [docs[i] for i in rng.permutation(len(docs))]


def _units(tmp_path, docs, cfg, splits=((0, "web"), (0.4, "web"), (0.7, "books"))):
    """Splits `docs` into consecutive units; returns [(source, unit_dir)] and [(source, doc)]."""
    bounds = [int(fraction * len(docs)) for fraction, _ in splits] + [len(docs)]
    units, ordered = [], []
    for i, (_, source) in enumerate(splits):
        part = docs[bounds[i] : bounds[i + 1]]
        units.append((source, _write_unit(tmp_path / f"unit{i}", part, cfg)))
        ordered += [(source, doc) for doc in part]
    return units, ordered


def _read_removed(dedup_dir):
    with open(dedup_dir / "removed.jsonl", encoding="utf-8") as lines:
        return sorted((json.loads(line) for line in lines), key=lambda r: (r["stage"], r["id"]))


def _front_end_removals(ordered, cfg):
    """What the public front-ends decide: exact first, then MinHash on what exact kept."""
    docs = [doc for _, doc in ordered]
    source_of = {doc.id: source for source, doc in ordered}
    exact = exact_dedup(docs)
    remaining = [doc for doc in docs if exact.is_kept(doc.id)]
    near = minhash_dedup(remaining, config_lib.minhash_config(cfg))
    records = [
        {"id": removed, "source": source_of[removed], "stage": stage, "reason": reason,
         "duplicate_of": kept}
        for result, stage, reason in (
            (exact, "exact_dedup", "exact duplicate"), (near, "minhash_dedup", "near duplicate")
        )
        for removed, kept in result.duplicate_of.items()
    ]  # fmt: skip
    return sorted(records, key=lambda r: (r["stage"], r["id"])), exact, near


@pytest.mark.parametrize("workers", [1, 2])
def test_dedup_units_decides_what_the_front_ends_decide(tmp_path, workers):
    cfg = config_lib.default_data_config()
    cfg.dedup.max_records_in_memory = 50  # forces spilled runs in every band
    docs = _corpus()
    units, ordered = _units(tmp_path, docs, cfg)
    summary = dedup_units(units, tmp_path / "dedup", cfg, workers=workers, progress=False)
    expected, exact, near = _front_end_removals(ordered, cfg)
    assert len(expected) > 20  # exact copies and near copies were both planted
    assert _read_removed(tmp_path / "dedup") == expected
    removed_ids = {r["id"] for r in expected}
    mask = np.load(tmp_path / "dedup" / "removed_mask.npy")
    np.testing.assert_array_equal(mask, [doc.id in removed_ids for _, doc in ordered])
    assert summary["exact"]["removed"] == exact.num_removed
    assert summary["exact"]["cluster_sizes"] == {str(k): v for k, v in exact.cluster_sizes.items()}
    assert summary["minhash"]["removed"] == near.num_removed
    assert summary["minhash"]["documents_in"] == len(docs) - exact.num_removed
    assert summary["minhash"]["stats"]["spilled_runs"] > 14
    assert summary["minhash"]["stats"]["documents_without_words"] == 2 - 1  # one empty copy gone
    assert summary["duplicate_ids"] == {"count": 0, "examples": []}
    assert json.loads((tmp_path / "dedup" / "summary.json").read_text()) == summary
    assert (tmp_path / "dedup" / "DONE").exists()
    outputs = {"DONE", "removed.jsonl", "removed_mask.npy", "summary.json"}
    assert {p.name for p in (tmp_path / "dedup").iterdir()} == outputs  # scratch is deleted


def test_verify_threshold_in_dedup_units_matches_the_front_end(tmp_path):
    cfg = config_lib.default_data_config()
    cfg.dedup.exact = False
    cfg.dedup.minhash.verify_threshold = 0.97
    docs = _corpus(seed=1)
    units, ordered = _units(tmp_path, docs, cfg)
    summary = dedup_units(units, tmp_path / "dedup", cfg, workers=1, progress=False)
    strict = minhash_dedup(docs, MinHashConfig(verify_threshold=0.97))
    loose = minhash_dedup(docs)
    assert summary["exact"] is None
    assert summary["minhash"]["stats"]["rejected_edges"] > 0
    assert summary["minhash"]["removed"] == strict.num_removed < loose.num_removed
    removed = {r["id"]: r["duplicate_of"] for r in _read_removed(tmp_path / "dedup")}
    assert removed == dict(strict.duplicate_of.items())


def test_duplicate_input_ids_are_counted_and_named(tmp_path):
    cfg = config_lib.default_data_config()
    first = [Document("g20", "a page about gardens"), Document("g21", "a page about rivers")]
    rerun = [Document("g20", "a page about gardens"), Document("g22", "a page about roads")]
    other_source = [Document("g20", "a page about gardens in a book")]
    units = [
        ("web", _write_unit(tmp_path / "u0", first, cfg)),
        ("web", _write_unit(tmp_path / "u1", rerun, cfg)),
        ("books", _write_unit(tmp_path / "u2", other_source, cfg)),  # same id, other source
    ]
    summary = dedup_units(units, tmp_path / "dedup", cfg, workers=1, progress=False)
    assert summary["duplicate_ids"] == {
        "count": 1,
        "examples": [{"source": "web", "id": "g20"}],
    }
    # The exact copy is still removed, and the report now says its id was not unique.
    [record] = [r for r in _read_removed(tmp_path / "dedup") if r["stage"] == "exact_dedup"]
    assert record["id"] == record["duplicate_of"] == "g20"


def test_a_finished_dedup_dir_is_reused_as_is(tmp_path):
    cfg = config_lib.default_data_config()
    units, _ = _units(tmp_path, _corpus(families=3), cfg)
    summary = dedup_units(units, tmp_path / "dedup", cfg, workers=1, progress=False)
    for _, unit_dir in units:  # the units are not read again
        for name in KEY_FILE_NAMES:
            (unit_dir / name).unlink()
    assert dedup_units(units, tmp_path / "dedup", cfg, workers=1, progress=False) == summary


def test_bad_unit_files_name_the_file_and_what_to_do(tmp_path):
    cfg = config_lib.default_data_config()
    unit = _write_unit(tmp_path / "u0", [Document("a", "one"), Document("b", "two")], cfg)
    (unit / "ids.jsonl").write_text('"a"\n{"id": "b"}\n')
    with pytest.raises(ValueError, match=r"ids\.jsonl:2: expected a JSON string"):
        dedup_units([("web", unit)], tmp_path / "dedup", cfg, workers=1, progress=False)
    (unit / "ids.jsonl").write_text('"a"\n')
    with pytest.raises(ValueError, match="keys.json has 2 documents but ids.jsonl has 1"):
        dedup_units([("web", unit)], tmp_path / "dedup2", cfg, workers=1, progress=False)


def _dedup_with_traced_peak(unit, output, cfg):
    """(dedup_units' summary for one 'web' unit, the traced peak of Python allocations)."""
    tracemalloc.start()
    try:
        summary = dedup_units([("web", unit)], output, cfg, workers=1, progress=False)
        return summary, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_dedup_units_holds_a_few_bytes_per_removed_document(tmp_path):
    """Removals are streamed to removed.jsonl and ids stay on disk: the traced peak of the whole
    pass is a few int64s per document, not a record or dict entry per removed document."""
    cfg = config_lib.default_data_config()
    cfg.dedup.minhash.enabled = False
    cfg.dedup.max_records_in_memory = 5_000  # the bound, not the corpus, sizes every buffer
    num_documents, distinct = 100_000, 1_000
    unit = tmp_path / "u0"
    unit.mkdir()
    ids = [f"web-page-{i:08d}" for i in range(num_documents)]
    (unit / "ids.jsonl").write_text("".join(json.dumps(i) + "\n" for i in ids))
    hashes = np.array([text_hash(f"text {i % distinct}") for i in range(num_documents)], np.uint64)
    _write_keys(
        unit,
        hashes,
        np.zeros((num_documents, 14), np.uint64),
        np.ones(num_documents, bool),
        np.zeros((num_documents, 0), np.uint32),
    )
    del ids, hashes
    summary, peak = _dedup_with_traced_peak(unit, tmp_path / "dedup", cfg)
    removed = summary["exact"]["removed"]
    assert removed == num_documents - distinct
    print(f"dedup_units peak bytes per removed document: {peak / removed:.1f}")
    assert peak / removed < 120


def test_empty_units_and_no_units_give_an_empty_result(tmp_path):
    cfg = config_lib.default_data_config()
    empty = _write_unit(tmp_path / "u0", [], cfg)
    for name, units in (("none", []), ("empty", [("web", empty)])):
        summary = dedup_units(units, tmp_path / name, cfg, workers=1, progress=False)
        assert summary["exact"]["documents_in"] == 0 and summary["minhash"]["removed"] == 0
        assert np.load(tmp_path / name / "removed_mask.npy").shape == (0,)
        assert (tmp_path / name / "removed.jsonl").read_text() == ""


def _random_key_unit(unit_dir, num_documents, seed=0):
    """One unit of random keys with 10% exact copies and 10% band collisions, like a large input
    file; ids are short so the id table (on disk) stays small."""
    rng = np.random.default_rng(seed)
    unit_dir.mkdir(parents=True)
    (unit_dir / "ids.jsonl").write_text("".join(f'"d{i}"\n' for i in range(num_documents)))
    exact = rng.integers(0, 2**63, size=(num_documents, 2), dtype=np.uint64)
    exact[1::10] = exact[0::10][: len(exact[1::10])]
    bands = rng.integers(0, 2**63, size=(num_documents, 14), dtype=np.uint64)
    bands[2::10] = bands[3::10][: len(bands[2::10])]
    _write_keys(
        unit_dir,
        exact,
        bands,
        np.ones(num_documents, bool),
        np.zeros((num_documents, 0), np.uint32),
    )
    return unit_dir


def test_dedup_units_memory_does_not_grow_with_the_size_of_one_unit(tmp_path):
    """One unit as large as a whole input file: keys are read in bounded slices, so the traced
    peak stays at the per-document arrays (removed mask, union-find) plus the record budget."""
    cfg = config_lib.default_data_config()
    cfg.dedup.max_records_in_memory = 1 << 16
    num_documents = 200_000
    unit = _random_key_unit(tmp_path / "u0", num_documents)
    summary, peak = _dedup_with_traced_peak(unit, tmp_path / "dedup", cfg)
    assert summary["exact"]["removed"] == num_documents // 10
    assert summary["minhash"]["removed"] > 0
    print(f"dedup_units peak bytes per document (one unit): {peak / num_documents:.1f}")
    # ~31 here (18 per document plus the fixed buffers); 437 when a unit's keys were loaded.
    assert peak / num_documents < 40
