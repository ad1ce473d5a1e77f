"""seqio interop (the `seqio` extra): prepared data as a seqio Task, and seqio Tasks feeding us.

Two directions, one span-corruption code path (`objectives/span_corruption.py`, numpy):

    prepared directory ─► PreparedDataSource ─► span_corruption_preprocessor or lm_windows
                       ─► seqio.Task `inputs`/`targets` (T5X reads it like any seqio Task)

    any seqio Task with `targets` (and optionally `inputs`) token features
                       ─► prefix_target_example (the decoder-only row) ─► first-fit packing
                       ─► batches of the trainer's contract (make_seqio_train_iterator)

`span_corruption_preprocessor` is an ordinary seqio preprocessor: put it after tokenization in
any Task's preprocessors and its `targets` become T5 span-corruption (inputs, targets) pairs.

Only this module imports seqio and TensorFlow; nothing else in the package imports it, so the
rest of jaxpretrain runs without the extra.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np
import seqio
import tensorflow as tf

from jaxpretrain.data import pipeline
from jaxpretrain.data.manifest import Manifest, read_manifest
from jaxpretrain.objectives import rows
from jaxpretrain.objectives import span_corruption as span_corruption_lib
from jaxpretrain.tokenizer import SpecialIds, Tokenizer

DOCUMENT_INDEX = "document_index"
"""Feature of PreparedDataSource examples: the document's index in its split's shards (int64),
the index our input pipeline seeds an objective with."""


# ------------------------------------------------------------------ prepared data -> seqio


class PreparedDataSource(seqio.DataSource):
    """The documents of a prepared directory, one example per document.

    Examples are `{"targets": int32 [n] token ids (no BOS/EOS), "document_index": int64 []}`,
    read from the split's ArrayRecord shards. Shards at the document level (documents
    `shard_info.index::shard_info.num_shards`), so every host reads only its own documents;
    `shuffle` then permutes the shard's documents (seeded by `seed`), not just the files.
    """

    def __init__(self, data_dir: str):
        self._manifest = read_manifest(data_dir)
        splits = tuple(self._manifest.splits)
        super().__init__(
            splits=splits,
            num_input_examples={name: self._manifest.split(name).documents for name in splits},
        )

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split: str) -> Sequence[str]:
        return self._manifest.shard_paths(split)

    def get_dataset(
        self,
        split: str = "train",
        shuffle: bool = True,
        seed: int | None = None,
        shard_info: seqio.ShardInfo | None = None,
        *,
        sequence_length: Mapping[str, int] | None = None,
        use_cached: bool = False,
        num_epochs: int | None = 1,
    ) -> tf.data.Dataset:
        del sequence_length, use_cached, num_epochs  # Unused by data sources (seqio's contract).
        paths = self._manifest.shard_paths(split)
        num_documents = self._manifest.split(split).documents
        index, count = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)

        def documents() -> Iterator[dict[str, np.ndarray]]:
            # Opened per iteration, inside tf.data's thread, so the dataset holds no open files.
            source = grain.sources.ArrayRecordDataSource(paths)
            # Shard before shuffling: hosts stay disjoint even when their seeds differ.
            order = np.arange(num_documents)[index::count]
            if shuffle:
                order = np.random.default_rng(None if seed is None else int(seed)).permutation(
                    order
                )
            for document_index in order:
                yield {
                    "targets": np.frombuffer(source[int(document_index)], "<i4").astype(np.int32),
                    DOCUMENT_INDEX: np.int64(document_index),
                }

        return tf.data.Dataset.from_generator(
            documents,
            output_signature={
                "targets": tf.TensorSpec([None], tf.int32),
                DOCUMENT_INDEX: tf.TensorSpec([], tf.int64),
            },
        )


def register_prepared_data_task(
    name: str,
    data_dir: str,
    *,
    span_corruption: bool = False,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    seed: int | None = None,
    shuffle_buffer_size: int | None = 1000,
) -> seqio.Task:
    """Registers `name` as a seqio Task over the prepared directory `data_dir` (for T5X users).

    Splits are the manifest's (normally `train` and `validation`); the vocabulary is a
    `seqio.SentencePieceVocabulary` over the directory's `tokenizer.model` (extra_ids=0: the
    sentinels are already pieces of the model, ids 107..8). T5's own span-corruption
    preprocessor assumes `<extra_id_0>` is the vocabulary's last id (`sentinel_id` returns
    vocab_size - 1) and would overwrite learned pieces here: use `span_corruption=True` or
    `span_corruption_preprocessor`, or bind T5's `sentinel_id` to 107.

    With `span_corruption=False` the Task is a language-modelling task: each document + EOS,
    cut into `targets` windows of `sequence_length["targets"]` tokens (every token is a target
    once). With `span_corruption=True` each document becomes T5 span-corruption `inputs` /
    `targets` pairs by `span_corruption_preprocessor` (see its docstring for lengths and seeds;
    `seed` set = the examples our trainer builds from the same documents with train.seed=seed
    in its first epoch).

    Args:
      name: the seqio Task name (letters, digits, `_ . : #`). An existing Task of that name is
        replaced, so a module can be re-imported.
      data_dir: a prepared directory (manifest.json + tokenizer.model + shards).
      span_corruption, noise_density, mean_noise_span_length, seed: as above.
      shuffle_buffer_size: seqio's example shuffle buffer after preprocessing (the source
        already permutes each host's documents); None forbids shuffling.

    Returns:
      The registered seqio.Task; `seqio.get_mixture_or_task(name)` returns it too.
    """
    source = PreparedDataSource(data_dir)
    manifest = source.manifest
    vocabulary = seqio.SentencePieceVocabulary(manifest.tokenizer_path, extra_ids=0)
    if span_corruption:
        preprocessors = [
            functools.partial(
                span_corruption_preprocessor,
                noise_density=noise_density,
                mean_noise_span_length=mean_noise_span_length,
                special_ids=manifest.special_ids,
                seed=seed,
            )
        ]
        output_features = {
            "inputs": seqio.Feature(vocabulary, add_eos=False),
            "targets": seqio.Feature(vocabulary, add_eos=False),
        }
    else:
        preprocessors = [functools.partial(lm_windows, eos_id=manifest.special_ids.eos)]
        output_features = {"targets": seqio.Feature(vocabulary, add_eos=False)}
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(
        name,
        source=source,
        output_features=output_features,
        preprocessors=preprocessors,
        shuffle_buffer_size=shuffle_buffer_size,
    )


def lm_windows(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int] | None = None,
    *,
    eos_id: int,
) -> tf.data.Dataset:
    """seqio preprocessor: each example's `targets` + [eos_id], cut into consecutive windows of
    `sequence_length["targets"]` tokens (the last one shorter; one window when
    sequence_length is None). Other features are dropped."""
    window = None if sequence_length is None else sequence_length.get("targets")
    if window is not None and window < 1:
        raise ValueError(f"sequence_length['targets']={window} must be at least 1.")

    def split(example: Mapping[str, tf.Tensor]) -> tf.data.Dataset:
        tokens = tf.concat([example["targets"], tf.constant([eos_id], tf.int32)], axis=0)
        size = tf.size(tokens, out_type=tf.int64)
        step = size if window is None else tf.constant(window, tf.int64)
        return tf.data.Dataset.range(0, size, step).map(
            lambda start: {"targets": tokens[start : start + step]}
        )

    return dataset.flat_map(split)


# ------------------------------------------------------------ span corruption in seqio


def special_ids_of_vocabulary(vocabulary: seqio.Vocabulary) -> SpecialIds:
    """Our special ids read from a seqio vocabulary built on one of our tokenizers.

    Raises:
      ValueError: the vocabulary is not a SentencePieceVocabulary with extra_ids=0 over a model
        trained by jaxpretrain.tokenizer (then pass `special_ids` explicitly).
    """
    if not isinstance(vocabulary, seqio.SentencePieceVocabulary) or vocabulary.extra_ids:
        raise ValueError(
            f"Cannot read special ids from the vocabulary {vocabulary!r}: only a "
            "seqio.SentencePieceVocabulary with extra_ids=0 over a jaxpretrain tokenizer is "
            "understood; pass special_ids explicitly."
        )
    return Tokenizer(vocabulary.tokenizer, name=vocabulary.sentencepiece_model_file).special_ids


def span_corruption_preprocessor(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int],
    output_features: Mapping[str, seqio.Feature] | None = None,
    *,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    special_ids: SpecialIds | None = None,
    seed: int | None = None,
    append_eos: bool = True,
) -> tf.data.Dataset:
    """seqio preprocessor: each example's `targets` (token ids) -> T5 span-corruption pairs.

    Runs our objective's numpy code (`objectives/span_corruption.py`, via tf.numpy_function):
    the tokens are cut into consecutive windows of `window_length(sequence_length["inputs"])`
    raw tokens (T5's `random_spans_helper`), and each window becomes
    `{"inputs": window with its k-th noise span replaced by sentinels[k], + eos,
      "targets": sentinels[k] + k-th span, for every span, + eos}` (`corrupt_spans`). Every
    other feature is dropped. The eos is appended here, as T5's task features would: declare
    the Task's features with `add_eos=False` (or pass append_eos=False and let seqio's
    `append_eos_after_trim` add it).

    Seeds: with `seed=None` every example gets its own seed from seqio (`map_over_dataset`),
    so examples are reproducible under `get_dataset(seed=...)` and new in every epoch. With an
    int `seed`, examples must carry `document_index` (PreparedDataSource's feature) and are
    drawn from `np.random.default_rng([seed, 0, document_index])`, as our input pipeline seeds
    the objective for that document in epoch 0: with rows of `seq_len = inputs + targets`
    of a full window, the pairs are exactly our trainer's (and the same in every epoch: use it
    to evaluate or compare, not for long training).

    Args:
      dataset: examples with an int32 rank-1 `targets` feature.
      sequence_length: seqio's lengths: `inputs` sizes the windows; `targets`, when given,
        must hold a full window's targets (else seqio would trim spans away).
      output_features: seqio's features; special ids are read from the `targets` vocabulary
        when `special_ids` is None.
      noise_density, mean_noise_span_length: T5's settings (our objective.* keys).
      special_ids: the tokenizer's special ids (sentinels and eos are inserted by id).
      seed, append_eos: see above.

    Raises:
      ValueError: a missing inputs length, or a targets length too short for the windows.
    """
    if special_ids is None:
        if not output_features or "targets" not in output_features:
            raise ValueError(
                "span_corruption_preprocessor needs special_ids or a 'targets' output feature "
                "whose vocabulary names them; pass special_ids."
            )
        special_ids = special_ids_of_vocabulary(output_features["targets"].vocabulary)
    inputs_length = (sequence_length or {}).get("inputs")
    if not inputs_length:
        raise ValueError(
            f"span_corruption_preprocessor needs sequence_length['inputs'], got "
            f"sequence_length={sequence_length}; pass it to get_dataset."
        )
    tokens_length = window_length(
        inputs_length, noise_density, mean_noise_span_length, special_ids, append_eos=append_eos
    )
    _, full_targets_length, _ = span_corruption_lib.example_lengths(
        tokens_length, noise_density, mean_noise_span_length, append_eos=append_eos
    )
    targets_length = sequence_length.get("targets")
    if targets_length is not None and targets_length < full_targets_length:
        raise ValueError(
            f"sequence_length['targets']={targets_length} is shorter than the "
            f"{full_targets_length} target tokens of a {tokens_length}-token window (inputs "
            f"length {inputs_length}); use at least {full_targets_length}."
        )

    def corrupt(tokens: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, ...]:
        # Seed words as Python ints >= 0: seqio's seeds may be negative int64.
        rng = np.random.default_rng([int(word) % 2**64 for word in key])
        pairs = span_corruption_lib.document_pairs(
            tokens,
            rng,
            tokens_length=tokens_length,
            noise_density=noise_density,
            mean_noise_span_length=mean_noise_span_length,
            special_ids=special_ids,
            append_eos=append_eos,
        )
        return (*_flatten([p[0] for p in pairs]), *_flatten([p[1] for p in pairs]))

    def corrupt_tf(example: Mapping[str, tf.Tensor], key: tf.Tensor) -> dict[str, tf.Tensor]:
        inputs, inputs_lengths, targets, targets_lengths = tf.numpy_function(
            corrupt,
            [example["targets"], key],
            [tf.int32, tf.int64, tf.int32, tf.int64],
            stateful=False,
        )
        return {
            "inputs": _ragged(inputs, inputs_lengths),
            "targets": _ragged(targets, targets_lengths),
        }

    if seed is None:

        @seqio.map_over_dataset(num_seeds=1)
        def with_seqio_seed(example: Mapping[str, tf.Tensor], seed: tf.Tensor):
            return corrupt_tf(example, tf.cast(seed, tf.int64))

        pairs = with_seqio_seed(dataset)
    else:
        if DOCUMENT_INDEX not in dataset.element_spec:
            raise ValueError(
                f"span_corruption_preprocessor(seed={seed}) seeds each document by its "
                f"'{DOCUMENT_INDEX}' feature, which these examples lack; use seed=None for "
                "seqio's per-example seeds."
            )
        epoch0 = tf.constant([seed, 0], tf.int64)
        pairs = dataset.map(
            lambda example: corrupt_tf(example, tf.concat([epoch0, [example[DOCUMENT_INDEX]]], 0)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    # One ragged row per window; identity turns the rank-1 ragged slices back into dense
    # tensors, which seqio's validation and T5X's feature converters expect.
    return pairs.unbatch().map(
        lambda pair: {key: tf.identity(value) for key, value in pair.items()}
    )


def window_length(
    inputs_length: int,
    noise_density: float,
    mean_noise_span_length: float,
    special_ids: SpecialIds,
    *,
    append_eos: bool = True,
) -> int:
    """Raw tokens per span-corruption window for seqio's `sequence_length["inputs"]`.

    T5's `random_spans_helper(inputs_length, ...)[0]` (512 -> 568 at density 0.15, mean 3),
    shortened while a full window's inputs (by the mask's own counts) would exceed
    `inputs_length` or need more noise spans than there are sentinels.
    """
    tokens_length, _ = span_corruption_lib.random_spans_helper(
        inputs_length, noise_density, mean_noise_span_length
    )
    minimum = span_corruption_lib.MIN_TOKENS_LENGTH

    def fits(length: int) -> bool:
        inputs, _, spans = span_corruption_lib.example_lengths(
            length, noise_density, mean_noise_span_length, append_eos=append_eos
        )
        return inputs <= inputs_length and spans <= len(special_ids.sentinels)

    while tokens_length > minimum and not fits(tokens_length):
        tokens_length -= 1
    if not fits(tokens_length):
        raise ValueError(
            f"sequence_length['inputs']={inputs_length} is too short for span corruption at "
            f"noise_density={noise_density}, mean_noise_span_length={mean_noise_span_length}; "
            "raise it."
        )
    return tokens_length


def _flatten(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(values concatenated as int32, lengths as int64): a ragged batch through numpy_function."""
    lengths = np.array([len(part) for part in parts], np.int64)
    values = np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)
    return values, lengths


def _ragged(values: tf.Tensor, lengths: tf.Tensor) -> tf.RaggedTensor:
    return tf.RaggedTensor.from_row_lengths(
        tf.ensure_shape(values, [None]), tf.ensure_shape(lengths, [None])
    )


# -------------------------------------------------------------- seqio -> our trainer


def make_seqio_train_iterator(
    task: str | seqio.DatasetProviderBase,
    *,
    sequence_length: Mapping[str, int],
    seq_len: int,
    batch_size_per_process: int,
    seed: int | None,
    split: str = "train",
    special_ids: SpecialIds | None = None,
    shuffle: bool = True,
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    num_packing_bins: int | None = None,
    prefetch_batches: int = 2,
) -> grain.DatasetIterator:
    """Packed batches of our trainer's contract from a seqio Task or Mixture.

    Every example's `inputs` (optional; empty if absent) and `targets` become one decoder-only
    row (`rows.prefix_target_example`: bos + inputs bidirectional, loss on the targets only),
    packed first-fit into rows of `seq_len` with segment ids and positions from the example
    lengths; padding is `special_ids.pad`, never an implicit 0.

    Args:
      task: a registered Task/Mixture name, or the object.
      sequence_length: passed to `get_dataset` (seqio trims to it);
        `inputs + targets` lengths must fit in `seq_len`.
      seq_len, batch_size_per_process, num_packing_bins, prefetch_batches: as in
        `pipeline.make_train_iterator`.
      seed: seqio's seed (shuffle and random preprocessors). With a seed, the stream is
        deterministic and the iterator's state restores it; None is seqio's unseeded shuffle.
      split, shuffle, num_epochs: passed to `get_dataset` (None epochs = endless).
      special_ids: pad and bos; read from the `targets` vocabulary when None.
      process_index, process_count: this process reads shard `process_index` of
        `process_count` (seqio.ShardInfo); default jax.process_index()/process_count().

    Returns:
      An iterator of dicts of numpy arrays [batch_size_per_process, seq_len]
      (pipeline.BATCH_FEATURES) with `get_state()` / `set_state()`: a restore replays the
      seqio stream up to the saved example (deterministic when `seed` is set).
    """
    provider = seqio.get_mixture_or_task(task) if isinstance(task, str) else task
    if seq_len < 1 or batch_size_per_process < 1:
        raise ValueError(
            f"seq_len={seq_len} and batch_size_per_process={batch_size_per_process} must both "
            "be at least 1."
        )
    row_length = sequence_length.get("inputs", 0) + sequence_length.get("targets", 0)
    if "targets" not in sequence_length or row_length > seq_len:
        raise ValueError(
            f"sequence_length={dict(sequence_length)} must name 'targets', and inputs + targets "
            f"({row_length}) must fit in seq_len={seq_len}; shorten them or raise seq_len."
        )
    if special_ids is None:
        special_ids = special_ids_of_vocabulary(provider.output_features["targets"].vocabulary)
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not 0 <= index < count:
        raise ValueError(
            f"process_index={index} is outside [0, process_count={count}); pass both or neither."
        )

    def make_dataset() -> tf.data.Dataset:
        return provider.get_dataset(
            sequence_length=dict(sequence_length),
            split=split,
            shuffle=shuffle,
            seed=seed,
            shard_info=seqio.ShardInfo(index, count) if count > 1 else None,
            num_epochs=num_epochs,
        )

    examples = _TfDatasetIterDataset(make_dataset).map(
        functools.partial(_decoder_only_example, special_ids=special_ids, seq_len=seq_len)
    )
    batches = pipeline.pack_and_batch(
        examples,
        pad_id=special_ids.pad,
        seq_len=seq_len,
        rows_per_batch=batch_size_per_process,
        num_packing_bins=num_packing_bins or batch_size_per_process,
        drop_remainder=True,
        prefetch_batches=prefetch_batches,
    )
    return iter(batches)


def _decoder_only_example(
    example: Mapping[str, np.ndarray], *, special_ids: SpecialIds, seq_len: int
) -> dict[str, np.ndarray]:
    inputs = np.asarray(example.get("inputs", np.zeros(0, np.int32)), np.int32)
    targets = np.asarray(example["targets"], np.int32)
    if targets.size == 0 or inputs.size + targets.size > seq_len:
        raise ValueError(
            f"A seqio example has {inputs.size} inputs and {targets.size} targets tokens; each "
            f"needs at least one target and at most seq_len={seq_len} tokens in all."
        )
    return rows.prefix_target_example(inputs, targets, special_ids)


class _TfDatasetIterDataset(grain.IterDataset):
    """A tf.data pipeline as a grain source; state = examples read (a restore replays)."""

    def __init__(self, make_dataset: Callable[[], tf.data.Dataset]):
        super().__init__()
        self._make_dataset = make_dataset

    def __iter__(self) -> grain.DatasetIterator:
        return _TfDatasetIterator(self._make_dataset)

    def __str__(self) -> str:
        return "TfDatasetIterDataset"


class _TfDatasetIterator(grain.DatasetIterator):
    def __init__(self, make_dataset: Callable[[], tf.data.Dataset]):
        super().__init__()
        self._make_dataset = make_dataset
        self._examples_read = 0
        self._iterator: Iterator[Any] | None = None

    def __next__(self) -> Any:
        if self._iterator is None:
            # skip() still runs the preprocessors of the skipped examples: restore costs a replay.
            dataset = self._make_dataset().skip(self._examples_read)
            self._iterator = dataset.as_numpy_iterator()
        example = next(self._iterator)
        self._examples_read += 1
        return example

    def get_state(self) -> dict[str, Any]:
        return {"examples_read": self._examples_read}

    def set_state(self, state: dict[str, Any]) -> None:
        self._examples_read = int(state["examples_read"])
        self._iterator = None
