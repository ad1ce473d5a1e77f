"""Metric writers: JSONL records and events, TensorBoard."""

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


def test_resume_keeps_the_records_written_before_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    writer = monitor.JsonlWriter(str(path))
    writer.write_scalars(10, {"loss": 1.0})
    writer.write_scalars(20, {"loss": 2.0})
    saved_records = writer.records  # what a checkpoint at step 20 stores
    writer.write_event(25, "anomaly", {"flags": 1})
    writer.write_scalars(30, {"loss": 3.0})  # past the checkpoint: redone after the resume
    writer.close()
    writer = monitor.JsonlWriter(str(path), keep_records=saved_records)
    writer.write_scalars(30, {"loss": 3.5})
    writer.close()
    assert read_jsonl(path) == [
        {"step": 10, "loss": 1.0},
        {"step": 20, "loss": 2.0},
        {"step": 30, "loss": 3.5},
    ]


def test_a_resume_without_a_record_count_keeps_every_record(tmp_path):
    path = tmp_path / "metrics.jsonl"
    writer = monitor.JsonlWriter(str(path))
    writer.write_event(7, "rollback", {"to_step": 5})
    writer.close()
    writer = monitor.JsonlWriter(str(path))
    assert writer.records == 1
    writer.close()
    assert read_jsonl(path) == [{"step": 7, "event": "rollback", "to_step": 5}]


def test_tensorboard_events_are_readable(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    writer = monitor.TensorBoardWriter(str(tmp_path))
    writer.write_scalars(5, {"loss": 1.25, "mfu": None})
    writer.close()
    accumulator = event_accumulator.EventAccumulator(str(tmp_path))
    accumulator.Reload()
    assert [(e.step, e.value) for e in accumulator.Scalars("loss")] == [(5, 1.25)]


def test_a_failed_upload_is_retried_at_the_next_sync_not_raised(tmp_path, caplog):
    """Only process 0 uploads metrics: an error there must not stop it alone mid-run."""
    from etils import epath

    remote = tmp_path / "bucket"
    remote.write_text("")  # a file where the folder should be: every upload fails
    mirror = monitor.RemoteMirror(epath.Path(remote), every_seconds=0)
    (mirror.local_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    mirror.sync(force=True)
    assert "could not upload metrics.jsonl" in caplog.text
    remote.unlink()
    remote.mkdir()
    mirror.close()
    assert (remote / "metrics.jsonl").read_text() == '{"step": 1}\n'
