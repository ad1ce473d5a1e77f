"""Inputs at scale: shard identities for resume, the document-size cap, binary and damaged
files reported once, compressed and Parquet-directory layouts, metadata fields carried through
curation, and sources on gs://."""

import gzip
import json
import os
import pathlib
import sys
import tracemalloc

import pytest

from jaxpretrain.curate import config as data_config
from jaxpretrain.curate import sources, stages
from jaxpretrain.curate.sources import SourceReport, SourceSpec

_PROSE = "A paragraph of ordinary prose about data, tokens and models. "


def _read_all(spec):
    report = SourceReport(source=spec.name)
    sources.check_source(spec)
    return list(sources.iter_source_documents(spec, report)), report


def _skips(report):
    return [(os.path.basename(s.path), s.line, s.reason) for s in report.skipped]


def _jsonl_bytes(records):
    return "".join(json.dumps(record) + "\n" for record in records).encode()


def _identities(spec):
    return [sources.shard_identity(spec, shard) for shard in sources.list_input_shards(spec)]


# ------------------------------------------------------------------------------ shard identity


def test_shard_identity_changes_when_a_file_is_rewritten_and_only_then(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "alpha"}\n')
    (tmp_path / "b.jsonl").write_text('{"text": "beta"}\n')
    spec = SourceSpec(name="web", type="jsonl", path=str(tmp_path))
    first = _identities(spec)
    assert _identities(spec) == first
    (tmp_path / "a.jsonl").write_text('{"text": "gamma"}\n')  # same size, rewritten at once
    second = _identities(spec)
    assert second[0] != first[0]
    assert second[1] == first[1]
    os.utime(tmp_path / "b.jsonl")  # touched: its content may have changed
    assert _identities(spec)[1] != second[1]
    (tmp_path / "c.jsonl").symlink_to(tmp_path / "gone.jsonl")  # listed, reported when read
    assert _identities(spec)[2].endswith("unreadable (FileNotFoundError)")


def test_stdlib_identity_is_stable_and_names_the_interpreter():
    spec = SourceSpec(name="stdlib", type="stdlib")
    (shard,) = sources.list_input_shards(spec)
    identity = sources.shard_identity(spec, shard)
    assert identity == sources.shard_identity(spec, shard)
    assert identity.startswith("stdlib:") and sys.version in identity


# ------------------------------------------------------------------------- document-size cap


def test_an_overlong_jsonl_line_is_skipped_without_being_loaded(tmp_path):
    path = tmp_path / "web.jsonl"
    huge = "x" * (40 * 2**20)  # one 40 MiB document between two ordinary ones
    with open(path, "w") as out:
        for index, text in enumerate(["first " + _PROSE, huge, "third " + _PROSE], start=1):
            out.write(json.dumps({"id": f"d{index}", "text": text}) + "\n")
    del huge
    spec = SourceSpec(name="web", type="jsonl", path=str(path))
    assert spec.max_document_bytes == 8 * 2**20
    tracemalloc.start()
    try:
        documents, report = _read_all(spec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [d.id for d in documents] == ["d1", "d3"]
    assert _skips(report) == [("web.jsonl", 2, "document over max_document_bytes")]
    assert peak < 20 * 2**20, f"reading held {peak / 2**20:.0f} MiB"


def test_the_cap_applies_to_whole_files_and_parquet_rows(tmp_path):
    (tmp_path / "small.md").write_text(_PROSE)
    (tmp_path / "large.md").write_text(_PROSE * 40)
    _write_parquet(tmp_path / "rows.parquet", {"text": [_PROSE, _PROSE * 40]})
    spec = SourceSpec(name="web", type="files", path=str(tmp_path), max_document_bytes=1_000)
    documents, report = _read_all(spec)
    assert [d.id for d in documents] == ["web:rows.parquet:1", "web:small.md"]
    assert sorted(_skips(report)) == [
        ("large.md", None, "document over max_document_bytes"),
        ("rows.parquet", 2, "document over max_document_bytes"),
    ]


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_max_document_bytes_must_be_a_positive_count(value):
    with pytest.raises(ValueError, match=f"Source 'web' has max_document_bytes={value!r}"):
        SourceSpec(name="web", type="stdlib", max_document_bytes=value)


# ---------------------------------------------------------------- damaged files, reported once


def test_a_binary_file_named_jsonl_is_one_skip(tmp_path):
    (tmp_path / "image.jsonl").write_bytes(bytes(range(256)) * 64 + b"\n" * 60)
    documents, report = _read_all(SourceSpec(name="web", type="jsonl", path=str(tmp_path)))
    assert documents == []
    assert _skips(report) == [("image.jsonl", None, "binary file")]


def test_a_lone_surrogate_is_one_skip_naming_the_line_and_the_run_goes_on(tmp_path):
    """Valid JSON can escape half a UTF-16 pair; no UTF-8 file can hold it, so it used to crash
    the unit's docs.jsonl write with no file or line named."""
    lines = [{"id": "a", "text": _PROSE}, {"id": "b", "text": "broken \ud800 half"},
             {"id": "c", "text": "an emoji pair \ud83d\ude00 is fine. " + _PROSE}]  # fmt: skip
    (tmp_path / "web.jsonl").write_bytes(_jsonl_bytes(lines))
    cfg = data_config.default_data_config()
    cfg.sources = [data_config.source_config(name="web", type="jsonl", path=str(tmp_path))]
    cfg.filters.chain = ()
    cfg.tokenizer.vocab_size = 430  # a tiny corpus
    cfg.clean.enabled = False  # (ftfy would otherwise hide it in the text, not in an id)
    from jaxpretrain.curate import prepare

    manifest = json.loads(
        pathlib.Path(prepare.prepare_from_config(cfg, tmp_path / "out", progress=False)).read_text()
    )
    (source,) = manifest["report"]["sources"]
    assert source["documents"] == 2
    assert source["skipped_by_reason"] == {"invalid Unicode (lone surrogate)": 1}
    assert source["skipped"][0]["line"] == 2


def test_a_jsonl_gz_that_is_not_gzip_is_one_skip(tmp_path):
    (tmp_path / "plain.jsonl.gz").write_bytes(_jsonl_bytes([{"text": _PROSE}]))
    documents, report = _read_all(SourceSpec(name="web", type="jsonl", path=str(tmp_path)))
    assert documents == []
    assert _skips(report) == [("plain.jsonl.gz", None, "unreadable file (BadGzipFile)")]


# ------------------------------------------------------------------------------------ layouts


def test_dolma_json_gz_and_zstd_jsonl_are_read_as_json_lines(tmp_path):
    import zstandard

    (tmp_path / "a.json.gz").write_bytes(gzip.compress(_jsonl_bytes([{"text": "a " + _PROSE}])))
    zstd = zstandard.ZstdCompressor().compress(_jsonl_bytes([{"text": "b " + _PROSE}] * 2))
    (tmp_path / "b.jsonl.zst").write_bytes(zstd)
    for source_type in ("files", "jsonl"):
        spec = SourceSpec(name="web", type=source_type, path=str(tmp_path))
        documents, report = _read_all(spec)
        assert [d.id for d in documents] == [
            "web:a.json.gz:1",
            "web:b.jsonl.zst:1",
            "web:b.jsonl.zst:2",
        ]
        assert report.num_skipped == 0


def _write_parquet(path, columns):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)


def test_a_directory_of_parquet_parts_is_read_in_part_order(tmp_path):
    dataset = tmp_path / "books.parquet"  # the layout Spark and Hugging Face write
    dataset.mkdir()
    for part in (1, 0):
        _write_parquet(dataset / f"part-{part:05d}.parquet", {"text": [f"p{part} " + _PROSE] * 2})
    (dataset / "_SUCCESS").write_bytes(b"")
    documents, report = _read_all(SourceSpec(name="books", type="parquet", path=str(dataset)))
    assert [d.text[:2] for d in documents] == ["p0", "p0", "p1", "p1"]
    assert _skips(report) == [("_SUCCESS", None, "not a parquet file (.parquet)")]


# ---------------------------------------------------------------------------- metadata fields


def test_metadata_fields_are_carried_from_jsonl_and_parquet(tmp_path):
    (tmp_path / "a.jsonl").write_text(
        json.dumps({"text": _PROSE, "url": "https://a.example/x", "lang": "en", "skip": 1}) + "\n"
    )
    _write_parquet(
        tmp_path / "b.parquet", {"text": [_PROSE], "url": [None], "lang": ["de"], "skip": [2]}
    )
    spec = SourceSpec(name="web", type="files", path=str(tmp_path), metadata_fields=("url", "lang"))
    documents, _ = _read_all(spec)
    assert [dict(d.metadata) for d in documents] == [
        {"url": "https://a.example/x", "lang": "en"},
        {"lang": "de"},
    ]


def test_the_url_blocklist_fires_on_a_jsonl_source_through_the_pipeline(tmp_path):
    records = [
        {"id": "ok", "text": _PROSE * 3, "url": "https://news.example.org/a"},
        {"id": "blocked", "text": _PROSE * 3, "url": "https://www.pornhub.com/view"},
    ]
    (tmp_path / "web.jsonl").write_bytes(_jsonl_bytes(records))
    cfg = data_config.default_data_config()
    cfg.sources = [data_config.source_config(name="web", type="jsonl", path=str(tmp_path))]
    cfg.filters.chain = ("blocklist",)
    curator = stages.Curator(cfg)
    outcomes = {}
    for unit in stages.list_work_units(cfg):
        for doc in stages.read_work_unit(unit, SourceReport(source="web")):
            outcomes[doc.id] = curator.process(doc)
    assert outcomes["ok"].document is not None
    assert outcomes["blocked"].document is None
    assert "blocked_domain" in outcomes["blocked"].removal["reason"]


# ----------------------------------------------------------------------------- gs:// sources


@pytest.fixture(scope="module")
def gcs_bucket():
    """gs://inputs on a local GCS emulator (see test_remote_workdir.py), reached through gcsfs."""
    gcs_emulator = pytest.importorskip("gcs_emulator")
    with gcs_emulator.serving("inputs"):
        yield "gs://inputs"


def _storage():
    import gcsfs

    return gcsfs.GCSFileSystem(skip_instance_cache=True, use_listings_cache=False)


def _write_corpus(root):
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".cache").mkdir()
    (root / ".cache" / "x.jsonl").write_text('{"text": "hidden"}\n')
    (root / "b.jsonl.gz").write_bytes(
        gzip.compress(_jsonl_bytes([{"text": "b " + _PROSE, "url": "u"}]))
    )
    (root / "sub" / "a.jsonl").write_bytes(_jsonl_bytes([{"text": "a " + _PROSE}] * 2))
    (root / "sub" / "deeper" / "c.md").write_text("c " + _PROSE)
    _write_parquet(root / "sub" / "d.parquet", {"text": ["d " + _PROSE]})
    (root / "notes.md").write_text("n " + _PROSE)


def test_a_gs_source_lists_and_reads_as_the_same_local_folder(gcs_bucket, tmp_path):
    local = tmp_path / "corpus"
    _write_corpus(local)
    remote = f"{gcs_bucket}/corpus"
    _storage().put(f"{local}/", remote, recursive=True)
    results = []
    for path in (str(local), remote):
        spec = SourceSpec(name="web", type="files", path=path)
        documents, report = _read_all(spec)
        results.append(([(d.id, d.text, dict(d.metadata)) for d in documents], _skips(report)))
    assert results[1] == results[0]
    assert [doc_id for doc_id, _, _ in results[0][0]][:3] == [
        "web:b.jsonl.gz:1",
        "web:notes.md",
        "web:sub/a.jsonl:1",
    ]
    glob_spec = SourceSpec(name="web", type="jsonl", path=f"{remote}/sub/*.jsonl")
    assert [d.id for d in _read_all(glob_spec)[0]] == ["web:a.jsonl:1", "web:a.jsonl:2"]


def test_a_gs_shard_identity_changes_when_the_object_is_rewritten(gcs_bucket):
    path = f"{gcs_bucket}/identity/a.jsonl"
    _storage().pipe(path, _jsonl_bytes([{"text": "alpha"}]))
    spec = SourceSpec(name="web", type="jsonl", path=path)
    first = _identities(spec)
    assert _identities(spec) == first
    _storage().pipe(path, _jsonl_bytes([{"text": "gamma"}]))
    assert _identities(spec) != first


def test_a_missing_gs_path_is_a_one_line_error(gcs_bucket):
    spec = SourceSpec(name="web", type="jsonl", path=f"{gcs_bucket}/nowhere/*.jsonl")
    with pytest.raises(
        FileNotFoundError,
        match=r"^Source 'web': path 'gs://inputs/nowhere/\*.jsonl' matches no file; [^\n]*$",
    ):
        sources.check_source(spec)
    spec = SourceSpec(name="web", type="jsonl", path="gs://no-such-bucket/web")
    with pytest.raises(
        FileNotFoundError, match=r"^Source 'web': path 'gs://no-such-bucket/web' [^\n]*$"
    ):
        sources.check_source(spec)
