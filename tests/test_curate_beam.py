"""The Apache Beam executor: connected components, and DirectRunner output == local executor's."""

from __future__ import annotations

import json
import random

import pytest

beam = pytest.importorskip(
    "apache_beam",
    reason="apache-beam is not installed; `pip install -e '.[beam]'` (CI installs the extra).",
)

from apache_beam.testing.util import assert_that, equal_to  # noqa: E402

from jaxpretrain.curate.dedup import UnionFind  # noqa: E402
from jaxpretrain.curate.dedup.components import (  # noqa: E402
    ConnectedComponents,
    simulate_components,
)


def _union_find_members(num_nodes: int, edges: list[tuple[int, int]]) -> dict[int, int]:
    """{member: smallest node of its component} for every non-representative node."""
    union_find = UnionFind(num_nodes)
    for a, b in edges:
        union_find.union(a, b)
    roots = union_find.roots()
    return {node: int(root) for node, root in enumerate(roots) if root != node}


def _graphs() -> dict[str, tuple[int, list[tuple[int, int]]]]:
    rng = random.Random(0)
    shuffled = list(range(200))
    rng.shuffle(shuffled)
    several = [(0, 5), (5, 9), (9, 2), (3, 4), (10, 11), (11, 12), (12, 10), (7, 7), (13, 6)]
    return {
        "chain_in_order": (40, [(i, i + 1) for i in range(39)]),
        "chain_reversed_edges": (40, [(i + 1, i) for i in range(39)]),
        "long_chain_shuffled_keys": (200, list(zip(shuffled, shuffled[1:], strict=False))),
        "star_centred_on_largest": (30, [(29, i) for i in range(29)]),
        "several_components_with_cycle_and_self_loop": (14, several),
        "duplicate_edges": (6, [(1, 2), (2, 1), (1, 2), (4, 5), (5, 4)]),
        "random_sparse": (120, [(rng.randrange(120), rng.randrange(120)) for _ in range(90)]),
    }


@pytest.mark.parametrize("name", sorted(_graphs()))
def test_simulated_rounds_match_union_find(name):
    num_nodes, edges = _graphs()[name]
    members, rounds = simulate_components(edges)
    assert members == _union_find_members(num_nodes, edges)
    assert rounds <= 12


def test_beam_components_match_union_find_on_all_graphs():
    # One pipeline for every graph (nodes tagged by graph name) keeps DirectRunner start-up to one.
    graphs = _graphs()
    tagged_edges, expected = [], []
    for name, (num_nodes, edges) in graphs.items():
        tagged_edges += [((name, a), (name, b)) for a, b in edges]
        expected += [
            ((name, member), (name, representative))
            for member, representative in _union_find_members(num_nodes, edges).items()
        ]
    with beam.Pipeline() as pipeline:
        members = pipeline | beam.Create(tagged_edges) | ConnectedComponents()
        assert_that(members, equal_to(expected))


def test_beam_components_fail_loudly_when_rounds_are_too_few():
    chain = [(i, i + 1) for i in range(64)]
    with (
        pytest.raises(Exception, match="did not converge in max_rounds=1"),
        beam.Pipeline() as pipeline,
    ):
        _ = pipeline | beam.Create(chain) | ConnectedComponents(max_rounds=1)


def test_simulated_rounds_fail_loudly_when_rounds_are_too_few():
    with pytest.raises(RuntimeError, match="max_rounds=2"):
        simulate_components([(i, i + 1) for i in range(100)], max_rounds=2)


# --- The whole pipeline: DirectRunner output == local executor output ---------------------------

_WORD_PROSE = (
    "river stone garden window market yellow quiet morning letter engine forest bridge silver "
    "paper candle harbor winter music orange valley teacher doctor island mirror pocket ladder "
    "basket cotton meadow thunder village lantern feather button circle pencil rocket bottle"
)
_WORDS = _WORD_PROSE.split(" ")


def _prose(seed: int, num_words: int = 80) -> str:
    rng = random.Random(seed)
    words = [rng.choice(_WORDS) for _ in range(num_words)]
    return " ".join(words[:40]) + ".\n" + " ".join(words[40:]) + "."


def _with_word_changed(text: str, position: int) -> str:
    words = text.split(" ")
    words[position] = "zebra"
    return " ".join(words)


def _write_jsonl(path, records: list[dict | str]) -> None:

    lines = [record if isinstance(record, str) else json.dumps(record) for record in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _planted_corpus(root) -> None:
    """Two sources, three input shards, with planted duplicates, filter failures, a bad line.

    web/a.jsonl: originals 0-5, a short document (length filter), a malformed JSON line.
    web/b.jsonl: an exact copy of 1 (case and spacing changed), a near copy of 2, a near copy of
      that near copy (a chain: one cluster), an exact copy of a near copy of 3.
    books/c.jsonl (capped by max_documents): a near copy of 3 that comes after web in order,
      an exact copy of web 4, originals 10-11, then documents past the cap.
    """
    web = root / "web"
    web.mkdir()
    books = root / "books"
    books.mkdir()
    near_3 = _with_word_changed(_prose(3), 10)
    _write_jsonl(
        web / "a.jsonl",
        [{"id": f"w{i}", "text": _prose(i)} for i in range(6)]
        + [{"id": "short", "text": "too short"}, "{not json"],
    )
    near_2 = _with_word_changed(_prose(2), 30)
    _write_jsonl(
        web / "b.jsonl",
        [
            {"id": "w1-exact", "text": "  " + _prose(1).upper().replace(" ", "   ") + "\n"},
            {"id": "w2-near", "text": near_2},
            {"id": "w2-near-near", "text": _with_word_changed(near_2, 60)},
            {"id": "w3-near-exact", "text": near_3.upper()},
            {"id": "w6", "text": _prose(6)},
        ],
    )
    _write_jsonl(
        books / "c.jsonl",
        [
            {"id": "b3-near", "text": near_3},
            {"id": "b4-exact", "text": _prose(4)},
            {"id": "b10", "text": _prose(10)},
            {"id": "b11", "text": _prose(11)},
            {"id": "b-tiny", "text": "tiny"},
            {"id": "b-past-cap", "text": _prose(12)},
        ],
    )


def _planted_config(root):
    from jaxpretrain.curate import config as config_lib

    cfg = config_lib.default_data_config()
    cfg.sources = [
        config_lib.source_config(name="web", type="jsonl", path=str(root / "web")),
        config_lib.source_config(
            name="books", type="jsonl", path=str(root / "books"), max_documents=5
        ),
    ]
    cfg.filters.chain = ("length",)
    cfg.filters.settings.length.min_chars = 50
    cfg.tokenizer.vocab_size = 430
    cfg.split.validation_fraction = 0.3
    cfg.output.shards_per_source = 2
    cfg.executor.workers = 1
    return cfg


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in ("seconds",)}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _read_output(directory) -> dict[str, object]:

    files = {}
    for path in sorted(directory.rglob("*")):
        relative = str(path.relative_to(directory))
        if path.is_dir() or relative.startswith(".work"):
            continue
        if path.suffix == ".json":
            content = _without_timings(json.loads(path.read_text()))
            content.get("config", {}).pop("executor", None)
            content.pop("data_dir", None)
            files[relative] = content
        elif path.suffix == ".jsonl":
            files[relative] = path.read_text().splitlines()  # both are written sorted
        else:
            files[relative] = path.read_bytes()
    return files


@pytest.fixture(scope="module")
def planted_outputs(tmp_path_factory):
    from jaxpretrain.curate.executors import beam as beam_executor
    from jaxpretrain.curate.executors import local as local_executor

    root = tmp_path_factory.mktemp("planted")
    _planted_corpus(root)
    cfg = _planted_config(root)
    local_manifest = local_executor.run(cfg, root / "local", progress=False)
    beam_cfg = _planted_config(root)
    beam_cfg.executor.name = "beam"
    beam_manifest = beam_executor.run_beam(beam_cfg, str(root / "beam"), ["--runner=DirectRunner"])
    return root, local_manifest, beam_manifest


def test_direct_runner_writes_the_local_executors_prepared_directory(planted_outputs):
    root, _, _ = planted_outputs
    local_files, beam_files = _read_output(root / "local"), _read_output(root / "beam")
    assert sorted(beam_files) == sorted(local_files)
    assert {"manifest.json", "report.json", "removed.jsonl", "scores.jsonl"} <= set(local_files)
    assert sum(name.endswith(".array_record") for name in local_files) == 6
    for name, content in local_files.items():
        assert beam_files[name] == content, f"{name} differs between the executors"


def test_planted_duplicates_and_failures_are_removed_as_designed(planted_outputs):

    root, _, _ = planted_outputs
    removed = [
        json.loads(line) for line in (root / "beam" / "removed.jsonl").read_text().splitlines()
    ]
    by_id = {record["id"]: record for record in removed}
    assert by_id["short"]["stage"] == "filter" and by_id["b-tiny"]["stage"] == "filter"
    assert by_id["w1-exact"] == {
        "id": "w1-exact", "source": "web", "stage": "exact_dedup",
        "reason": "exact duplicate", "duplicate_of": "w1",
    }  # fmt: skip
    assert by_id["b4-exact"]["duplicate_of"] == "w4"
    assert by_id["w2-near"]["duplicate_of"] == "w2"
    assert by_id["w2-near-near"]["duplicate_of"] == "w2"
    assert by_id["w3-near-exact"]["stage"] == "minhash_dedup"
    # b3-near equals w3-near-exact up to case, so exact dedup removes it first (web comes first).
    assert by_id["b3-near"]["stage"] == "exact_dedup"
    assert by_id["b3-near"]["duplicate_of"] == "w3-near-exact"
    assert by_id["w3-near-exact"]["duplicate_of"] == "w3"
    assert "b-past-cap" not in by_id  # never read: books is capped at 5 documents


def test_direct_runner_matches_the_dedup_library_on_the_same_documents(planted_outputs):
    """The kept set and duplicate_of equal exact_dedup + minhash_dedup run in order_key order."""

    from jaxpretrain.curate import config as config_lib
    from jaxpretrain.curate import dedup, stages

    root, _, _ = planted_outputs
    cfg = _planted_config(root)
    curator = stages.Curator(cfg)
    documents = []
    for unit in stages.list_work_units(cfg):
        from jaxpretrain.curate.sources import SourceReport

        limit = unit.spec.max_documents  # one books shard, so the cap applies to it alone
        for doc in stages.read_work_unit(unit, SourceReport(source=unit.spec.name), limit):
            outcome = curator.process(doc)
            if outcome.document is not None:
                documents.append(outcome.document)
    documents.sort(key=stages.order_key)
    exact = dedup.exact_dedup(documents)
    survivors = [doc for doc in documents if exact.is_kept(doc.id)]
    near = dedup.minhash_dedup(survivors, config_lib.minhash_config(cfg))
    expected = {**exact.duplicate_of, **near.duplicate_of}
    removed = [
        json.loads(line) for line in (root / "beam" / "removed.jsonl").read_text().splitlines()
    ]
    duplicate_of = {r["id"]: r["duplicate_of"] for r in removed if "duplicate_of" in r}
    assert duplicate_of == expected


def test_direct_runner_matches_local_with_verified_minhash_only_on_a_rerun(planted_outputs):
    """Exact dedup off, MinHash collisions verified; the Beam run reuses the earlier run's
    output directory, so stale work files must not leak into the result."""
    from jaxpretrain.curate import executors
    from jaxpretrain.curate.executors import local as local_executor

    root, _, _ = planted_outputs
    cfg = _planted_config(root)
    cfg.dedup.exact = False
    cfg.dedup.minhash.verify_threshold = 0.5
    local_executor.run(cfg, root / "local-verified", progress=False)
    cfg.executor.name = "beam"  # through the executor switch the CLI uses
    executors.run(cfg, root / "beam", progress=False)
    local_files, beam_files = _read_output(root / "local-verified"), _read_output(root / "beam")
    for name, content in local_files.items():
        assert beam_files[name] == content, f"{name} differs between the executors"
    assert json.loads((root / "beam" / "report.json").read_text())["dedup"]["exact"] is None
