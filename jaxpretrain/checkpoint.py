"""Asynchronous checkpoints of the train state and the data-iterator position (Orbax).

Layout: WORKDIR/checkpoints/<step>/{state,data}. `state` holds params, optimizer state, step and
RNG; `data` the grain iterator's JSON state (one file per process), so a resumed run sees exactly
the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import os
from typing import Any

import grain
import orbax.checkpoint as ocp
from absl import logging


class _IteratorState:
    """A data iterator's state, captured when the save starts, for grain's checkpoint handler.

    Handing grain the live iterator would let an async write record a later position than the
    step being saved. grain's handler writes one file per process, which multi-host runs need.
    """

    def __init__(self, state: dict | None = None):
        self.state = state

    def get_state(self) -> bytes:
        return json.dumps(self.state).encode()

    def set_state(self, state: bytes) -> None:
        self.state = json.loads(state)

    def start_prefetch(self) -> None:  # called by grain's handler after a restore
        pass


class Checkpointer:
    """Saves every `every` steps (and when forced), keeps the newest `max_to_keep`."""

    def __init__(self, directory: str, every: int, max_to_keep: int, use_async: bool = True):
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=every,
            max_to_keep=max_to_keep,
            enable_async_checkpointing=use_async,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            os.path.abspath(directory), options=options, item_names=("state", "data")
        )

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict, force: bool = False) -> bool:
        """Starts a save when `step` is due (or `force`); returns once arrays are on the host.

        Arrays are copied off the device before this returns, so the caller may donate or
        overwrite `state` right away while the write to disk continues in the background.
        """
        return self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(_IteratorState(data_state)),
            ),
            force=force,
        )

    def restore(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
        """Restores the newest readable checkpoint onto `abstract_state`'s shardings.

        Returns (step, state, data_state), or None when there is no checkpoint. A checkpoint that
        fails to read (e.g. a disk error after it was finalised) is skipped with a warning in
        favour of the one before it, rather than ending the run.
        """
        for step in reversed(self.all_steps()):
            data = _IteratorState()
            try:
                restored = self._manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        data=grain.checkpoint.CheckpointRestore(data),
                    ),
                )
            except Exception as error:  # noqa: BLE001 - any unreadable checkpoint: fall back
                logging.warning(
                    "checkpoint %d could not be restored (%s); trying older.", step, error
                )
                continue
            return step, restored["state"], data.state
        return None

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
