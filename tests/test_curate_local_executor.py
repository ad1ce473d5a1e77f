"""The local executor: completion markers, resumption after a crash, identical outputs."""

import json

import pytest

from jaxpretrain.curate import config as data_config
from jaxpretrain.curate import prepare
from jaxpretrain.curate.executors import local

_PROCESS_UNIT = local._process_unit
_PROSE = "The river of the valley and the hills is quiet with birds in the morning. "


class SimulatedKill(Exception):
    """Stands in for the process dying in the middle of the unit stage."""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    for index in range(6):
        lines = [
            json.dumps({"text": f"Part {index} line {line}. " + _PROSE * (1 + line % 3)})
            for line in range(5)
        ]
        (root / f"part-{index}.jsonl").write_text("\n".join(lines) + "\n")
    (root / "part-9.jsonl").write_text((root / "part-0.jsonl").read_text())  # all duplicates
    return root


def _config(corpus, workers=1):
    cfg = data_config.default_data_config()
    cfg.sources = [data_config.source_config(name="web", type="jsonl", path=str(corpus))]
    cfg.filters.chain = ("length",)
    cfg.tokenizer.vocab_size = 450
    cfg.split.validation_fraction = 0.2
    cfg.output.shards_per_source = 2
    cfg.executor.workers = workers
    return cfg


def _outputs(directory):
    """Every output file's bytes, report.json without its timings."""
    files = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and ".work" not in path.parts:
            content = path.read_bytes()
            if path.name in ("report.json", "manifest.json"):
                parsed = json.loads(content)
                parsed.pop("seconds", None)
                parsed.get("report", {}).pop("seconds", None)
                parsed.get("config", {}).pop("executor", None)
                content = json.dumps(parsed, sort_keys=True).encode()
            files[str(path.relative_to(directory))] = content
    return files


def _count_units(monkeypatch, crash_after=None):
    processed = []
    original = _PROCESS_UNIT

    def counting(cfg, curator, unit, unit_dir, limit):
        if crash_after is not None and len(processed) == crash_after:
            raise SimulatedKill(f"killed before unit {unit.shard.index}")
        processed.append(unit.shard.index)
        return original(cfg, curator, unit, unit_dir, limit)

    monkeypatch.setattr(local, "_process_unit", counting)
    return processed


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    output = tmp_path_factory.mktemp("reference")
    prepare.prepare_from_config(_config(corpus), output, progress=False)
    return _outputs(output)


def test_rerun_after_a_crash_redoes_only_unfinished_units(corpus, tmp_path, monkeypatch, reference):
    processed = _count_units(monkeypatch, crash_after=3)
    with pytest.raises(SimulatedKill):
        prepare.prepare_from_config(_config(corpus), tmp_path, progress=False)
    assert processed == [0, 1, 2]
    assert not (tmp_path / "manifest.json").exists()
    assert len(list((tmp_path / ".work" / "units").glob("*/DONE"))) == 3

    processed = _count_units(monkeypatch)
    prepare.prepare_from_config(_config(corpus), tmp_path, progress=False)
    assert processed == [3, 4, 5, 6]
    assert _outputs(tmp_path) == reference


def test_finished_run_reruns_no_unit_and_a_changed_config_starts_over(
    corpus, tmp_path, monkeypatch, reference
):
    prepare.prepare_from_config(_config(corpus), tmp_path, progress=False)
    processed = _count_units(monkeypatch)
    prepare.prepare_from_config(_config(corpus), tmp_path, progress=False)
    assert processed == []
    assert _outputs(tmp_path) == reference
    # A unit directory without its marker (killed mid-write) is redone.
    marker = next((tmp_path / ".work" / "units").glob("web-000002/DONE"))
    marker.unlink()
    prepare.prepare_from_config(_config(corpus), tmp_path, progress=False)
    assert processed == [2]
    changed = _config(corpus)
    changed.clean.max_blank_lines = 2
    processed.clear()
    prepare.prepare_from_config(changed, tmp_path, progress=False)
    assert len(processed) == 7


def test_process_pool_gives_the_same_output(corpus, tmp_path, reference):
    prepare.prepare_from_config(_config(corpus, workers=2), tmp_path, progress=False)
    assert _outputs(tmp_path) == reference
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["dedup"]["exact"]["removed"] == 5  # part-9 repeats part-0
    removed = [json.loads(line) for line in (tmp_path / "removed.jsonl").read_text().splitlines()]
    assert {r["duplicate_of"] for r in removed} == {f"web:part-0.jsonl:{i}" for i in range(1, 6)}
