"""Metric writers (JSONL + TensorBoard + terminal), the progress line, and anomaly warnings.

A writer is anything with `write_scalars(step, scalars)` and `close()`: the trainer never knows
which ones are attached, so adding W&B later is one class.

clu's `metric_writers` would be the obvious choice, but it imports TensorFlow at package import
(clu 0.0.12), and tensorflow-cpu is a 274 MB wheel we need nowhere else; TensorBoard event files
are written with the `tensorboard` package's own event writer instead.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

from absl import logging

Scalars = Mapping[str, float | None]


class MetricWriter(Protocol):
    def write_scalars(self, step: int, scalars: Scalars) -> None: ...

    def close(self) -> None: ...


class JsonlWriter:
    """Appends one JSON object per logged step to `path` (`step` first, NaN/inf/None -> null).

    With `resume_step`, records after that step (logged by an interrupted run past its last
    checkpoint, and about to be logged again) are dropped first, so each step appears once.
    """

    def __init__(self, path: str, resume_step: int | None = None):
        if resume_step is not None and os.path.exists(path):
            with open(path) as f:
                kept = [
                    line for line in f if line.strip() and json.loads(line)["step"] <= resume_step
                ]
            with open(path + ".tmp", "w") as f:
                f.writelines(kept)
            os.replace(path + ".tmp", path)
        # Kept open for the run's lifetime; appended to, so a resumed run continues the file.
        self._file = open(path, "a")  # noqa: SIM115

    def write_scalars(self, step: int, scalars: Scalars) -> None:
        record = {"step": int(step)}
        for key, value in scalars.items():
            record[key] = None if value is None or not math.isfinite(value) else float(value)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

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

    def close(self) -> None:
        self._writer.close()


class MultiWriter:
    def __init__(self, writers: Sequence[MetricWriter]):
        self._writers = list(writers)

    def write_scalars(self, step: int, scalars: Scalars) -> None:
        for writer in self._writers:
            writer.write_scalars(step, scalars)

    def close(self) -> None:
        for writer in self._writers:
            writer.close()


def create_writer(
    workdir: str, is_primary_process: bool, resume_step: int | None = None
) -> MetricWriter:
    """WORKDIR/metrics.jsonl + TensorBoard events in WORKDIR, on the primary process only."""
    if not is_primary_process:
        return MultiWriter([])
    jsonl = JsonlWriter(os.path.join(workdir, "metrics.jsonl"), resume_step)
    return MultiWriter([jsonl, TensorBoardWriter(workdir)])


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

    def report(self, step: int, loss: float, tokens_per_second: float, steps_per_second: float):
        eta = (self._total_steps - step) / steps_per_second if steps_per_second > 0 else 0.0
        self._stream.write(
            f"step {step:>7d}/{self._total_steps} | loss {loss:8.4f} | "
            f"{tokens_per_second:10,.0f} tok/s | eta {_format_duration(eta)}\n"
        )
        self._stream.flush()


class AnomalyDetector:
    """Warns on a non-finite loss and on gradient-norm spikes against a running mean.

    Warnings, not stops: a single spike often recovers, and the user keeps every checkpoint.
    """

    def __init__(self, spike_factor: float, warmup_observations: int = 5, decay: float = 0.9):
        self._spike_factor = spike_factor
        self._warmup = warmup_observations
        self._decay = decay
        self._mean_grad_norm: float | None = None
        self._seen = 0

    def check(self, step: int, loss: float, grad_norm: float) -> list[str]:
        warnings = []
        if not math.isfinite(loss):
            warnings.append(f"step {step}: loss is {loss}; check the learning rate and the data.")
        if not math.isfinite(grad_norm):
            warnings.append(f"step {step}: gradient norm is {grad_norm}.")
        elif (
            self._mean_grad_norm is not None
            and self._seen >= self._warmup
            and grad_norm > self._spike_factor * self._mean_grad_norm
        ):
            warnings.append(
                f"step {step}: gradient norm {grad_norm:.3g} is "
                f"{grad_norm / self._mean_grad_norm:.1f}x its running mean "
                f"{self._mean_grad_norm:.3g}."
            )
        if math.isfinite(grad_norm):
            self._seen += 1
            self._mean_grad_norm = (
                grad_norm
                if self._mean_grad_norm is None
                else self._decay * self._mean_grad_norm + (1 - self._decay) * grad_norm
            )
        for warning in warnings:
            logging.warning(warning)
        return warnings
