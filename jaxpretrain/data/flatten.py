"""A grain dataset flattening a stream of lists (each document's examples) into their elements.

Its state is the parent's state before the current list plus the index inside it, so no buffer
is ever saved: a restore re-reads that one list (the objective's transform is deterministic).
"""

from __future__ import annotations

from typing import Any

import grain


class FlattenIterDataset(grain.IterDataset):
    """Turns a stream of lists (each document's examples) into a stream of their elements."""

    def __init__(self, parent: grain.IterDataset, *, max_consecutive_empty: int | None):
        super().__init__(parent)
        self._max_consecutive_empty = max_consecutive_empty

    def __iter__(self) -> grain.DatasetIterator:
        return FlattenIterator(self._parent.__iter__(), self._max_consecutive_empty)

    def __str__(self) -> str:
        return "FlattenIterDataset"


class FlattenIterator(grain.DatasetIterator):
    """State = parent state before the current list + index inside it, so no buffer is saved.

    `max_consecutive_empty`: an endless stream where a whole epoch of documents yields no
    example would otherwise spin forever; it raises instead.
    """

    def __init__(self, parent: grain.DatasetIterator, max_consecutive_empty: int | None):
        super().__init__(parent)
        self._max_consecutive_empty = max_consecutive_empty
        self._buffer: list[Any] = []
        self._next_in_buffer = 0
        self._parent_state_before_buffer = self._parent.get_state()

    def __next__(self) -> Any:
        consecutive_empty = 0
        while self._next_in_buffer >= len(self._buffer):
            self._parent_state_before_buffer = self._parent.get_state()
            self._buffer = next(self._parent)  # StopIteration ends a finite stream.
            self._next_in_buffer = 0
            if self._buffer:
                break
            consecutive_empty += 1
            if self._max_consecutive_empty and consecutive_empty >= self._max_consecutive_empty:
                raise ValueError(
                    f"examples_fn returned no example for {consecutive_empty} documents in a "
                    "row (a whole epoch); check the objective's minimum document length against "
                    "the data."
                )
        element = self._buffer[self._next_in_buffer]
        self._next_in_buffer += 1
        return element

    def get_state(self) -> dict[str, Any]:
        return {
            "parent": self._parent_state_before_buffer,
            "next_in_buffer": self._next_in_buffer,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._parent_state_before_buffer = state["parent"]
        self._buffer, self._next_in_buffer = [], 0
        if state["next_in_buffer"] > 0:
            # Re-read the list the saved position points into; examples_fn is deterministic.
            self._buffer = next(self._parent)
            self._next_in_buffer = state["next_in_buffer"]
