"""Online input pipeline (grain): prepared shards → objective examples → packed rows → batches.

Training data is read as S independent data streams (`data.num_streams`, fixed for a run;
default one per process). Each stream is one whole pipeline:

    ArrayRecord shards ─► documents of stream s (s::S), per source
      ─► shuffle per epoch, repeat ─► mix sources by the manifest's weights (MapDataset.mix)
      ─► int32 tokens ─► examples_fn (the objective's transform) ─► flatten ─► window shuffle
      ─► first-fit packing into rows of seq_len ─► batch [global_batch / S, seq_len]

Process p of P runs streams [p*S/P, (p+1)*S/P) and concatenates their batches row-wise into
[batch_size_per_process, seq_len], behind one prefetch thread. A stream's batches do not depend
on which process runs it, so a checkpoint resumes on any process count dividing S with the same
rows at every later step (`jaxpretrain.data.streams`). With S == P this is one stream per process.

Every batch is a dict of numpy arrays of shape [batch_size_per_process, seq_len]:

    inputs, targets    int32    token ids; padding = the tokenizer's pad id
    loss_weights       float32  0 on padding
    segment_ids        int32    1-based example index inside the row, 0 on padding
    positions          int32    position inside the example, restarting at 0 per example
    bidirectional      int32    copied from the examples, 0 on padding; the 1s of an example
                                are its first positions (a prefix), as attention kernels need

`segment_ids` and `positions` come from example lengths, never from token values, so a real
token with id 0 is never mistaken for padding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grain
import jax
import numpy as np

from jaxpretrain.data import flatten, streams
from jaxpretrain.data.manifest import Manifest

EXAMPLE_FEATURES = ("inputs", "targets", "loss_weights", "bidirectional")
BATCH_FEATURES = ("inputs", "targets", "loss_weights", "segment_ids", "positions", "bidirectional")
_FEATURE_DTYPES = {
    "inputs": np.int32,
    "targets": np.int32,
    "loss_weights": np.float32,
    "segment_ids": np.int32,
    "positions": np.int32,
    "bidirectional": np.int32,
}

ExamplesFn = Callable[[np.ndarray, np.random.Generator], list[dict[str, np.ndarray]]]
"""The objective hook: (token ids of one document, int32 [n]; a generator seeded by (seed,
epoch, document)) -> examples, each a dict with exactly EXAMPLE_FEATURES as 1-D arrays of one
common length in [1, seq_len]. It runs on several threads, so it must not keep state."""


def make_train_iterator(
    manifest: Manifest,
    *,
    examples_fn: ExamplesFn,
    seq_len: int,
    batch_size_per_process: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    num_streams: int | None = None,
    split: str = "train",
    num_packing_bins: int | None = None,
    read_threads: int = 4,
    prefetch_batches: int = 2,
    shuffle_window: int = 4096,
) -> grain.DatasetIterator:
    """An endless, checkpointable iterator of packed training batches for this process.

    Args:
      manifest: the prepared data (see `read_manifest`).
      examples_fn: the objective's transform from one document to examples (see `ExamplesFn`).
      seq_len: row length of every batch.
      batch_size_per_process: rows per batch on this process.
      seed: shuffles documents (differently every epoch) and seeds `examples_fn`'s generator.
      process_index, process_count: this process's data-loading slot (default:
        jax.process_index() / jax.process_count()).
      num_streams: the run's data streams S (default: process_count), fixed for the run's
        lifetime; a multiple of process_count dividing the global batch. This process runs
        streams [process_index * S/P, (process_index + 1) * S/P); stream s reads documents
        s::S of every source (see `jaxpretrain.data.streams`).
      split: which split of the manifest to read.
      num_packing_bins: rows each stream fills at once by first-fit packing (default: the
        stream's rows per batch); more bins waste less padding but delay and mix more documents.
      read_threads: threads reading shards and running `examples_fn`, shared among this
        process's streams (at least one each).
      prefetch_batches: batches prepared ahead on a background thread (0 disables it).
      shuffle_window: examples each stream shuffles together after documents are cut into
        examples. Without it, a long document's consecutive windows fill whole batches and the
        gradient sees one file at a time; 1 disables it.

    Returns:
      An iterator of dicts of numpy arrays [batch_size_per_process, seq_len] (BATCH_FEATURES),
      each the concatenation of this process's streams' batches in stream order.
      `get_state()` is a small JSON-serialisable dict {"num_streams", "streams"} of this
      process's streams; `set_state(state)` on a fresh iterator built with the same data, seed,
      global batch and num_streams, on any process count dividing num_streams, resumes at
      exactly the next batch given a state holding its streams (`streams.merge_stream_states`).
    """
    process_index, process_count = _process_slot(process_index, process_count)
    _check_sizes(seq_len, batch_size_per_process)
    num_streams = streams.resolve_num_streams(num_streams, process_count, batch_size_per_process)
    streams_per_process = num_streams // process_count
    rows_per_stream = batch_size_per_process // streams_per_process
    source = _open_split(manifest, split)
    document_indices = _source_document_indices(manifest, split)
    first_stream = process_index * streams_per_process
    stream_batches = {
        stream: _stream_batches(
            manifest,
            source,
            document_indices,
            stream=stream,
            num_streams=num_streams,
            split=split,
            examples_fn=examples_fn,
            seq_len=seq_len,
            rows_per_batch=rows_per_stream,
            seed=seed,
            num_packing_bins=num_packing_bins or rows_per_stream,
            # 0 keeps reading synchronous; otherwise split the threads, one at least per stream.
            read_threads=max(1, read_threads // streams_per_process) if read_threads else 0,
            shuffle_window=shuffle_window,
        )
        for stream in range(first_stream, first_stream + streams_per_process)
    }
    batches = streams.concatenate_streams(stream_batches, num_streams)
    if prefetch_batches > 0:
        # One prefetch thread for the process, not one per stream.
        batches = grain.experimental.ThreadPrefetchIterDataset(
            batches, prefetch_buffer_size=prefetch_batches
        )
    return iter(batches)


def _stream_batches(
    manifest: Manifest,
    source: grain.sources.ArrayRecordDataSource,
    document_indices: dict[str, grain.MapDataset],
    *,
    stream: int,
    num_streams: int,
    split: str,
    examples_fn: ExamplesFn,
    seq_len: int,
    rows_per_batch: int,
    seed: int,
    num_packing_bins: int,
    read_threads: int,
    shuffle_window: int,
) -> grain.IterDataset:
    """Data stream `stream` of `num_streams`: documents stream::num_streams of every source,
    shuffled, mixed, cut into examples, window-shuffled and packed into batches of
    [rows_per_batch, seq_len]. It depends on nothing else, so any process may run it."""
    per_source = {name: indices[stream::num_streams] for name, indices in document_indices.items()}
    weights = {
        name: weight
        for name, weight in manifest.source_weights(split).items()
        if weight > 0 and len(per_source.get(name, ())) > 0
    }
    documents_per_epoch = sum(len(per_source[name]) for name in weights)
    if documents_per_epoch == 0:
        raise ValueError(
            f"Data stream {stream} of {num_streams} gets no documents of split {split!r} "
            f"({len(source)} in {manifest.manifest_path}); prepare more data or use fewer "
            "data streams (data.num_streams) or processes."
        )
    # Endless streams of (epoch, document); ShuffleMapDataset reshuffles every epoch with
    # seed + epoch. The epoch is the source's own: an upsampled source repeats its documents
    # more often, and each repeat must redraw the objective's masks.
    source_streams = [
        per_source[name]
        .shuffle(seed + rank)
        .repeat(None)
        .map_with_index(_WithEpoch(len(per_source[name])))
        for rank, name in enumerate(weights)
    ]
    if len(source_streams) == 1:
        document_stream = source_streams[0]
    else:
        # Deterministic interleaving in proportion to the weights; index-addressable, so the
        # iterator state stays one position and a restore needs no replay.
        document_stream = grain.MapDataset.mix(source_streams, list(weights.values()))
    examples = document_stream.map(
        _DocumentToExamples(source, examples_fn, seq_len, seed)
    ).to_iter_dataset(_read_options(read_threads))
    flat_examples = flatten.FlattenIterDataset(examples, max_consecutive_empty=documents_per_epoch)
    if shuffle_window > 1:
        flat_examples = grain.experimental.WindowShuffleIterDataset(
            flat_examples, window_size=shuffle_window, seed=seed
        )
    return pack_and_batch(
        flat_examples,
        pad_id=manifest.special_ids.pad,
        seq_len=seq_len,
        rows_per_batch=rows_per_batch,
        num_packing_bins=num_packing_bins,
        drop_remainder=True,
    )


def make_eval_batches(
    manifest: Manifest,
    *,
    examples_fn: ExamplesFn,
    seq_len: int,
    batch_size_per_process: int,
    num_batches: int,
    split: str = "validation",
    source: str | None = None,
    seed: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    num_streams: int | None = None,
    num_packing_bins: int | None = None,
    read_threads: int = 4,
) -> list[dict[str, np.ndarray]]:
    """This process's packed eval batches of one source (or of the whole split), identical on
    every call.

    The documents are shuffled once with a fixed seed, so that a capped eval samples every shard
    of the source rather than the first ones, and dealt to `num_streams` streams like the
    training data (document i to stream i % S); this process packs only its own streams' rows.
    The rows of every step are therefore the same on any process count dividing S, and no host
    packs another host's rows. Every stream yields exactly `num_batches` batches, completed with
    all-padding rows (pad ids, loss_weights 0, segment_ids 0) once its documents run out.

    Args:
      num_batches: batches per stream; -1 packs all of the stream's documents (streams may then
        end at different lengths: this process's are padded to its longest, and callers running
        several processes must agree on a count, as `train.Experiment` does); 0 yields nothing.
      source: a source name of the manifest; None evaluates every document of the split.
      seed: the document shuffle's seed and `examples_fn`'s (per document, epoch 0), so
        stochastic objectives are evaluated on the same examples every time.
      num_streams: as in `make_train_iterator` (default: one per process).
      Other arguments as in `make_train_iterator`.

    Returns:
      A list of dicts of numpy arrays [batch_size_per_process, seq_len] (BATCH_FEATURES).
    """
    process_index, process_count = _process_slot(process_index, process_count)
    _check_sizes(seq_len, batch_size_per_process)
    if num_batches < -1:
        raise ValueError(f"num_batches={num_batches} is invalid; use -1 (whole split) or >= 0.")
    num_streams = streams.resolve_num_streams(num_streams, process_count, batch_size_per_process)
    if num_batches == 0:
        return []
    documents = _open_split(manifest, split)
    if len(documents) == 0:
        raise ValueError(
            f"Split {split!r} of {manifest.manifest_path} has no documents; prepare the data "
            "with a larger validation_fraction or disable eval."
        )
    if source is None:
        indices = grain.MapDataset.range(len(documents))
    else:
        by_source = _source_document_indices(manifest, split)
        if source not in by_source:
            raise ValueError(
                f"source {source!r} has no documents in split {split!r} of "
                f"{manifest.manifest_path}; its sources there: {sorted(by_source)}."
            )
        indices = by_source[source]
    indices = indices.shuffle(seed)
    streams_per_process = num_streams // process_count
    rows_per_stream = batch_size_per_process // streams_per_process
    first_stream = process_index * streams_per_process
    per_stream = []
    for stream in range(first_stream, first_stream + streams_per_process):
        stream_indices = indices[stream::num_streams]
        examples = (
            stream_indices.map_with_index(_WithEpoch(max(len(stream_indices), 1)))  # epoch 0
            .map(_DocumentToExamples(documents, examples_fn, seq_len, seed))
            .to_iter_dataset(_read_options(read_threads))
        )
        batches = pack_and_batch(
            flatten.FlattenIterDataset(examples, max_consecutive_empty=None),
            pad_id=manifest.special_ids.pad,
            seq_len=seq_len,
            rows_per_batch=rows_per_stream,
            num_packing_bins=num_packing_bins or rows_per_stream,
            drop_remainder=False,
        )
        if num_batches > 0:
            batches = grain.experimental.LimitIterDataset(batches, count=num_batches)
        per_stream.append(list(batches))
    length = num_batches if num_batches > 0 else max(len(batches) for batches in per_stream)
    return [
        {
            feature: np.concatenate(
                [
                    _padded_batch(
                        batches, step, rows_per_stream, seq_len, manifest.special_ids.pad
                    )[feature]
                    for batches in per_stream
                ]
            )
            for feature in BATCH_FEATURES
        }
        for step in range(length)
    ]


def padding_batch(rows: int, seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """A batch of all-padding rows: no token, no loss (what a stream without documents left
    contributes, and what a process pads its eval with to match the others' batch count)."""
    return {
        feature: np.full(
            (rows, seq_len),
            pad_id if feature in ("inputs", "targets") else 0,
            np.float32 if feature == "loss_weights" else np.int32,
        )
        for feature in BATCH_FEATURES
    }


def _padded_batch(
    batches: list[dict[str, np.ndarray]], step: int, rows: int, seq_len: int, pad_id: int
) -> dict[str, np.ndarray]:
    """Batch `step` of a stream, its short last batch completed with padding rows, or an
    all-padding batch past the stream's end."""
    if step >= len(batches):
        return padding_batch(rows, seq_len, pad_id)
    return _pad_rows_and_take_process_slice(
        batches[step], rows=rows, first_row=0, num_rows=rows, pad_id=pad_id
    )


def _process_slot(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not 0 <= index < count:
        raise ValueError(
            f"process_index={index} is outside [0, process_count={count}); pass both or neither."
        )
    return index, count


def _check_sizes(seq_len: int, batch_size_per_process: int) -> None:
    if seq_len < 1 or batch_size_per_process < 1:
        raise ValueError(
            f"seq_len={seq_len} and batch_size_per_process={batch_size_per_process} must both "
            "be at least 1."
        )


def _source_document_indices(manifest: Manifest, split: str) -> dict[str, grain.MapDataset]:
    """{source: dataset of its document indices in the split's concatenated shards}, in shard
    order (shards of one source are contiguous in manifests written by curate/)."""
    ranges: dict[str, list[tuple[int, int]]] = {}
    start = 0
    for shard in manifest.split(split).shards:
        if shard.documents:
            ranges.setdefault(shard.source, []).append((start, start + shard.documents))
        start += shard.documents
    datasets = {}
    for name, spans in ranges.items():
        merged = [list(spans[0])]
        for begin, end in spans[1:]:
            if begin == merged[-1][1]:
                merged[-1][1] = end
            else:
                merged.append([begin, end])
        if len(merged) == 1:
            datasets[name] = grain.MapDataset.range(merged[0][0], merged[0][1])
        else:
            indices = np.concatenate([np.arange(begin, end) for begin, end in merged])
            datasets[name] = grain.MapDataset.source(indices)
    return datasets


def _open_split(manifest: Manifest, split: str) -> grain.sources.ArrayRecordDataSource:
    return grain.sources.ArrayRecordDataSource(manifest.shard_paths(split))


def _read_options(read_threads: int) -> grain.ReadOptions:
    # Documents are small; a short buffer keeps restore cheap and memory flat.
    return grain.ReadOptions(
        num_threads=read_threads, prefetch_buffer_size=8 * max(1, read_threads)
    )


class _WithEpoch:
    """map_with_index transform: (position in a repeated stream, document) -> (epoch, document)."""

    def __init__(self, documents_per_epoch: int):
        self._documents_per_epoch = documents_per_epoch

    def __call__(self, stream_index: int, document_index: int) -> tuple[int, int]:
        return stream_index // self._documents_per_epoch, int(document_index)


class _DocumentToExamples:
    """map transform: (epoch, document index) -> the document's checked examples."""

    def __init__(
        self,
        source: grain.sources.ArrayRecordDataSource,
        examples_fn: ExamplesFn,
        seq_len: int,
        seed: int,
    ):
        self._source = source
        self._examples_fn = examples_fn
        self._seq_len = seq_len
        self._seed = seed

    def __call__(self, epoch_and_document: tuple[int, int]) -> list[dict[str, np.ndarray]]:
        epoch, document_index = (int(value) for value in epoch_and_document)
        token_ids = np.frombuffer(self._source[document_index], dtype="<i4").astype(np.int32)
        # Seeded by the document itself (not the stream position or process), so its examples
        # are the same whichever process reads it and however often the iterator is restored.
        rng = np.random.default_rng([self._seed, epoch, document_index])
        examples = self._examples_fn(token_ids, rng)
        return [_checked_example(example, self._seq_len, document_index) for example in examples]


def _checked_example(
    example: dict[str, Any], seq_len: int, document_index: int
) -> dict[str, np.ndarray]:
    """Casts an example to the batch dtypes; raises a one-sentence error on a broken contract."""
    if not isinstance(example, dict) or set(example) != set(EXAMPLE_FEATURES):
        keys = sorted(example) if isinstance(example, dict) else type(example).__name__
        raise ValueError(
            f"examples_fn returned an example with keys {keys} for document {document_index}; "
            f"it must return dicts with exactly the keys {list(EXAMPLE_FEATURES)}."
        )
    checked = {key: np.asarray(example[key], dtype=_FEATURE_DTYPES[key]) for key in example}
    lengths = {key: value.shape for key, value in checked.items()}
    length = checked["inputs"].shape[0] if checked["inputs"].ndim == 1 else -1
    if any(shape != (length,) for shape in lengths.values()) or not 1 <= length <= seq_len:
        raise ValueError(
            f"examples_fn returned features of shapes {lengths} for document {document_index}; "
            f"each must be 1-D with one common length between 1 and seq_len={seq_len}."
        )
    bidirectional = checked["bidirectional"]
    not_a_prefix = np.flatnonzero((bidirectional > 1) | (bidirectional < 0))
    if not len(not_a_prefix):
        not_a_prefix = np.flatnonzero(np.diff(bidirectional) > 0) + 1
    if len(not_a_prefix):
        at = int(not_a_prefix[0])
        raise ValueError(
            f"examples_fn returned bidirectional[{at}]={int(bidirectional[at])} (after "
            f"{int(bidirectional[at - 1]) if at else 'nothing'}) for document {document_index}; "
            "it must be 0 or 1, 1 on the example's first positions (a bidirectional prefix) and "
            "0 after them: put the bidirectional tokens first."
        )
    return checked


def pack_and_batch(
    examples: grain.IterDataset,
    *,
    pad_id: int,
    seq_len: int,
    rows_per_batch: int,
    num_packing_bins: int,
    drop_remainder: bool,
    prefetch_batches: int = 0,
) -> grain.IterDataset:
    """First-fit packs examples (`EXAMPLE_FEATURES`) into rows of `seq_len`, then batches rows.

    Rows carry `segment_ids` (1-based per example, 0 = padding) and `positions` (restarting per
    example) from the example lengths, never from token values; padding uses `pad_id`.
    `prefetch_batches` > 0 prepares that many batches ahead on a background thread.
    """
    packed_rows = grain.experimental.FirstFitPackIterDataset(
        examples,
        length_struct={feature: seq_len for feature in EXAMPLE_FEATURES},
        num_packing_bins=num_packing_bins,
        # Documents are already shuffled; keeping row order keeps batches reproducible.
        shuffle_bins=False,
        padding_struct={
            "inputs": pad_id,
            "targets": pad_id,
            "loss_weights": 0.0,
            "bidirectional": 0,
        },
    )
    batches = packed_rows.map(_packed_row_to_features).batch(
        rows_per_batch, drop_remainder=drop_remainder
    )
    if prefetch_batches > 0:
        batches = grain.experimental.ThreadPrefetchIterDataset(
            batches, prefetch_buffer_size=prefetch_batches
        )
    return batches


def _packed_row_to_features(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames the packer's per-feature segmentation to the batch contract.

    The packer tracks segment ids/positions per feature; all example features share one length,
    so those of `inputs` hold for every feature.
    """
    return {
        "inputs": row["inputs"],
        "targets": row["targets"],
        "loss_weights": row["loss_weights"],
        "segment_ids": row["inputs_segment_ids"],
        "positions": row["inputs_positions"],
        "bidirectional": row["bidirectional"],
    }


def _pad_rows_and_take_process_slice(
    batch: dict[str, np.ndarray], *, rows: int, first_row: int, num_rows: int, pad_id: int
) -> dict[str, np.ndarray]:
    """Completes a short final batch with all-padding rows, then keeps this process's rows."""
    result = {}
    for feature, values in batch.items():
        missing = rows - values.shape[0]
        if missing > 0:
            fill = pad_id if feature in ("inputs", "targets") else 0
            padding = np.full((missing, *values.shape[1:]), fill, dtype=values.dtype)
            values = np.concatenate([values, padding])
        result[feature] = values[first_row : first_row + num_rows]
    return result
