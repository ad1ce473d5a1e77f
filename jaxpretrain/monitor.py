"""Metric writers (JSONL + TensorBoard + terminal) and the progress line.

A writer is anything with `write_scalars(step, scalars)` and `close()`: the trainer never knows
which ones are attached, so adding W&B later is one class.

clu's `metric_writers` would be the obvious choice, but it imports TensorFlow at package import
(clu 0.0.12), and tensorflow-cpu is a 274 MB wheel we need nowhere else; TensorBoard event files
are written with the `tensorboard` package's own event writer instead.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

from absl import logging
from etils import epath

from jaxpretrain import paths

Scalars = Mapping[str, float | None]
METRICS_FILENAME = "metrics.jsonl"


class MetricWriter(Protocol):
    def write_scalars(self, step: int, scalars: Scalars) -> None: ...

    def write_event(self, step: int, event: str, details: Mapping[str, object]) -> None: ...

    def close(self) -> None: ...


class JsonlWriter:
    """Appends one JSON object per logged step to `path` (`step` first, NaN/inf/None -> null).

    Events (an anomaly, a rollback, a resume, a preemption) are records with an `event` key.
    `records` counts the records in the file, which checkpoints store: a run resumed from a
    checkpoint passes that count as `keep_records`, and the records written after the save
    (about to be redone) are dropped, so each step's metrics appear once.
    """

    def __init__(self, path: str, keep_records: int | None = None):
        kept: list[str] = []
        if os.path.exists(path):
            with open(path) as f:
                kept = [line for line in f if line.strip()]
        if keep_records is not None and keep_records < len(kept):
            kept = kept[:keep_records]
            with open(path + ".tmp", "w") as f:
                f.writelines(kept)
            os.replace(path + ".tmp", path)
        self.records = len(kept)
        # Kept open for the run's lifetime; appended to, so a resumed run continues the file.
        self._file = open(path, "a")  # noqa: SIM115

    def write_scalars(self, step: int, scalars: Scalars) -> None:
        record: dict[str, object] = {"step": int(step)}
        for key, value in scalars.items():
            record[key] = None if value is None or not math.isfinite(value) else float(value)
        self._append(record)

    def write_event(self, step: int, event: str, details: Mapping[str, object]) -> None:
        self._append({"step": int(step), "event": event, **details})

    def _append(self, record: dict[str, object]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self.records += 1

    def close(self) -> None:
        self._file.close()


class TensorBoardWriter:
    """Scalars as TensorBoard event files under `logdir`."""

    def __init__(self, logdir: str):
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
        self._writer = EventFileWriter(logdir)

    def write_scalars(self, step: int, scalars: Scalars) -> None:
        values = [
            self._summary_pb2.Summary.Value(tag=key, simple_value=float(value))
            for key, value in scalars.items()
            if value is not None
        ]
        summary = self._summary_pb2.Summary(value=values)
        self._writer.add_event(
            self._event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary)
        )
        self._writer.flush()

    def write_event(self, step: int, event: str, details: Mapping[str, object]) -> None:
        pass  # events live in metrics.jsonl; TensorBoard shows the scalars around them

    def close(self) -> None:
        self._writer.close()


class WandbWriter:
    """Scalars and events to a Weights & Biases run (`monitor.wandb.*` in the config).

    The run id is kept in WORKDIR/wandb_run_id, so a resumed run (`resume="allow"`) continues
    the same W&B run. Every metric is plotted against a logged `step` metric rather than W&B's
    own step, which must only increase: after a resume or a rollback a step is logged again, as
    in metrics.jsonl, instead of being dropped. Events are `events/<name>` = 1 at their step.
    W&B's files go to the workdir, or to a local folder for a remote workdir.
    """

    def __init__(self, settings, workdir: str, run_config: Mapping[str, object]):
        import wandb

        resolved = paths.resolve(workdir)
        local_dir = (
            tempfile.mkdtemp(prefix="jaxpretrain-wandb-")
            if paths.is_remote(workdir)
            else os.fspath(resolved)
        )
        if paths.is_remote(workdir):
            logging.info("Weights & Biases files of this run: %s", local_dir)
        tags = [tag.strip() for tag in settings.tags.split(",") if tag.strip()]
        # A random id kept in the workdir: a resume continues the run, and a new run in a
        # reused folder path is told apart only by deleting the workdir (as for checkpoints).
        id_file = resolved / "wandb_run_id"
        if id_file.exists():
            run_id = id_file.read_text().strip()
        else:
            run_id = uuid.uuid4().hex[:16]
            paths.write_text_atomic(id_file, run_id)
        self._run = wandb.init(
            project=settings.project,
            entity=settings.entity or None,
            name=settings.name or resolved.name,
            id=run_id,
            resume="allow",
            dir=local_dir,
            config=dict(run_config),
            mode=settings.mode,
            tags=tags or None,
        )
        self._run.define_metric("step")
        self._run.define_metric("*", step_metric="step")

    def write_scalars(self, step: int, scalars: Scalars) -> None:
        values = {key: value for key, value in scalars.items() if value is not None}
        self._run.log({"step": int(step), **values})

    def write_event(self, step: int, event: str, details: Mapping[str, object]) -> None:
        numbers = {
            f"events/{event}/{key}": value
            for key, value in details.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        self._run.log({"step": int(step), f"events/{event}": 1, **numbers})

    def close(self) -> None:
        self._run.finish()


class RemoteMirror:
    """Copies the files of a local staging folder to a remote workdir (gs://...).

    Object stores cannot append, and gcsfs turns an append into an overwrite, so metrics.jsonl
    and the TensorBoard event files of a remote workdir are written to local disk and each changed
    file is uploaded whole: at most every `every_seconds`, and at once on events, checkpoint
    saves (`flush`) and close. A resumed run first downloads metrics.jsonl to continue it.
    """

    def __init__(self, remote_dir: epath.Path, every_seconds: float):
        self.remote_dir = remote_dir
        self.local_dir = epath.Path(tempfile.mkdtemp(prefix="jaxpretrain-metrics-"))
        self._every_seconds = every_seconds
        self._last_sync = time.monotonic()
        self._uploaded: dict[str, tuple[int, int]] = {}  # name -> (size, mtime_ns) uploaded
        metrics = remote_dir / METRICS_FILENAME
        if metrics.exists():
            (self.local_dir / METRICS_FILENAME).write_bytes(metrics.read_bytes())

    def sync(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_sync < self._every_seconds:
            return
        self._last_sync = time.monotonic()
        for name, path in paths.files_under(self.local_dir):
            stat = os.stat(path)
            if self._uploaded.get(name) == (stat.st_size, stat.st_mtime_ns):
                continue
            try:
                (self.remote_dir / name).write_bytes(path.read_bytes())
            except Exception as error:  # noqa: BLE001 - any storage failure
                # Only process 0 uploads: raising would stop it alone while the other hosts
                # wait in the next collective. The file is complete locally; try again later.
                logging.warning(
                    "could not upload %s to %s (%s); retrying at the next sync",
                    name,
                    self.remote_dir,
                    error,
                )
                continue
            self._uploaded[name] = (stat.st_size, stat.st_mtime_ns)

    def close(self) -> None:
        self.sync(force=True)
        shutil.rmtree(self.local_dir, ignore_errors=True)


class MultiWriter:
    def __init__(self, writers: Sequence[MetricWriter], mirror: RemoteMirror | None = None):
        self._writers = list(writers)
        self._mirror = mirror

    def write_scalars(self, step: int, scalars: Scalars) -> None:
        for writer in self._writers:
            writer.write_scalars(step, scalars)
        if self._mirror is not None:
            self._mirror.sync()

    def write_event(self, step: int, event: str, details: Mapping[str, object]) -> None:
        logging.warning("step %d: %s %s", step, event, dict(details))
        for writer in self._writers:
            writer.write_event(step, event, details)
        self.flush()

    def flush(self) -> None:
        """Puts every record written so far on the workdir's storage (before a checkpoint)."""
        if self._mirror is not None:
            self._mirror.sync(force=True)

    @property
    def records(self) -> int:
        """Records in metrics.jsonl (0 on processes that write none)."""
        return sum(getattr(writer, "records", 0) for writer in self._writers)

    def close(self) -> None:
        """Closes every writer, then uploads; the first failure is raised after all ran."""
        failures = []
        for close in [writer.close for writer in self._writers] + (
            [self._mirror.close] if self._mirror is not None else []
        ):
            try:
                close()
            except Exception as error:  # noqa: BLE001 - the others must still close
                failures.append(error)
        if failures:
            raise failures[0]


def create_writer(
    workdir: str,
    is_primary_process: bool,
    keep_records: int | None = None,
    monitor_config=None,
    run_config: Mapping[str, object] | None = None,
) -> MultiWriter:
    """WORKDIR/metrics.jsonl + TensorBoard events in WORKDIR (+ W&B when
    `monitor_config.wandb.enabled`), on the primary process only.

    `keep_records`: the metrics.jsonl record count stored with the checkpoint being resumed.
    A remote WORKDIR (gs://...) gets its files through a `RemoteMirror` that uploads them at
    least every `monitor_config.remote_sync_seconds` (default 60). `run_config`: the resolved
    config, recorded by W&B.
    """
    if not is_primary_process:
        return MultiWriter([])
    mirror = None
    logdir = paths.resolve(workdir)
    if paths.is_remote(workdir):
        every = monitor_config.remote_sync_seconds if monitor_config is not None else 60.0
        mirror = RemoteMirror(logdir, every)
        logdir = mirror.local_dir
    writers: list[MetricWriter] = [
        JsonlWriter(os.fspath(logdir / METRICS_FILENAME), keep_records),
        TensorBoardWriter(os.fspath(logdir)),
    ]
    if monitor_config is not None and monitor_config.wandb.enabled:
        try:
            writers.append(WandbWriter(monitor_config.wandb, workdir, run_config or {}))
        except Exception as error:  # noqa: BLE001 - W&B's own failures (network, login)
            # Process 0 alone would stop while the others wait; metrics.jsonl has everything.
            logging.warning("Weights & Biases is off for this run: %s", error)
    return MultiWriter(writers, mirror)


def _format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class Progress:
    """One terminal line per log step: step, loss, tokens/s and the ETA to `total_steps`."""

    def __init__(self, total_steps: int, stream=sys.stdout):
        self._total_steps = total_steps
        self._stream = stream

    def report(
        self,
        step: int,
        loss: float,
        tokens_per_second: float | None,
        steps_per_second: float | None,
    ) -> None:
        """`None` rates: nothing timed yet (the interval held only the compiling step)."""
        eta = "?"
        if steps_per_second:
            eta = _format_duration((self._total_steps - step) / steps_per_second)
        rate = "?" if tokens_per_second is None else f"{tokens_per_second:,.0f}"
        self._stream.write(
            f"step {step:>7d}/{self._total_steps} | loss {loss:8.4f} | {rate:>10} tok/s | "
            f"eta {eta}\n"
        )
        self._stream.flush()


class TrainingClock:
    """Seconds spent training in the current logging interval.

    Started after the first (compiling) step of a run, and paused around evaluation and
    checkpoint saves, so throughput and MFU measure the train step alone. `steps` counts the
    steps timed since the last `restart`.
    """

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self._start, self._paused, self.steps = time.perf_counter(), 0.0, 0

    def count_step(self) -> None:
        self.steps += 1

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        begin = time.perf_counter()
        try:
            yield
        finally:
            self._paused += time.perf_counter() - begin

    def seconds(self) -> float:
        return max(time.perf_counter() - self._start - self._paused, 1e-9)
