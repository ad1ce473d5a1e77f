"""Decontamination: documents sharing a 13-word n-gram with a named eval set are removed, and the
report lists which eval document each one overlapped."""

import json

import pytest

from jaxpretrain.curate import config as data_config
from jaxpretrain.curate import filters, prepare
from jaxpretrain.curate.document import Document

# 20 words of an eval question; a training page that quotes 13 consecutive words of it is
# contaminated, one that quotes 12 is not.
_QUESTION = (
    "Which planet in the solar system has the longest day measured against its own year "
    "according to the probe data"
)
_QUESTION_WORDS = _QUESTION.split()
_PROSE = (
    "Our town library opened a new reading room this spring, and volunteers from every "
    "street helped to paint the walls and carry the shelves up the narrow stairs. "
)


def _eval_sets(tmp_path):
    questions = tmp_path / "astro.jsonl"
    records = [{"id": "q-1", "text": "What is the capital of a small imaginary country?"}]
    records.append({"id": "q-7", "text": _QUESTION})
    questions.write_text("".join(json.dumps(record) + "\n" for record in records))
    passages = tmp_path / "passages.txt"
    passages.write_text("\nA short line.\n" + " ".join(f"word{i}" for i in range(30)) + "\n")
    return {"astro": str(questions), "reading": str(passages)}


def _filter(tmp_path, **settings):
    return filters.get("decontaminate", eval_sets=_eval_sets(tmp_path), **settings)


def _quoting(words):
    return _PROSE + "As the quiz asked: " + " ".join(words) + ". " + _PROSE


def test_thirteen_shared_words_remove_the_document_naming_the_eval_document(tmp_path):
    result = _filter(tmp_path).apply(Document("page", _quoting(_QUESTION_WORDS[3:16]), "web"))
    assert not result.kept
    assert result.reason == "decontaminate:astro:q-7"
    assert result.scores["shared_ngrams"] == 1


def test_twelve_shared_words_are_kept(tmp_path):
    result = _filter(tmp_path).apply(Document("page", _quoting(_QUESTION_WORDS[3:15]), "web"))
    assert result.kept, result.reason
    assert result.scores["shared_ngrams"] == 0


def test_case_and_punctuation_do_not_hide_a_copy(tmp_path):
    shouted = ", ".join(word.upper() for word in _QUESTION_WORDS[:13]) + "?!"
    result = _filter(tmp_path).apply(Document("page", _quoting([shouted]), "web"))
    assert result.reason == "decontaminate:astro:q-7"


def test_text_eval_sets_name_the_line_and_ngram_size_is_a_setting(tmp_path):
    line_copy = " ".join(f"word{i}" for i in range(10, 15))
    five = _filter(tmp_path, ngram_size=5).apply(Document("page", _quoting([line_copy]), "web"))
    assert five.reason == "decontaminate:reading:passages.txt:3"
    assert _filter(tmp_path).apply(Document("page", _quoting([line_copy]), "web")).kept


def test_missing_eval_set_file_is_one_clear_error(tmp_path):
    missing = filters.get("decontaminate", eval_sets={"mmlu": str(tmp_path / "nope.jsonl")})
    with pytest.raises(ValueError, match=r"eval set 'mmlu'.*nope\.jsonl does not exist"):
        missing.apply(Document("page", _PROSE, "web"))


def test_report_lists_the_overlaps_through_the_pipeline(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    pages = [_PROSE * 3 + f"This is page {name}." for name in ("one", "two", "three", "four")]
    pages[2] = _quoting(_QUESTION_WORDS[:13])
    pages[3] = _quoting(_QUESTION_WORDS[5:17])  # a 12-word near miss is kept
    (raw / "web.jsonl").write_text("".join(json.dumps({"text": page}) + "\n" for page in pages))
    cfg = data_config.default_data_config()
    cfg.sources = [
        data_config.source_config(name="web", type="jsonl", path=str(raw), filter_chain="clean")
    ]
    cfg.filters.chains.clean = ("length", "decontaminate")
    cfg.filters.settings.decontaminate = {"eval_sets": _eval_sets(tmp_path)}
    cfg.dedup.minhash.enabled = False
    cfg.tokenizer.vocab_size = 450
    cfg.executor.workers = 1
    prepare.prepare_from_config(cfg, tmp_path / "out", progress=False)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["filters"]["removed_by_reason"] == {"decontaminate:astro:q-7": 1}
    [example] = report["examples"]["removed"]["decontaminate:astro:q-7"]
    assert example["id"] == "web:web.jsonl:3"  # the third page, the one quoting 13 words
