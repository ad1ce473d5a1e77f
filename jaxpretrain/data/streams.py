"""Data streams: the unit of training-data order that survives a change of process count.

A run's global batch is made of `num_streams` (S) independent streams, fixed for the run's
lifetime. Stream s reads its own documents and packs its own rows (see `pipeline`), producing
`global_batch / S` rows every step whatever process runs it. Process p of P (S % P == 0) runs
streams [p*S/P, (p+1)*S/P) and concatenates their batches row-wise, in stream order.

Because a stream's output depends only on (data, seed, s, S), a checkpoint written with P
processes resumes on any P' that divides S: the checkpointer gathers every process's state,
`merge_stream_states` unions them, and each new process restores the streams it now runs.
Every later step then holds exactly the rows of the uninterrupted run.

Iterator state (JSON-serialisable; stream ids are strings so a JSON round trip keeps them):

    {"num_streams": S, "streams": {"<s>": <stream s's grain iterator state>, ...}}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np


def resolve_num_streams(
    num_streams: int | None, process_count: int, batch_size_per_process: int
) -> int:
    """The run's stream count (None: one per process), checked against processes and batch.

    Raises a one-sentence ValueError naming `data.num_streams` when S is not a positive multiple
    of the process count or the global batch does not split into S equal parts.
    """
    if num_streams is None:
        return process_count
    global_batch = batch_size_per_process * process_count
    if num_streams < 1 or num_streams % process_count:
        raise ValueError(
            f"data.num_streams={num_streams} is not a positive multiple of the data-loading "
            f"process count {process_count}; set data.num_streams to a multiple of "
            f"{process_count} that divides the global batch {global_batch}, or leave it unset "
            "for one stream per process."
        )
    if global_batch % num_streams:
        raise ValueError(
            f"The global batch of {global_batch} rows (batch_size_per_process="
            f"{batch_size_per_process} x {process_count} processes) does not split into "
            f"data.num_streams={num_streams} equal streams; choose a global batch divisible by "
            f"{num_streams} or a data.num_streams that divides {global_batch}."
        )
    return num_streams


def concatenate_streams(
    streams: Mapping[int, grain.IterDataset], num_streams: int
) -> grain.IterDataset:
    """One dataset whose batches are the given streams' batches concatenated row-wise.

    Args:
      streams: {stream id: an endless dataset of batches (dicts of arrays [rows, ...])}, the
        streams this process runs, in the order their rows are concatenated.
      num_streams: the run's total stream count, recorded in the state.

    Returns:
      A dataset whose iterator's state is {"num_streams", "streams"} (see the module docstring)
      for these streams only; `set_state` accepts a state holding at least these streams.
    """
    return _ConcatenateStreamsIterDataset(streams, num_streams)


def merge_stream_states(states: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Unions several processes' iterator states into one holding all their streams.

    Raises ValueError if the states disagree on `num_streams` or give one stream two states.
    """
    if not states:
        raise ValueError("merge_stream_states needs at least one iterator state.")
    num_streams = states[0]["num_streams"]
    merged: dict[str, Any] = {}
    for state in states:
        if state["num_streams"] != num_streams:
            raise ValueError(
                f"Data iterator states disagree on num_streams ({num_streams} vs "
                f"{state['num_streams']}); merge only states of one run."
            )
        for stream, stream_state in _stream_states(state).items():
            if stream in merged and merged[stream] != stream_state:
                raise ValueError(
                    f"Data stream {stream} has two different states in the merged iterator "
                    "states; each stream must come from exactly one process's checkpoint."
                )
            merged[stream] = stream_state
    return {"num_streams": num_streams, "streams": merged}


def _stream_states(state: Mapping[str, Any]) -> dict[str, Any]:
    # Keys are strings after JSON; accept ints too, for states that never left memory.
    return {str(stream): stream_state for stream, stream_state in state["streams"].items()}


class _ConcatenateStreamsIterDataset(grain.IterDataset):
    def __init__(self, streams: Mapping[int, grain.IterDataset], num_streams: int):
        super().__init__(list(streams.values()))
        self._stream_ids = tuple(streams)
        self._num_streams = num_streams

    def __iter__(self) -> grain.DatasetIterator:
        return _ConcatenateStreamsIterator(
            [parent.__iter__() for parent in self._parents], self._stream_ids, self._num_streams
        )

    def __str__(self) -> str:
        return f"ConcatenateStreamsIterDataset(streams={list(self._stream_ids)})"


class _ConcatenateStreamsIterator(grain.DatasetIterator):
    """Steps every stream once per batch, so all of them always stand at the same step."""

    def __init__(
        self, parents: list[grain.DatasetIterator], stream_ids: tuple[int, ...], num_streams: int
    ):
        super().__init__(parents)
        self._stream_ids = stream_ids
        self._num_streams = num_streams

    def __next__(self) -> dict[str, np.ndarray]:
        batches = [next(parent) for parent in self._parents]
        if len(batches) == 1:
            return batches[0]  # One stream per process: today's batches, not even copied.
        return {
            feature: np.concatenate([batch[feature] for batch in batches]) for feature in batches[0]
        }

    def get_state(self) -> dict[str, Any]:
        return {
            "num_streams": self._num_streams,
            "streams": {
                str(stream): parent.get_state()
                for stream, parent in zip(self._stream_ids, self._parents, strict=True)
            },
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("num_streams") != self._num_streams:
            raise ValueError(
                f"The data iterator state was saved with num_streams={state.get('num_streams')} "
                f"but this run uses data.num_streams={self._num_streams}; set data.num_streams to "
                "the saved value to resume (it is fixed for a run's lifetime)."
            )
        saved = _stream_states(state)
        missing = [stream for stream in self._stream_ids if str(stream) not in saved]
        if missing:
            raise ValueError(
                f"The data iterator state lacks streams {missing} that this process runs (it has "
                f"{sorted(saved, key=int)}); restore from the states of every process, merged "
                "with merge_stream_states."
            )
        for stream, parent in zip(self._stream_ids, self._parents, strict=True):
            parent.set_state(saved[str(stream)])

    def __str__(self) -> str:
        return f"ConcatenateStreamsIterator(streams={list(self._stream_ids)})"
