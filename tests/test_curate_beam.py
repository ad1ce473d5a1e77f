"""The Apache Beam executor: connected components, and DirectRunner output == local executor's."""

from __future__ import annotations

import json
import pathlib
import random
import shutil

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
      that near copy (a chain: one cluster), an exact copy of a near copy of 3, another
      document reusing the id w5.
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
            {"id": "w5", "text": _prose(13)},  # a second document with the id of a.jsonl's w5
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
    cfg.output.shard_bytes = 1 << 10  # several shards per source and split
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
    # Kept, so that the rerun below starts with an earlier run's work files in place.
    beam_cfg.executor.keep_work = True
    beam_manifest = beam_executor.run_beam(beam_cfg, str(root / "beam"), ["--runner=DirectRunner"])
    return root, local_manifest, beam_manifest


def test_direct_runner_writes_the_local_executors_prepared_directory(planted_outputs):
    root, _, _ = planted_outputs
    local_files, beam_files = _read_output(root / "local"), _read_output(root / "beam")
    assert sorted(beam_files) == sorted(local_files)
    assert {"manifest.json", "report.json", "removed.jsonl", "scores.jsonl"} <= set(local_files)
    shards = sorted(name for name in local_files if name.endswith(".array_record"))
    # One partition per input shard (3), several shards per partition: at shard_bytes=1 KiB
    # every input file's kept documents fill a partition, so the local executor groups no two
    # files into one (Beam always writes one partition per file; see docs/scale_out.md).
    assert {name.split("-p")[1][:5] for name in shards} == {"00000", "00001", "00002"}
    assert any(name.endswith("-00001.array_record") for name in shards)
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
    report = json.loads((root / "beam" / "report.json").read_text())
    assert report["dedup"]["duplicate_ids"] == {
        "count": 1,
        "examples": [{"source": "web", "id": "w5"}],
    }


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
    """Exact dedup off, MinHash collisions verified, workers in two processes; the Beam run
    reuses the earlier run's output directory, whose work files that run kept (keep_work), so
    stale work files must not leak into the result."""
    from jaxpretrain.curate import executors
    from jaxpretrain.curate.executors import local as local_executor

    root, _, _ = planted_outputs
    cfg = _planted_config(root)
    cfg.dedup.exact = False
    cfg.dedup.minhash.verify_threshold = 0.5
    local_executor.run(cfg, root / "local-verified", progress=False)
    cfg.executor.name = "beam"  # through the executor switch the CLI uses
    # Workers in other processes: the finalize stages must pickle and write from there.
    cfg.executor.beam_options = "--direct_num_workers=2 --direct_running_mode=multi_processing"
    executors.run(cfg, root / "beam", progress=False)
    local_files, beam_files = _read_output(root / "local-verified"), _read_output(root / "beam")
    for name, content in local_files.items():
        assert beam_files[name] == content, f"{name} differs between the executors"
    assert json.loads((root / "beam" / "report.json").read_text())["dedup"]["exact"] is None


# --- The launcher holds counts, not the corpus -------------------------------------------------


def _launcher_run(root, num_documents: int) -> dict[str, int]:
    """Runs the pipeline on a generated corpus of `num_documents` (two input files), deletes the
    corpus-sized intermediate files, then runs the launcher's part under tracemalloc."""
    import tracemalloc

    from jaxpretrain.curate import config as config_lib
    from jaxpretrain.curate import synthetic
    from jaxpretrain.curate.executors import beam as beam_executor

    corpus = root / f"corpus-{num_documents}"
    synthetic.write_web_corpus(corpus, num_documents=num_documents, num_files=2)
    cfg = config_lib.default_data_config()
    cfg.sources = [config_lib.source_config(name="web", type="jsonl", path=str(corpus))]
    cfg.filters.chain = ("length",)
    cfg.tokenizer.vocab_size = 430
    cfg.executor.name = "beam"
    cfg.executor.workers = 1
    output = root / f"prepared-{num_documents}"
    work_dir, seconds = beam_executor.run_pipeline(cfg, str(output), ["--runner=DirectRunner"])
    work = pathlib.Path(work_dir)
    for per_document in ("removed", "scores"):  # what the workers sorted into the output
        shutil.rmtree(work / per_document)
    # Measured before the launcher runs: after success it deletes the work directory.
    work_bytes_read = sum(path.stat().st_size for path in work.rglob("part*"))
    tracemalloc.start()
    manifest = beam_executor.finish_run(cfg, str(output), work_dir, seconds)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    documents = json.loads(pathlib.Path(manifest).read_text())["sources"][0]["documents"]
    return {
        "input_bytes": sum(path.stat().st_size for path in corpus.iterdir()),
        "documents": documents,
        "work_bytes_read": work_bytes_read,
        "launcher_peak_bytes": peak,
    }


def test_launcher_memory_after_the_pipeline_does_not_grow_with_the_corpus(tmp_path):
    """The launcher's part after the pipeline (report, manifest) reads only counters, unit
    stats, partition results and the removal tally: at 4x the documents, its traced peak and the
    bytes it reads stay the same, while a launcher that held the kept documents (as before
    issue 12) would need several MB more."""
    small = _launcher_run(tmp_path, 250)
    large = _launcher_run(tmp_path, 1000)
    extra_input = large["input_bytes"] - small["input_bytes"]
    assert large["documents"] > 3.5 * small["documents"]
    assert extra_input > 1_000_000
    # The work files the launcher reads: one record per unit, counter and partition.
    assert large["work_bytes_read"] < small["work_bytes_read"] * 1.1
    print(f"launcher after the pipeline: small {small}, large {large}")
    assert large["launcher_peak_bytes"] - small["launcher_peak_bytes"] < 0.01 * extra_input


def _sample_documents_and_reference(max_bytes: int):
    """120 documents and the definition of their tokenizer sample: the train documents in
    `tokenizer_sample.sample_rank` order, as long a prefix as fits in `max_bytes`."""
    from jaxpretrain.curate import config as config_lib
    from jaxpretrain.curate import stages, tokenizer_sample
    from jaxpretrain.curate.document import Document

    cfg = config_lib.default_data_config()
    cfg.tokenizer.max_training_bytes = max_bytes
    documents = [
        Document(id=f"d{i}", text=_prose(i, num_words=20 + i % 30), source="web",
                 metadata={"order_key": f"0000:00000000:{i:012d}"})
        for i in range(120)
    ]  # fmt: skip
    train = [doc for doc in documents if stages.assign_split(doc, cfg) == stages.TRAIN_SPLIT]
    reference, total = [], 0
    for doc in sorted(
        train, key=lambda doc: tokenizer_sample.sample_rank(doc, int(cfg.tokenizer.seed))
    ):
        total += len(doc.text.encode("utf-8"))
        if total > max_bytes:
            break
        reference.append(doc.text)
    assert len(reference) < len(train) / 3  # the budget, not the corpus, bounds the sample
    return cfg, documents, reference


def test_tokenizer_sample_combiner_takes_the_bounded_sample_whatever_the_merge_tree():
    """Beam adds documents to per-bundle accumulators and merges those, merged ones included,
    in any grouping; the sample must stay the documented prefix (and so the local one)."""
    from jaxpretrain.curate.executors.beam_finalize import TokenizerSample

    cfg, documents, reference = _sample_documents_and_reference(4_000)
    combiner = TokenizerSample(cfg)
    for trial in range(40):
        rng = random.Random(trial)
        shuffled = rng.sample(documents, len(documents))
        bundles = rng.randint(2, 20)
        accumulators = []
        for bundle in range(bundles):
            accumulator = combiner.create_accumulator()
            for doc in shuffled[bundle::bundles]:
                accumulator = combiner.add_input(accumulator, doc)
            accumulators.append(accumulator)
        while len(accumulators) > 1:
            rng.shuffle(accumulators)
            count = rng.randint(2, len(accumulators))
            merged = combiner.merge_accumulators(accumulators[:count])
            accumulators = [merged, *accumulators[count:]]
        sample = combiner.extract_output(accumulators[0])
        assert len(sample) == len(reference) and sample == reference, f"trial {trial}"


def test_tokenizer_sample_in_a_pipeline_equals_the_local_finalize_sample():
    from jaxpretrain.curate import finalize, tokenizer_sample
    from jaxpretrain.curate.executors.beam_finalize import TokenizerSample

    cfg, documents, reference = _sample_documents_and_reference(4_000)
    halves = [finalize.InMemoryPartition(tuple(documents[:60])),
              finalize.InMemoryPartition(tuple(documents[60:]))]  # fmt: skip
    assert tokenizer_sample.tokenizer_training_sample(halves, cfg) == reference
    id_of_text = {doc.text: doc.id for doc in documents}
    with beam.Pipeline() as pipeline:
        sampled_ids = (
            pipeline
            | beam.Create(documents[::-1])
            | beam.Reshuffle()
            | beam.CombineGlobally(TokenizerSample(cfg))
            | beam.Map(lambda texts: [id_of_text[text] for text in texts])
        )
        assert_that(sampled_ids, equal_to([[id_of_text[text] for text in reference]]))


# --- Reused ids, work-directory clean-up, an empty train split ---------------------------------


def _small_config(root, corpus: str):
    from jaxpretrain.curate import config as config_lib

    cfg = config_lib.default_data_config()
    cfg.sources = [config_lib.source_config(name="web", type="jsonl", path=str(root / corpus))]
    cfg.filters.chain = ("length",)
    cfg.filters.settings.length.min_chars = 50
    cfg.tokenizer.vocab_size = 430
    cfg.executor.workers = 1
    return cfg


def test_clusters_whose_kept_documents_share_an_id_are_counted_apart(tmp_path):
    """A(id x, T1), B(id y, T1), C(id x, T2), D(id z, T2): two exact clusters of two, both kept
    documents named x. Clusters are counted per kept document, not per (source, id)."""
    from jaxpretrain.curate.executors import beam as beam_executor
    from jaxpretrain.curate.executors import local as local_executor

    (tmp_path / "web").mkdir()
    first, second = _prose(101), _prose(102)
    _write_jsonl(
        tmp_path / "web" / "a.jsonl",
        [{"id": "x", "text": first}, {"id": "y", "text": first},
         {"id": "x", "text": second}, {"id": "z", "text": second}]
        + [{"id": f"other{i}", "text": _prose(200 + i)} for i in range(6)],
    )  # fmt: skip
    cfg = _small_config(tmp_path, "web")
    local_executor.run(cfg, tmp_path / "local", progress=False)
    beam_executor.run_beam(_small_config(tmp_path, "web"), str(tmp_path / "beam"))
    local_dedup = json.loads((tmp_path / "local" / "report.json").read_text())["dedup"]
    beam_dedup = json.loads((tmp_path / "beam" / "report.json").read_text())["dedup"]
    assert local_dedup["exact"]["cluster_sizes"] == {"2": 2}
    assert _without_timings(beam_dedup) == _without_timings(local_dedup)


def _part_files(directory: pathlib.Path) -> list[str]:
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("part*"))


@pytest.mark.parametrize("keep_work", [False, True])
def test_work_files_are_deleted_after_success_unless_keep_work(tmp_path, keep_work):
    """removed/ and scores/ parts hold every removal and score: as large as the corpus's
    metadata, so they must not outlive a successful run (the local executor's rule)."""
    from jaxpretrain.curate.executors import beam as beam_executor

    (tmp_path / "web").mkdir()
    _write_jsonl(
        tmp_path / "web" / "a.jsonl",
        [{"id": f"d{i}", "text": _prose(300 + i)} for i in range(8)] + [{"id": "s", "text": "x"}],
    )
    cfg = _small_config(tmp_path, "web")
    cfg.executor.keep_work = keep_work
    work = tmp_path / "work"
    beam_executor.run_beam(cfg, str(tmp_path / "out"), work_dir=str(work))
    kept_parts = _part_files(work) if work.exists() else []
    if keep_work:
        assert any(name.startswith("removed/") for name in kept_parts)
        assert any(name.startswith("scores/") for name in kept_parts)
    else:
        assert kept_parts == []
        assert not work.exists()  # only our folders were in it, so it goes too


def test_an_empty_train_split_fails_with_the_local_executors_message(tmp_path):
    from jaxpretrain.curate.executors import beam as beam_executor
    from jaxpretrain.curate.executors import local as local_executor

    (tmp_path / "web").mkdir()
    # At validation_fraction=0.5 these ids all hash into validation.
    validation_ids = ["v2", "v4", "v5", "v6", "v7", "v8"]
    _write_jsonl(
        tmp_path / "web" / "a.jsonl",
        [{"id": id_, "text": _prose(400 + i)} for i, id_ in enumerate(validation_ids)],
    )
    message = "No training text for the tokenizer; the train split is empty."
    cfg = _small_config(tmp_path, "web")
    cfg.split.validation_fraction = 0.5
    with pytest.raises(ValueError, match=message):
        local_executor.run(cfg, tmp_path / "local", progress=False)
    with pytest.raises(Exception, match=message):
        beam_executor.run_beam(cfg, str(tmp_path / "beam"))


def test_gs_sources_and_output_through_a_gcs_emulator(planted_outputs, tmp_path):
    """The planted corpus read from gs:// and the prepared directory written to gs:// (a local
    GCS emulator, reached through gcsfs as epath does; the work directory stays local, since
    Beam's own gs:// filesystem needs real GCS): the same shards, tokenizer, removed.jsonl and
    scores.jsonl as the local executor's local run."""
    gcs_emulator = pytest.importorskip("gcs_emulator")
    gcsfs = pytest.importorskip("gcsfs")
    from etils import epath

    from jaxpretrain.curate.executors import beam as beam_executor
    from jaxpretrain.data import manifest as manifest_lib

    root, _, _ = planted_outputs
    with gcs_emulator.serving("bucket"):
        storage = gcsfs.GCSFileSystem(skip_instance_cache=True, use_listings_cache=False)
        for source in ("web", "books"):
            for path in sorted((root / source).iterdir()):
                storage.pipe_file(f"bucket/planted/{source}/{path.name}", path.read_bytes())
        cfg = _planted_config(root)
        for source in cfg.sources:
            source.path = f"gs://bucket/planted/{source.name}"
        output = "gs://bucket/prepared"
        beam_executor.run_beam(cfg, output, ["--runner=DirectRunner"], str(tmp_path / "work"))
        local_files = _read_output(root / "local")
        compared = [name for name in local_files if not name.endswith(".json")]
        assert any(name.endswith(".array_record") for name in compared)
        for name in compared:
            remote = epath.Path(output) / name
            content = remote.read_bytes()
            if name.endswith(".jsonl"):
                content = content.decode().splitlines()
            assert content == local_files[name], f"{name} differs"
        assert manifest_lib.is_prepared(output)
