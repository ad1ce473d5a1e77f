"""Reading a workdir's metrics.jsonl back: the metric records and the event records.

The file is written by `monitor.JsonlWriter`: one JSON object per line, `step` first; metric
records hold scalars (null where not finite or unknown), event records (`anomaly`, `rollback`,
`rollback_unavailable`, `resume`, `preempted`) carry an `event` key. Records stay in file order:
after a rollback the abandoned steps' records come before the redone ones, and readers decide
what to do with a step that appears twice.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from typing import Any

from jaxpretrain import paths
from jaxpretrain.monitor import METRICS_FILENAME


@dataclasses.dataclass(frozen=True)
class RunMetrics:
    """One run's metrics.jsonl, split into metric and event records (each in file order)."""

    workdir: str
    records: tuple[dict[str, Any], ...]
    events: tuple[dict[str, Any], ...]

    @property
    def name(self) -> str:
        """The workdir's folder name: how plots and tables label the run."""
        return paths.resolve(self.workdir).name

    def keys(self) -> set[str]:
        """Every metric key with at least one non-null value."""
        return {
            key for record in self.records for key, value in record.items() if value is not None
        }

    def series(self, key: str) -> list[tuple[int, float]]:
        """(step, value) of every record holding a non-null `key`, in file order."""
        return [
            (int(record["step"]), float(record[key]))
            for record in self.records
            if record.get(key) is not None
        ]

    def median(self, key: str) -> float | None:
        """Median of `key` over the records; None when it is never set (e.g. `mfu` on CPU)."""
        values = [value for _, value in self.series(key)]
        return statistics.median(values) if values else None


def read(workdir: str | os.PathLike) -> RunMetrics:
    """WORKDIR/metrics.jsonl (a local path or a gs:// URL) as a `RunMetrics`.

    Raises:
      FileNotFoundError: the workdir has no metrics.jsonl.
      ValueError: a line other than the last is not a JSON object with a `step`.
    """
    path = paths.resolve(workdir) / METRICS_FILENAME
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file; is {os.fspath(workdir)} a run's workdir?")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records, events = [], []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "step" not in record:
                raise ValueError("no step")
        except ValueError as error:
            if number == len(lines):
                # A run killed mid-write, or still writing, leaves a partial last line.
                break
            raise ValueError(
                f"{path} line {number}: not a JSON object with a step ({error}); the file is "
                "damaged."
            ) from error
        (events if "event" in record else records).append(record)
    return RunMetrics(os.fspath(workdir), tuple(records), tuple(events))
