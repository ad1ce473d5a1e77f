"""jaxpretrain/metrics_log.py: metrics.jsonl read back as metric and event records, in file
order, with a partial last line tolerated and any other damage named."""

import json

import pytest

from jaxpretrain import metrics_log


def write(path, lines: list[str]) -> str:
    (path / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_records_and_events_in_file_order(tmp_path):
    records = [
        {"step": 10, "loss": 3.0, "mfu": None},
        {"step": 20, "event": "rollback", "to_step": 10},
        {"step": 20, "loss": 2.5, "mfu": 0.4},
        {"step": 20, "loss": 2.0, "mfu": 0.2},  # a step redone after the rollback
        {"step": 20, "eval/loss": 2.2},
    ]
    run = metrics_log.read(write(tmp_path, [json.dumps(r) for r in records]))
    assert run.name == tmp_path.name
    assert [r["step"] for r in run.records] == [10, 20, 20, 20]
    assert [e["event"] for e in run.events] == ["rollback"]
    assert run.series("loss") == [(10, 3.0), (20, 2.5), (20, 2.0)]
    assert run.keys() == {"step", "loss", "mfu", "eval/loss"}  # mfu set once at least
    assert run.median("mfu") == pytest.approx(0.3)
    assert run.median("grad_norm") is None


def test_a_partial_last_line_is_dropped_and_other_damage_is_named(tmp_path):
    good = json.dumps({"step": 1, "loss": 1.0})
    run = metrics_log.read(write(tmp_path, [good, '{"step": 2, "lo']))  # killed mid-write
    assert run.series("loss") == [(1, 1.0)]
    with pytest.raises(ValueError, match="metrics.jsonl line 2: not a JSON object with a step"):
        metrics_log.read(write(tmp_path, [good, '{"loss": 2.0}', good]))
    with pytest.raises(FileNotFoundError, match="is .*nowhere a run's workdir"):
        metrics_log.read(tmp_path / "nowhere")
