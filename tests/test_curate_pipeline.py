"""The whole curation pipeline on a hand-made corpus: planted duplicates, filter failures and
bad inputs must show up in removed.jsonl, scores.jsonl and report.json exactly."""

import json

import numpy as np
import pytest

from jaxpretrain.curate import config as data_config
from jaxpretrain.curate import prepare, stages
from jaxpretrain.curate.document import Document
from jaxpretrain.curate.mixture import mixture_weights
from jaxpretrain.data import manifest as manifest_lib

_SYLLABLES = ("ka", "lo", "mi", "ren", "tas", "vel", "dor", "pin", "sul", "gar", "bet", "nox")
_WORDS = [a + b + c for a in _SYLLABLES for b in _SYLLABLES for c in ("", "e", "an")]


def _prose(seed: int, sentences: int = 12) -> str:
    """English-shaped prose (stop words, end marks) from made-up words: passes Gopher quality."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(sentences):
        words = rng.choice(_WORDS, size=6)
        lines.append(
            f"The {words[0]} of the {words[1]} and the {words[2]} {words[3]} with "
            f"{words[4]} {words[5]}."
        )
    return " ".join(lines)


_CODE = "def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    web = root / "web"
    web.mkdir()
    originals = [_prose(seed) for seed in range(6)]
    words = originals[0].split(" ")
    words[40] = "different"
    lines = [json.dumps({"id": f"w{i}", "text": text}) for i, text in enumerate(originals)]
    lines += [
        json.dumps({"id": "near0", "text": " ".join(words)}),  # line 7: near duplicate of w0
        json.dumps({"id": "exact1", "text": originals[1].replace(". ", ".\n")}),  # line 8
        json.dumps({"id": "short", "text": "Too short to keep."}),  # line 9
        '{"id": "broken", "text": ',  # line 10: malformed JSON
        json.dumps({"id": "no_text", "body": "missing the text field"}),  # line 11
    ]
    (web / "a.jsonl").write_bytes(
        ("\n".join(lines) + "\n").encode() + b'{"id": "latin", "text": "caf\xe9"}\n'  # line 12
    )
    (web / "empty.jsonl").write_text("")
    code = root / "code"
    code.mkdir()
    (code / "add.py").write_text(_CODE)
    (code / "copy_of_add.py").write_text(_CODE)
    return root


def _config(corpus, **changes):
    cfg = data_config.default_data_config()
    cfg.input_dir = str(corpus)
    cfg.sources = [
        data_config.source_config(name="web", type="jsonl", path="web", weight=3.0),
        data_config.source_config(name="code", type="files", path="code", kind="code"),
    ]
    cfg.filters.chain = ("length", "gopher_quality")
    cfg.tokenizer.vocab_size = 450
    cfg.split.validation_fraction = 0.2
    cfg.output.shard_bytes = 1 << 10  # several shards per source and split
    cfg.executor.workers = 1
    for key, value in changes.items():
        cfg[key] = value
    return cfg


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    output = tmp_path_factory.mktemp("prepared")
    prepare.prepare_from_config(_config(corpus), output, progress=False)
    return output


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_removed_jsonl_has_one_line_per_removed_document(prepared):
    removed = {record["id"]: record for record in _jsonl(prepared / "removed.jsonl")}
    assert removed["short"] == {
        "id": "short",
        "source": "web",
        "stage": "filter",
        "reason": "gopher_quality:too_few_words",
    }
    assert removed["exact1"] == {
        "id": "exact1",
        "source": "web",
        "stage": "exact_dedup",
        "reason": "exact duplicate",
        "duplicate_of": "w1",
    }
    assert removed["near0"]["stage"] == "minhash_dedup"
    assert removed["near0"]["duplicate_of"] == "w0"
    assert removed["code:copy_of_add.py"]["duplicate_of"] == "code:add.py"
    assert set(removed) == {"short", "exact1", "near0", "code:copy_of_add.py"}


def test_report_counts_stages_filters_clusters_and_bad_inputs(prepared, corpus):
    report = json.loads((prepared / "report.json").read_text())
    web = report["sources"]["web"]
    assert web["stages"]["read"]["documents_out"] == 9
    assert web["stages"]["filter"]["documents_out"] == 8
    assert web["stages"]["exact_dedup"]["documents_out"] == 7
    assert web["stages"]["minhash_dedup"]["documents_out"] == 6
    assert web["stages"]["tokenize"]["documents_out"] == 6
    assert web["stages"]["tokenize"]["tokens_out"] > 0
    assert report["filters"]["removed_by_filter"] == {"gopher_quality": 1}
    assert report["dedup"]["exact"]["removed"] == 2  # exact1 and the copied code file
    assert report["dedup"]["exact"]["cluster_sizes"] == {"2": 2}
    assert report["dedup"]["minhash"]["removed"] == 1
    assert report["examples"]["removed"]["gopher_quality:too_few_words"][0]["id"] == "short"
    skipped = {(s["path"].rsplit("/", 1)[1], s["line"], s["reason"]) for s in web["skipped"]}
    assert ("a.jsonl", 10, "malformed JSON") in skipped
    assert ("a.jsonl", 12, "invalid UTF-8") in skipped
    assert any(item[:2] == ("a.jsonl", 11) for item in skipped)
    assert any(item[0] == "empty.jsonl" for item in skipped)
    assert sum(web["skipped_inputs"].values()) == 4
    assert report["sources"]["code"]["stages"]["tokenize"]["documents_out"] == 1


def test_scores_are_kept_for_retuning(prepared):
    scores = {record["id"]: record for record in _jsonl(prepared / "scores.jsonl")}
    assert scores["short"]["kept"] is False
    assert scores["short"]["reason"] == "gopher_quality:too_few_words"
    assert scores["w0"]["scores"]["gopher_quality.word_count"] > 50
    # Code documents are not scored by prose filters; only the length floor ran.
    assert set(scores["code:add.py"]["scores"]) == {
        key for key in scores["code:add.py"]["scores"] if key.startswith("length.")
    }


def test_manifest_has_shards_per_source_and_split_with_mixture_weights(prepared):
    manifest = manifest_lib.read_manifest(prepared)
    assert manifest.format_version == 3
    assert [source["name"] for source in manifest.sources] == ["web", "code"]
    assert manifest.source_weights() == pytest.approx({"web": 0.75, "code": 0.25})
    files = [shard.file for shard in manifest.split("train").shards]
    assert files[0] == "web/train-p00000-00000.array_record"
    assert {shard.source for shard in manifest.split("train").shards} == {"web", "code"}
    assert manifest.split("train").documents + manifest.split("validation").documents == 7
    assert manifest_lib.is_prepared(prepared)


def test_temperature_mixture_uses_token_counts(corpus, tmp_path):
    cfg = _config(corpus)
    cfg.mixture.mode = "temperature"
    cfg.mixture.temperature = 2.0
    prepare.prepare_from_config(cfg, tmp_path, progress=False)
    manifest = manifest_lib.read_manifest(tmp_path)
    tokens = {name: sum(s.tokens for s in manifest.split("train").shards if s.source == name)
              for name in ("web", "code")}  # fmt: skip
    expected = mixture_weights(tokens, {"web": 3.0, "code": 1.0}, "temperature", 2.0)
    assert manifest.source_weights() == pytest.approx(expected)


def test_invalid_config_and_missing_source_fail_before_any_work(corpus, tmp_path):
    cfg = _config(corpus)
    cfg.filters.chain = ("no_such_filter",)
    with pytest.raises(ValueError, match="filters.chain.*no_such_filter"):
        prepare.prepare_from_config(cfg, tmp_path / "a", progress=False)
    cfg = _config(corpus)
    cfg.sources[0].path = "missing_dir"
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        prepare.prepare_from_config(cfg, tmp_path / "b", progress=False)
    assert not (tmp_path / "b").exists()
    cfg = _config(corpus)
    cfg.sources[1].name = "web"
    with pytest.raises(ValueError, match="sources\\[\\*\\].name"):
        prepare.prepare_from_config(cfg, tmp_path / "c", progress=False)


def test_stage_functions_are_deterministic():
    cfg = data_config.default_data_config()
    doc = Document(id="x", text=_prose(0), source="web")
    assert stages.exact_dedup_key(doc) == stages.exact_dedup_key(doc.replace(text=doc.text.upper()))
    signatures = stages.minhash_signatures([doc.text, doc.text.upper(), "... !!!"], cfg)
    keys = stages.band_key_array(signatures, cfg)
    assert keys.shape == (3, cfg.dedup.minhash.bands) and (keys[0] == keys[1]).all()
    assert stages.has_words(signatures).tolist() == [True, True, False]
    assert stages.assign_split(doc, cfg) in ("train", "validation")
    outcome = stages.Curator(cfg).process(doc.replace(text="Too short."))
    assert outcome.document is None and outcome.removal["stage"] == "filter"
    assert stages.order_key(doc) == "~web:x"
