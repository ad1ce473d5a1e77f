"""What the training loop does when a step goes wrong or a run comes back (docs/recovery.md).

- `AnomalyGuard`: records every anomalous step the train step flagged, asks for a rollback
  when the policy says so, and stops a run that keeps diverging.
- `rollback`: PaLM's remedy, the newest checkpoint before the bad step and the next batches
  skipped.
- `set_data_position`: a checkpoint's data position onto this run's iterator, whatever the
  process count that saved it.
- `check_same_model`: refuses a workdir holding another model's run, naming the keys.
"""

from __future__ import annotations

from typing import Any

import grain
import jax
import ml_collections
import numpy as np

from jaxpretrain import checkpoint, monitor, steps
from jaxpretrain import config as config_lib
from jaxpretrain.data import streams

_ANOMALY_KINDS = {
    steps.ANOMALY_NON_FINITE: "non_finite",
    steps.ANOMALY_LOSS_SPIKE: "loss_spike",
    steps.ANOMALY_GRAD_SPIKE: "grad_norm_spike",
}


class AnomalyError(RuntimeError):
    """Training kept producing anomalous steps beyond the limits of `train.anomaly`."""


class AnomalyGuard:
    """Writes an `anomaly` record per flagged step and enforces `train.anomaly`'s limits."""

    def __init__(self, anomaly_cfg: ml_collections.ConfigDict, writer: monitor.MultiWriter):
        self._cfg = anomaly_cfg
        self._writer = writer
        self._consecutive = 0
        self._rollbacks = 0

    def review(self, first_step: int, fetched: list[dict[str, np.ndarray]]) -> int | None:
        """Records the anomalies among the steps `first_step`, ... (their fetched metrics).

        Returns the first anomalous step when the action is `rollback` (None otherwise). Raises
        AnomalyError after `max_consecutive` anomalous steps in a row.
        """
        first_anomalous = None
        for step, step_metrics in enumerate(fetched, start=first_step):
            if not int(step_metrics["anomaly"]):
                self._consecutive = 0
                continue
            self._consecutive += 1
            first_anomalous = first_anomalous or step
            self._writer.write_event(step, "anomaly", _anomaly_record(step_metrics))
            if 0 < self._cfg.max_consecutive <= self._consecutive:
                raise AnomalyError(
                    f"{self._consecutive} anomalous steps in a row up to step {step} "
                    "(train.anomaly.max_consecutive); see the anomaly records in metrics.jsonl, "
                    "lower train.lr or inspect the data, then rerun to resume."
                )
        return first_anomalous if self._cfg.action == "rollback" else None

    def count_rollback(self, bad_step: int) -> None:
        """Raises AnomalyError when a rollback for `bad_step` would exceed `max_rollbacks`."""
        self._rollbacks += 1
        if self._rollbacks > self._cfg.max_rollbacks:
            raise AnomalyError(
                f"step {bad_step} is anomalous after {self._cfg.max_rollbacks} rollbacks "
                "(train.anomaly.max_rollbacks); lower train.lr, raise train.warmup_steps or "
                "inspect the data, then rerun to resume."
            )


def _anomaly_record(step_metrics: dict[str, np.ndarray]) -> dict[str, Any]:
    flags = int(step_metrics["anomaly"])
    # Nested, so readers of the per-step `loss` never mistake an event for a logged step.
    return {
        "kinds": [name for bit, name in _ANOMALY_KINDS.items() if flags & bit],
        "update": "skipped" if int(step_metrics["update_skipped"]) else "applied",
        "observed": {
            "loss": _finite_or_none(step_metrics["loss"]),
            "grad_norm": _finite_or_none(step_metrics["grad_norm"]),
            "loss_average": _finite_or_none(step_metrics["loss_ema"]),
        },
    }


def _finite_or_none(value: Any) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def set_data_position(
    iterator: grain.DatasetIterator, data_states: list[dict], own_pipeline: bool
) -> None:
    """Moves `iterator` to a checkpoint's data position (`data_states`: one per saving process).

    The prepared-data pipeline (`own_pipeline`) takes every process's streams merged, so any
    process count dividing the stream count resumes; another iterator takes its own process's
    state and needs the saving process count.
    """
    if own_pipeline:
        iterator.set_state(streams.merge_stream_states(data_states))
        return
    if len(data_states) != jax.process_count():
        raise checkpoint.CheckpointError(
            f"the checkpoint's data position was saved by {len(data_states)} processes and this "
            f"run has {jax.process_count()}; a custom train iterator resumes only on the same "
            "process count."
        )
    iterator.set_state(data_states[jax.process_index()])


def rollback(
    checkpointer: checkpoint.Checkpointer,
    abstract_state: Any,
    train_iter: grain.DatasetIterator,
    *,
    bad_step: int,
    skip_batches: int,
    own_pipeline: bool,
) -> checkpoint.Restored | None:
    """The newest checkpoint before `bad_step`; `train_iter` moved past the bad batch and the
    `skip_batches` after it, so the batches that led to the anomaly are never trained again.

    Checkpoints after it are deleted (they hold the states being abandoned). Returns None,
    changing nothing, when no checkpoint precedes `bad_step`.
    """
    checkpointer.wait()
    target = checkpointer.restore(abstract_state, newest_step=bad_step - 1)
    if target is None:
        return None
    checkpointer.discard_after(target.step)
    set_data_position(train_iter, target.data_states, own_pipeline)
    for _ in range(bad_step - target.step + skip_batches):
        next(train_iter)
    return target


def check_same_model(config: ml_collections.ConfigDict, directory: str, run_info: dict) -> None:
    """Raises ConfigError when `run_info` (a checkpoint's) is of a model `config` cannot load."""
    differences = config_lib.state_differences(run_info.get("config", {}), config)
    if differences:
        raise config_lib.ConfigError(
            f"{directory} holds a run of a different model ({'; '.join(differences)}); use a "
            "new --workdir, or set those keys back to resume that run."
        )
