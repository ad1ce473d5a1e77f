"""Resume after the inputs changed: units are keyed by input identity, not by shard position."""

import json
import os
import random

import pytest

from jaxpretrain.curate import config as data_config
from jaxpretrain.curate import prepare
from jaxpretrain.curate.executors import local_units

_PROCESS_UNIT = local_units.process_unit
_WORDS = [f"{a}{b}" for a in ("river", "stone", "meadow", "harbor") for b in ("ash", "elm", "oak")]


def _prose(seed: int) -> str:
    """A distinct text per seed (no two are near-duplicates), long enough for every filter."""
    words = random.Random(seed).choices(_WORDS, k=40)
    return f"Document {seed} tells of the " + " ".join(words) + f" and ends with number {seed}."


def _write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n")


def _good(seed: int) -> str:
    return json.dumps({"id": f"doc-{seed}", "text": _prose(seed)})


def _config(corpus):
    cfg = data_config.default_data_config()
    cfg.sources = [data_config.source_config(name="web", type="jsonl", path=str(corpus))]
    cfg.filters.chain = ("length",)
    cfg.tokenizer.vocab_size = 450
    cfg.split.validation_fraction = 0.0
    cfg.executor.workers = 1
    cfg.executor.keep_work = True
    return cfg


def _report(output):
    return json.loads((output / "report.json").read_text())


def _count_units(monkeypatch):
    """Records the file of every unit the executor processes from now on."""
    processed = []

    def counting(cfg, curator, unit, unit_dir, limit):
        processed.append(os.path.basename(unit.shard.location))
        return _PROCESS_UNIT(cfg, curator, unit, unit_dir, limit)

    monkeypatch.setattr(local_units, "process_unit", counting)
    return processed


@pytest.fixture()
def corpus(tmp_path):
    """a.jsonl: 4 documents and a malformed line; b.jsonl: 3 documents and 2 malformed lines;
    c.jsonl: 3 documents."""
    root = tmp_path / "raw"
    root.mkdir()
    _write_jsonl(
        root / "a.jsonl", [_good(0), _good(1), '{"text": "unterminated', _good(2), _good(3)]
    )
    _write_jsonl(root / "b.jsonl", [_good(10), "not json", _good(11), "{", _good(12)])
    _write_jsonl(root / "c.jsonl", [_good(20), _good(21), _good(22)])
    return root


def test_fixing_one_file_and_deleting_another_reports_the_final_inputs(corpus, tmp_path):
    output = tmp_path / "out"
    prepare.prepare_from_config(_config(corpus), output, progress=False)
    web = _report(output)["sources"]["web"]
    assert web["stages"]["read"]["documents_out"] == 10
    assert web["skipped_inputs"] == {"malformed JSON": 3}

    _write_jsonl(corpus / "a.jsonl", [_good(0), _good(1), _good(4), _good(2), _good(3)])
    (corpus / "b.jsonl").unlink()
    prepare.prepare_from_config(_config(corpus), output, progress=False)

    web = _report(output)["sources"]["web"]
    assert web["skipped_inputs"] == {}
    assert web["skipped"] == []
    assert web["input_shards"] == 2
    assert web["stages"]["read"]["documents_out"] == 5 + 3
    assert web["stages"]["tokenize"]["documents_out"] == 8  # c.jsonl's documents are all there


def test_only_changed_and_added_inputs_are_redone(corpus, tmp_path, monkeypatch):
    output = tmp_path / "out"
    prepare.prepare_from_config(_config(corpus), output, progress=False)
    processed = _count_units(monkeypatch)

    prepare.prepare_from_config(_config(corpus), output, progress=False)
    assert processed == []

    _write_jsonl(corpus / "c.jsonl", [_good(20), _good(21), _good(22), _good(23)])
    prepare.prepare_from_config(_config(corpus), output, progress=False)
    assert processed == ["c.jsonl"]
    assert _report(output)["sources"]["web"]["stages"]["read"]["documents_out"] == 11

    # A new file sorted before the others shifts every shard index: only it is read.
    _write_jsonl(corpus / "0.jsonl", [_good(0), _good(1)])  # exact copies of a.jsonl's first two
    processed.clear()
    prepare.prepare_from_config(_config(corpus), output, progress=False)
    assert processed == ["0.jsonl"]
    report = _report(output)
    assert report["sources"]["web"]["stages"]["read"]["documents_out"] == 13
    assert report["dedup"]["exact"]["removed"] == 2  # dedup was redone over the new unit set
    removed = [json.loads(line) for line in (output / "removed.jsonl").read_text().splitlines()]
    # The new first file now comes first in the order: a.jsonl's copies are the ones removed.
    assert sorted((r["id"], r["duplicate_of"]) for r in removed) == [
        ("doc-0", "doc-0"),
        ("doc-1", "doc-1"),
    ]

    (corpus / "0.jsonl").unlink()
    processed.clear()
    prepare.prepare_from_config(_config(corpus), output, progress=False)
    assert processed == []
    report = _report(output)
    assert report["dedup"]["exact"]["removed"] == 0
    assert report["sources"]["web"]["stages"]["tokenize"]["documents_out"] == 11
    units = sorted(path.name for path in (output / ".work" / "units").iterdir())
    assert len(units) == 3  # the deleted input's unit is gone from the work directory


def test_a_capped_source_redoes_units_whose_share_of_the_cap_changed(corpus, tmp_path):
    output = tmp_path / "out"
    cfg = _config(corpus)
    cfg.sources[0].max_documents = 6
    prepare.prepare_from_config(cfg, output, progress=False)  # a: 4, b: 2 of 3, c: none
    assert _report(output)["sources"]["web"]["stages"]["read"]["documents_out"] == 6

    (corpus / "b.jsonl").unlink()  # c.jsonl is unchanged, but now its first 2 documents count
    prepare.prepare_from_config(cfg, output, progress=False)
    web = _report(output)["sources"]["web"]
    assert web["skipped_inputs"] == {"malformed JSON": 1}  # a.jsonl's; b.jsonl is gone
    assert web["stages"]["read"]["documents_out"] == 6
    assert web["stages"]["tokenize"]["documents_out"] == 6
