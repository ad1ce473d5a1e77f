"""Asynchronous checkpoints of the train state, the data position and the run (Orbax).

Layout: WORKDIR/checkpoints/<step>/{state,data,run,files.json}.
- `state`: params, optimizer state, step, RNG, anomaly statistics (sharded arrays).
- `data`: every process's data-iterator state at the save, gathered into one JSON list, so a
  run resumes on another process count (the iterators' streams are redistributed).
- `run`: what the trainer records about the run (its config, the metrics lines written so far).
- `files.json`: every file of the step with its size, written once Orbax has finalised it.

Restoring never silently starts over. The newest checkpoint whose files no longer match its
`files.json` (truncated, deleted) is provably corrupt: it is moved to
WORKDIR/checkpoints_corrupt/ with a warning and the one before it is used. Any other failure
(a different model, storage errors, permissions) raises `CheckpointError` with one sentence and
changes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from jaxpretrain import paths

_FILES_RECORD = "files.json"


def params_only(abstract_state: Any) -> Any:
    """A restore target for readers of the parameters (evaluation, export, sampling, a
    scorer): the optimizer state (`opt_state`, Adam's two moments: twice the parameters in
    float32) is left unread, and comes back as placeholders. For a `Checkpointer` that has not
    saved or restored whole states (Orbax fixes an item's handler at its first use): readers
    build their own, read-only one."""
    return {
        **abstract_state,
        "opt_state": jax.tree.map(lambda _: ocp.PLACEHOLDER, abstract_state["opt_state"]),
    }


def _state_restore(abstract_state: Any) -> ocp.args.CheckpointArgs:
    """Orbax's restore of the `state` item onto `abstract_state`'s shardings; leaves that are
    `ocp.PLACEHOLDER` (`params_only`) are not read."""
    if not any(leaf is ocp.PLACEHOLDER for leaf in jax.tree.leaves(abstract_state)):
        return ocp.args.StandardRestore(abstract_state)
    return ocp.args.PyTreeRestore(
        abstract_state, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state)
    )


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be saved or restored; the message says which and what to do."""


@dataclasses.dataclass
class Restored:
    step: int
    state: Any
    data_states: list[dict]  # each saving process's data-iterator state, by process index
    run: dict  # the `run_info` given to `save`


class Checkpointer:
    """Saves the train state, data position and run record; keeps the newest `max_to_keep`.

    `read_only` (for evaluation and tools that read a workdir another process may be training
    in): nothing is written, moved or cleaned up, and a corrupt step is only skipped.
    """

    def __init__(
        self,
        directory: str,
        max_to_keep: int,
        use_async: bool = True,
        read_only: bool = False,
    ):
        self.directory = paths.resolve(directory)  # Orbax needs absolute local paths
        self.read_only = read_only
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=use_async,
            create=not read_only,
            read_only=read_only,
            # Half-written steps of a killed run (`<step>.orbax-checkpoint-tmp-*`) are removed.
            cleanup_tmp_directories=not read_only,
        )
        try:
            self._manager = ocp.CheckpointManager(
                self.directory, options=options, item_names=("state", "data", "run")
            )
        except OSError as error:
            raise CheckpointError(
                f"cannot use the checkpoint directory {self.directory} ({_first_line(error)}): "
                "check that the workdir is writable."
            ) from error
        self._unrecorded: list[int] = []  # steps this object saved, without files.json yet
        self._preemption_signal: int | None = None
        self._previous_handler: Any = None
        self._watching_preemption = False

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict, run_info: dict) -> None:
        """Starts saving `step`; returns once its arrays are on the host.

        Arrays are copied off the device before this returns, so the caller may donate or
        overwrite `state` right away while the write continues in the background. Every process
        must call it (the data states are gathered). A failed write raises `CheckpointError`
        naming the step and directory; earlier checkpoints are untouched (Orbax writes a
        temporary directory and renames it when complete).
        """
        data_states = _gather_json(data_state)
        self.wait()  # the previous save's failure is reported under its own step
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    data=ocp.args.JsonSave(data_states),
                    run=ocp.args.JsonSave(run_info),
                ),
                force=True,
            )
        except Exception as error:  # noqa: BLE001 - any storage error, named with its path
            raise self._save_error(step, error) from error
        self._unrecorded.append(step)
        if not self._manager.is_saving_in_progress():  # a synchronous save
            self._record_finished_steps()

    def wait(self) -> None:
        """Blocks until the save in progress is on storage (a preemption save must be)."""
        if not self._unrecorded:
            return
        try:
            self._manager.wait_until_finished()
        except Exception as error:  # noqa: BLE001 - Orbax reraises background write errors
            raise self._save_error(self._unrecorded[-1], error) from error
        self._record_finished_steps()

    def restore(
        self,
        abstract_state: Any,
        check_run: Callable[[dict], None] | None = None,
        newest_step: int | None = None,
    ) -> Restored | None:
        """Restores the newest complete checkpoint onto `abstract_state`'s shardings.

        Returns None when the directory holds no checkpoint. `check_run(run_info)` runs before
        any array is read and raises to refuse the checkpoint (e.g. another model's).
        `newest_step` restores the newest checkpoint at or before that step (a rollback).
        Raises CheckpointError when checkpoints exist but every one is corrupt.
        """
        set_aside = []
        for step in reversed(self.all_steps()):
            if newest_step is not None and step > newest_step:
                continue
            step_dir = self.directory / str(step)
            if self._is_corrupt(step):
                set_aside.append(step)
                continue
            run_only = ocp.args.Composite(run=ocp.args.JsonRestore())
            try:
                run = self._manager.restore(step, args=run_only)
            except Exception as error:  # noqa: BLE001
                raise self._restore_error(step_dir, error) from error
            if check_run is not None:
                check_run(dict(run["run"]))
            try:
                restored = self._manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=_state_restore(abstract_state), data=ocp.args.JsonRestore()
                    ),
                )
            except Exception as error:  # noqa: BLE001
                raise self._restore_error(step_dir, error) from error
            return Restored(step, restored["state"], list(restored["data"]), dict(run["run"]))
        if set_aside:
            raise CheckpointError(
                f"every checkpoint in {self.directory} was corrupt (steps {set_aside}, now in "
                f"{self._corrupt_directory()}): restore one from a backup, or use a new --workdir."
            )
        return None

    def discard_after(self, step: int) -> None:
        """Deletes the checkpoints after `step` (a rollback abandons the states they hold)."""
        for later in self.all_steps():
            if later > step:
                logging.warning("deleting checkpoint %d: rolled back to %d", later, step)
                self._manager.delete(later)

    def watch_preemption(self) -> None:
        """From now on SIGTERM requests a save at the next step boundary (`preempted`).

        On several processes JAX's preemption service (started by `jax.distributed.initialize`)
        owns SIGTERM and agrees on one step for every process; a Python handler would replace it.
        """
        self._watching_preemption = True
        if jax.process_count() == 1:
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_signal)

    def preempted(self, step: int) -> bool:
        """True at the step boundary where every process should save and stop.

        With several processes every one must call it at every step (JAX's sync protocol).
        """
        if not self._watching_preemption:
            return False
        if jax.process_count() > 1:
            return self._manager.reached_preemption(step)
        return self._preemption_signal is not None

    def _on_signal(self, signum: int, frame: Any) -> None:
        logging.warning("signal %d: saving at the next step boundary, then exiting", signum)
        self._preemption_signal = signum

    def close(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None
        try:
            self.wait()
        finally:
            self._manager.close()

    def _record_finished_steps(self) -> None:
        """Writes `files.json` into the finalised steps this object saved (primary only).

        Only steps this object wrote are recorded, right after Orbax finalised them: a step left
        by an earlier run may have changed on storage since, and its sizes prove nothing.
        """
        finished, self._unrecorded = self._unrecorded, []
        if jax.process_index() != 0:
            return
        existing = set(self._manager.all_steps())
        for step in finished:
            step_dir = self.directory / str(step)
            if step not in existing:  # already deleted by max_to_keep
                continue
            sizes = {
                name: path.stat().length
                for name, path in paths.files_under(step_dir)
                if not name.startswith(_FILES_RECORD)
            }
            paths.write_text_atomic(step_dir / _FILES_RECORD, json.dumps(sizes, indent=1))

    def _is_corrupt(self, step: int) -> bool:
        """Whether `step` is provably corrupt; a writing checkpointer also sets it aside.

        Process 0 decides and every process follows, so no host races a rename.
        """
        problem = self._corruption(self.directory / str(step)) if jax.process_index() == 0 else None
        if jax.process_count() > 1:
            flag = multihost_utils.broadcast_one_to_all(np.int32(problem is not None))
            if not int(flag):
                return False
            problem = problem or "see process 0's log"
        if problem is None:
            return False
        if self.read_only:
            logging.warning(
                "checkpoint %s is corrupt (%s); skipping it.", self.directory / str(step), problem
            )
            return True
        target = self._corrupt_directory()
        logging.warning(
            "checkpoint %s is corrupt (%s); moving it to %s and using the one before it.",
            self.directory / str(step),
            problem,
            target,
        )
        if jax.process_index() == 0:
            paths.move(
                self.directory / str(step),
                target / f"{step}-{int(time.time())}",
                # On object stores Orbax counts a step as finished by its commit file: remove it
                # first, so a move cut short leaves a step Orbax ignores, never a torn one.
                delete_first=("commit_success.txt",),
            )
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"checkpoint_set_aside_{step}")
        self._manager.reload()
        return True

    def _corrupt_directory(self) -> epath.Path:
        return self.directory.parent / f"{self.directory.name}_corrupt"

    def _corruption(self, step_dir: epath.Path) -> str | None:
        """Why the step's files prove it incomplete or corrupt, or None.

        A step without a record was finalised by Orbax (an atomic rename, or its commit file on
        object stores) just before the run was killed: complete, so restored like any other.
        Storage errors while looking propagate: an outage is not evidence of corruption.
        """
        record = step_dir / _FILES_RECORD
        if not record.exists():
            return None
        try:
            expected = json.loads(record.read_text())
        except json.JSONDecodeError:
            return f"its {_FILES_RECORD} is unreadable"
        for name, size in expected.items():
            path = step_dir / name
            if not path.exists():
                return f"{name} is missing"
            if path.stat().length != size:
                return f"{name} has {path.stat().length} bytes, {size} were written"
        return None

    def _save_error(self, step: int, error: Exception) -> CheckpointError:
        earlier = [done for done in self.all_steps() if done < step]
        intact = f"checkpoint {earlier[-1]} is intact" if earlier else "none was saved before"
        return CheckpointError(
            f"saving checkpoint {step} to {self.directory} failed ({_first_line(error)}); "
            f"{intact}; free space or fix permissions there, then rerun the same command to "
            "resume."
        )

    @staticmethod
    def _restore_error(step_dir: epath.Path, error: Exception) -> CheckpointError:
        return CheckpointError(
            f"checkpoint {step_dir} is complete but could not be restored "
            f"({_first_line(error)}); nothing was changed: fix the cause (storage access, or a "
            "config that no longer matches the run) and rerun, or use a new --workdir."
        )


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def _gather_json(value: Any) -> list[Any]:
    """`value` from every process, in process order (a collective: every process calls it)."""
    if jax.process_count() == 1:
        return [value]
    encoded = np.frombuffer(json.dumps(value).encode(), dtype=np.uint8)
    lengths = multihost_utils.process_allgather(np.array([encoded.size], np.int32))
    padded = np.zeros(int(np.max(lengths)), np.uint8)
    padded[: encoded.size] = encoded
    gathered = multihost_utils.process_allgather(padded)
    return [
        json.loads(bytes(row[: int(length)]).decode())
        for row, length in zip(gathered, np.ravel(lengths), strict=True)
    ]
