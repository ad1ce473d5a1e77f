"""The local executor: completion markers, resumption after a crash, identical outputs."""

import json
import tempfile

import gcs_emulator  # pytest puts tests/ on sys.path
import gcsfs
import pytest

from jaxpretrain.curate import config as data_config
from jaxpretrain.curate import prepare, stages
from jaxpretrain.curate.executors import local, local_units

_PROCESS_UNIT = local_units.process_unit
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
    cfg.output.shard_bytes = 1 << 10  # several shards per source and split
    cfg.executor.workers = workers
    cfg.executor.keep_work = True
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

    monkeypatch.setattr(local_units, "process_unit", counting)
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
    units = stages.list_work_units(_config(corpus))
    (tmp_path / ".work" / "units" / local.unit_dirname(units[2]) / "DONE").unlink()
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


def _kill_while_reading(monkeypatch):
    """Makes the next unit die after reading one document, as a killed process would."""
    original = stages.read_work_unit

    def dying(*args, **kwargs):
        yield next(original(*args, **kwargs))
        raise SimulatedKill("killed while reading")

    monkeypatch.setattr(stages, "read_work_unit", dying)


def test_folders_of_a_killed_run_are_removed_and_work_is_deleted_after_success(
    corpus, tmp_path, monkeypatch, reference
):
    _kill_while_reading(monkeypatch)
    with pytest.raises(SimulatedKill):
        prepare.prepare_from_config(_config(corpus), tmp_path, progress=False)
    monkeypatch.undo()
    units = tmp_path / ".work" / "units"
    (leftover,) = units.glob("*.tmp-*")
    leftover.rename(units / f"{leftover.name.rsplit('-', 1)[0]}-999999")  # another process's
    prepare.prepare_from_config(_config(corpus), tmp_path, progress=False)
    assert list(units.glob("*.tmp-*")) == []
    assert len(list(units.iterdir())) == 7

    cfg = _config(corpus)
    cfg.executor.keep_work = False
    prepare.prepare_from_config(cfg, tmp_path, progress=False)
    assert not (tmp_path / ".work").exists()
    assert _outputs(tmp_path) == reference


def test_work_dir_holds_the_work_and_must_be_local(corpus, tmp_path, reference):
    cfg = _config(corpus)
    cfg.executor.work_dir = str(tmp_path / "scratch")
    output = tmp_path / "output"
    prepare.prepare_from_config(cfg, output, progress=False)
    assert not (output / ".work").exists()
    assert len(list((tmp_path / "scratch" / "units").glob("*/DONE"))) == 7
    assert _outputs(output) == reference

    cfg.executor.work_dir = "gs://bucket/work"
    with pytest.raises(ValueError, match="executor.work_dir='gs://bucket/work' is a URL"):
        prepare.prepare_from_config(cfg, output, progress=False)


def test_a_gs_output_is_written_to_the_bucket_with_the_work_on_local_disk(
    corpus, tmp_path, monkeypatch, reference
):
    with gcs_emulator.serving("bucket"):
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))
        prepare.prepare_from_config(_config(corpus), "gs://bucket/prepared", progress=False)
        storage = gcsfs.GCSFileSystem(skip_instance_cache=True, use_listings_cache=False)
        storage.get("bucket/prepared/", str(tmp_path / "downloaded"), recursive=True)
    assert _outputs(tmp_path / "downloaded") == reference
    (work,) = (tmp_path / "scratch" / "jaxpretrain-curate").iterdir()
    assert len(list((work / "units").glob("*/DONE"))) == 7
