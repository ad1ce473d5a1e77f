"""Source specs, shard listing and every reader on data made here; mixture weights."""

import gzip
import json
import math

import pytest

from jaxpretrain.curate import sources
from jaxpretrain.curate.mixture import mixture_weights
from jaxpretrain.curate.sources import InputShard, SourceReport, SourceSpec

_PROSE = "A paragraph of ordinary prose about data, tokens and models. "


def _read_all(spec):
    report = SourceReport(source=spec.name)
    sources.check_source(spec)
    documents = list(sources.iter_source_documents(spec, report))
    return documents, report


def _skips(report, root=None):
    prefix = f"{root}/" if root else ""
    return {(s.path.removeprefix(prefix), s.line, s.reason) for s in report.skipped}


def _write_jsonl(path, lines, compress=False):
    data = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    if compress:
        with gzip.open(path, "wb") as packed:
            packed.write(data.encode())
    else:
        path.write_text(data)


# ---------------------------------------------------------------------------------- SourceSpec


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"type": "csv"}, "type='csv'"),
        ({"type": "jsonl"}, "path=''"),
        ({"type": "stdlib", "kind": "prose"}, "kind='prose'"),
        ({"type": "stdlib", "weight": -1.0}, "weight=-1.0"),
        ({"type": "stdlib", "weight": math.nan}, "weight=nan"),
        ({"type": "tfds"}, "tfds_name=''"),
        ({"type": "seqio"}, "seqio_task=''"),
        ({"type": "jsonl", "path": "x", "text_field": ""}, "text_field=''"),
        ({"type": "stdlib", "max_documents": -2}, "max_documents=-2"),
    ],
)
def test_invalid_spec_is_one_sentence_naming_field_and_value(fields, message):
    with pytest.raises(ValueError, match=f"Source 'web' has {message}"):
        SourceSpec(name="web", **fields)


def test_missing_path_fails_before_any_work(tmp_path):
    spec = SourceSpec(name="web", type="jsonl", path=str(tmp_path / "nowhere" / "*.jsonl.gz"))
    with pytest.raises(FileNotFoundError, match=r"Source 'web'.*nowhere.*matches no file"):
        sources.check_source(spec)
    spec = SourceSpec(name="books", type="parquet", path=str(tmp_path / "books.parquet"))
    with pytest.raises(FileNotFoundError, match=r"Source 'books'.*books.parquet.*does not exist"):
        sources.check_source(spec)
    (tmp_path / "empty_dir").mkdir()
    spec = SourceSpec(name="news", type="files", path=str(tmp_path / "empty_dir"))
    with pytest.raises(FileNotFoundError, match="holds no file"):
        sources.check_source(spec)


# ---------------------------------------------------------------------------------------- JSONL


def test_jsonl_with_custom_fields_ids_and_bad_lines(tmp_path):
    path = tmp_path / "web.jsonl"
    _write_jsonl(
        path,
        [
            {"body": "first " + _PROSE, "doc_id": "w-1"},
            {"body": "no id " + _PROSE},
            '{"body": "unterminated',
            {"text": "wrong field"},
            {"body": 7},
            {"body": "   "},
        ],
    )
    spec = SourceSpec(
        name="web", type="jsonl", path=str(path), text_field="body", id_field="doc_id"
    )
    documents, report = _read_all(spec)
    assert [d.id for d in documents] == ["w-1", "web:web.jsonl:2"]
    assert {d.source for d in documents} == {"web"} and {d.kind for d in documents} == {"text"}
    assert _skips(report, tmp_path) == {
        ("web.jsonl", 3, "malformed JSON"),
        ("web.jsonl", 4, "missing 'body' field"),
        ("web.jsonl", 5, "'body' field is not a string"),
        ("web.jsonl", 6, "empty text"),
    }
    assert report.documents == 2


def test_glob_of_gzipped_jsonl_lists_one_shard_per_file_in_sorted_order(tmp_path):
    web = tmp_path / "data" / "web"
    web.mkdir(parents=True)
    for index in (2, 0, 1):
        lines = [{"text": f"doc {index}-{line} " + _PROSE} for line in range(3)]
        _write_jsonl(web / f"part-{index}.jsonl.gz", lines, compress=True)
    (web / "README.txt").write_text("not matched by the pattern")
    with gzip.open(web / "part-3.jsonl.gz", "wb") as packed:
        packed.write(b'{"text": "ok ' + _PROSE.encode() + b'"}\n{"text": "bad \xff"}\n')
    spec = SourceSpec(name="web", type="jsonl", path=str(web / "*.jsonl.gz"))
    shards = sources.list_input_shards(spec)
    assert shards == sources.list_input_shards(spec)
    assert [s.location.rsplit("/", 1)[1] for s in shards] == [
        f"part-{i}.jsonl.gz" for i in range(4)
    ]
    assert [s.index for s in shards] == [0, 1, 2, 3] and {s.source for s in shards} == {"web"}

    report = SourceReport(source="web")
    second = list(sources.iter_shard_documents(spec, shards[1], report))
    assert [d.id for d in second] == [f"web:part-1.jsonl.gz:{line}" for line in (1, 2, 3)]
    documents, report = _read_all(spec)
    assert len(documents) == 10
    assert _skips(report, web) == {("part-3.jsonl.gz", 2, "invalid UTF-8")}


def test_directory_source_walks_sorted_and_records_hidden_and_foreign_files(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / ".cache").mkdir()
    (root / ".cache" / "x.jsonl").write_text('{"text": "hidden"}\n')
    _write_jsonl(root / "b.jsonl", [{"text": "b " + _PROSE}])
    _write_jsonl(root / "sub" / "a.jsonl", [{"text": "a " + _PROSE}])
    (root / "notes.txt").write_text(_PROSE)
    (root / "empty.jsonl").write_text("")
    spec = SourceSpec(name="mixed", type="jsonl", path=str(root))
    documents, report = _read_all(spec)
    assert [d.id for d in documents] == ["mixed:b.jsonl:1", "mixed:sub/a.jsonl:1"]
    assert _skips(report, root) == {
        (".cache", None, "hidden directory"),
        ("empty.jsonl", None, "empty file"),
        (
            "notes.txt",
            None,
            "not a jsonl file (.jsonl, .jsonl.gz, .jsonl.zst, .json.gz, .json.zst)",
        ),
    }


def test_files_source_reads_by_extension_with_kind(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    (root / "main.py").write_text("def main():\n    return 0\n")
    (root / "README.md").write_text("# Repo\n" + _PROSE)
    (root / "blob.bin").write_bytes(b"\x00\x01\x02")
    documents, report = _read_all(SourceSpec(name="repo", type="files", path=str(root)))
    assert [(d.id, d.kind) for d in documents] == [
        ("repo:README.md", "text"),
        ("repo:main.py", "code"),
    ]
    assert _skips(report, root) == {("blob.bin", None, "binary file")}
    forced = SourceSpec(name="repo", type="files", path=str(root), kind="code")
    assert {d.kind for d in _read_all(forced)[0]} == {"code"}


# -------------------------------------------------------------------------------------- Parquet


def _write_parquet(path, columns, row_group_size=None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)


def test_parquet_rows_with_null_text_custom_fields_and_bounded_batches(tmp_path, monkeypatch):
    from jaxpretrain.curate import file_readers

    monkeypatch.setattr(file_readers, "PARQUET_BATCH_ROWS", 2)  # several batches per file
    path = tmp_path / "books.parquet"
    texts = ["one " + _PROSE, None, "three " + _PROSE, "", "five " + _PROSE]
    _write_parquet(path, {"content": texts, "key": ["k1", "k2", None, "k4", "k5"]}, 2)
    spec = SourceSpec(
        name="books", type="parquet", path=str(path), text_field="content", id_field="key"
    )
    documents, report = _read_all(spec)
    assert [d.id for d in documents] == ["k1", "books:books.parquet:3", "k5"]
    assert documents[1].text.startswith("three ")
    assert _skips(report, tmp_path) == {
        ("books.parquet", 2, "null text"),
        ("books.parquet", 4, "empty text"),
    }


def test_parquet_missing_column_binary_text_and_unreadable_file(tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    _write_parquet(parts / "a.parquet", {"body": ["no text column"]})
    _write_parquet(parts / "b.parquet", {"text": [b"bytes " + _PROSE.encode(), b"\xff\xfe"]})
    _write_parquet(parts / "e.parquet", {"text": [5]})
    (parts / "c.parquet").write_bytes(b"PAR1 this is not parquet")
    _write_parquet(parts / "d.parquet", {"text": pa_empty_strings()})
    spec = SourceSpec(name="mixed", type="parquet", path=str(parts))
    assert [s.location.rsplit("/", 1)[1] for s in sources.list_input_shards(spec)] == [
        "a.parquet",
        "b.parquet",
        "c.parquet",
        "d.parquet",
        "e.parquet",
    ]
    documents, report = _read_all(spec)
    assert [(d.id, d.text[:6]) for d in documents] == [("mixed:b.parquet:1", "bytes ")]
    assert _skips(report, parts) == {
        ("a.parquet", None, "missing 'text' column"),
        ("b.parquet", 2, "invalid UTF-8"),
        ("e.parquet", 1, "'text' field is not a string"),
        ("c.parquet", None, "unreadable parquet (ArrowInvalid)"),
        ("d.parquet", None, "empty file"),
    }


def pa_empty_strings():
    import pyarrow as pa

    return pa.array([], type=pa.string())


# --------------------------------------------------------------------------------------- stdlib


def test_stdlib_is_one_shard_named_by_the_spec():
    spec = SourceSpec(name="python", type="stdlib", max_documents=3)
    assert sources.list_input_shards(spec) == [InputShard("python", 0, "stdlib")]
    documents, report = _read_all(spec)
    assert len(documents) == 3 and report.documents == 3
    assert all(d.source == "python" and d.id.startswith("python:") for d in documents)


# -------------------------------------------------------------------------------------- mixture


SEED_MIXTURE = {
    "web": 45.0,
    "books": 15.0,
    "wikipedia": 5.0,
    "code": 15.0,
    "academic": 10.0,
    "news": 10.0,
}


def test_mixture_weights_normalise_the_seed_mixture():
    weights = mixture_weights({}, SEED_MIXTURE, mode="weights", temperature=1.0)
    assert list(weights) == list(SEED_MIXTURE)
    expected = {"web": 0.45, "books": 0.15, "wikipedia": 0.05, "code": 0.15}
    expected |= {"academic": 0.10, "news": 0.10}
    assert weights == pytest.approx(expected, abs=1e-12)


def test_mixture_weights_temperature_flattens_the_seed_mixture():
    weights = mixture_weights({}, SEED_MIXTURE, mode="weights", temperature=2.0)
    # sqrt of each share over the sum of square roots (2.3014794).
    assert weights == pytest.approx(
        {
            "web": 0.2914736,
            "books": 0.1682823,
            "wikipedia": 0.0971579,
            "code": 0.1682823,
            "academic": 0.1374020,
            "news": 0.1374020,
        },
        abs=1e-6,
    )


def test_mixture_temperature_mode_uses_token_counts():
    counts = {"en": 900_000, "sw": 100_000}
    assert mixture_weights(counts, {"en": 1, "sw": 1}, "temperature", 1.0) == pytest.approx(
        {"en": 0.9, "sw": 0.1}
    )
    assert mixture_weights(counts, {"en": 1, "sw": 1}, "temperature", 2.0) == pytest.approx(
        {"en": 0.75, "sw": 0.25}
    )
    with pytest.raises(KeyError, match="'fr'"):
        mixture_weights(counts, {"en": 1, "fr": 1}, "temperature", 2.0)
    with pytest.raises(ValueError, match="temperature=0"):
        mixture_weights(counts, {"en": 1}, "weights", 0)
    with pytest.raises(ValueError, match="mode='uniform'"):
        mixture_weights(counts, {"en": 1}, "uniform", 1.0)


# ---------------------------------------------------------------------------- TFDS and seqio


def _import_or_skip(module):
    try:
        return __import__(module)
    except Exception as error:  # noqa: BLE001 - e.g. a protobuf version clash, not only ImportError
        pytest.skip(f"{module} is not importable ({type(error).__name__}: {error}); it is an extra")


_TEXTS = [b"first " + _PROSE.encode(), b"\xff not utf-8", b"  ", b"fourth " + _PROSE.encode()]


def test_tfds_source_reads_mock_data_and_records_bad_text():
    tfds = _import_or_skip("tensorflow_datasets")
    import tensorflow as tf

    def as_dataset(builder, split, **unused):
        return tf.data.Dataset.from_tensor_slices({"text": _TEXTS})

    spec = SourceSpec(name="lm", type="tfds", tfds_name="lm1b", tfds_split="train")
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        shards = sources.list_input_shards(spec)
        assert shards == [InputShard("lm", 0, "train")]
        documents, report = _read_all(spec)
    assert [d.id for d in documents] == ["lm:train:1", "lm:train:4"]
    assert documents[0].text == _TEXTS[0].decode() and documents[0].source == "lm"
    assert _skips(report) == {
        ("tfds:lm1b/train", 2, "invalid UTF-8"),
        ("tfds:lm1b/train", 3, "empty text"),
    }


def test_tfds_shards_follow_stored_file_shards(monkeypatch):
    _import_or_skip("tensorflow_datasets")
    from jaxpretrain.curate import dataset_readers

    class FakeBuilder:
        class info:  # noqa: N801 - mirrors builder.info.splits
            splits = {"train": type("Split", (), {"shard_lengths": [3, 4, 2]})()}

    monkeypatch.setattr(dataset_readers, "tfds_builder", lambda spec: FakeBuilder)
    spec = SourceSpec(name="lm", type="tfds", tfds_name="lm1b")
    assert [s.location for s in sources.list_input_shards(spec)] == [
        "train[0:3]",
        "train[3:7]",
        "train[7:9]",
    ]


def test_unknown_tfds_dataset_is_a_clear_error():
    _import_or_skip("tensorflow_datasets")
    spec = SourceSpec(name="lm", type="tfds", tfds_name="no_such_dataset_xyz")
    with pytest.raises(FileNotFoundError, match="Source 'lm'.*tfds_name='no_such_dataset_xyz'"):
        sources.check_source(spec)


def test_seqio_task_source_reads_raw_text_with_custom_fields():
    seqio = _import_or_skip("seqio")
    import tensorflow as tf

    def dataset_fn(split, shuffle_files, seed=None):
        keys = [b"k1", b"", b"", b"k4"]
        return tf.data.Dataset.from_tensor_slices({"body": _TEXTS, "key": keys})

    task_name = "jaxpretrain_test_tiny_text"
    if task_name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(task_name)
    seqio.TaskRegistry.add(
        task_name,
        source=seqio.FunctionDataSource(dataset_fn, splits=["train", "validation"]),
        output_features={},
    )
    spec = SourceSpec(
        name="tiny", type="seqio", seqio_task=task_name, text_field="body", id_field="key"
    )
    assert sources.list_input_shards(spec) == [InputShard("tiny", 0, "train:0/1")]
    documents, report = _read_all(spec)
    assert [d.id for d in documents] == ["k1", "k4"] and documents[1].source == "tiny"
    where = f"seqio:{task_name}/train:0/1"
    assert _skips(report) == {(where, 2, "invalid UTF-8"), (where, 3, "empty text")}
    with pytest.raises(KeyError, match="seqio_split='test'"):
        sources.check_source(
            SourceSpec(name="t", type="seqio", seqio_task=task_name, seqio_split="test")
        )
    with pytest.raises(KeyError, match="seqio_task='missing_task'.*not a registered"):
        sources.check_source(SourceSpec(name="t", type="seqio", seqio_task="missing_task"))
