"""Metric writers and anomaly warnings."""

import json
import math

from jaxpretrain import monitor


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_jsonl_one_record_per_step_with_nonfinite_as_null(tmp_path):
    path = tmp_path / "metrics.jsonl"
    writer = monitor.JsonlWriter(str(path))
    writer.write_scalars(10, {"loss": 2.5, "mfu": None})
    writer.write_scalars(20, {"loss": math.nan})
    writer.close()
    assert read_jsonl(path) == [{"step": 10, "loss": 2.5, "mfu": None}, {"step": 20, "loss": None}]


def test_resume_drops_records_past_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    writer = monitor.JsonlWriter(str(path))
    for step in (10, 20, 30):
        writer.write_scalars(step, {"loss": float(step)})
    writer.close()
    writer = monitor.JsonlWriter(str(path), resume_step=20)
    writer.write_scalars(30, {"loss": 3.0})
    writer.close()
    assert [r["step"] for r in read_jsonl(path)] == [10, 20, 30]
    assert read_jsonl(path)[-1]["loss"] == 3.0


def test_tensorboard_events_are_readable(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    writer = monitor.TensorBoardWriter(str(tmp_path))
    writer.write_scalars(5, {"loss": 1.25, "mfu": None})
    writer.close()
    accumulator = event_accumulator.EventAccumulator(str(tmp_path))
    accumulator.Reload()
    assert [(e.step, e.value) for e in accumulator.Scalars("loss")] == [(5, 1.25)]


def test_anomalies_warn_on_nan_and_spikes():
    detector = monitor.AnomalyDetector(spike_factor=5.0, warmup_observations=3)
    for step in range(1, 6):
        assert detector.check(step, loss=2.0, grad_norm=1.0) == []
    assert "gradient norm" in detector.check(6, loss=2.0, grad_norm=50.0)[0]
    assert "loss is nan" in detector.check(7, loss=math.nan, grad_norm=1.0)[0]
