"""seqio interop on a tiny prepared directory: the prepared-data Task (LM and span corruption),
the span-corruption preprocessor in any Task, and seqio Tasks feeding our trainer's batches.

Runs in the `.venv-tf` CI environment (`pip install -e '.[dev,tfds,seqio]'`); skipped without
seqio.
"""

import dataclasses
import functools

import ml_collections
import numpy as np
import pytest

seqio = pytest.importorskip("seqio")
tf = pytest.importorskip("tensorflow")

from array_record.python.array_record_module import ArrayRecordReader  # noqa: E402

from jaxpretrain import config as config_lib  # noqa: E402
from jaxpretrain.curate import prepare  # noqa: E402
from jaxpretrain.data import pipeline, seqio_tasks  # noqa: E402
from jaxpretrain.data.manifest import read_manifest  # noqa: E402
from jaxpretrain.objectives import rows  # noqa: E402
from jaxpretrain.objectives import span_corruption as span_corruption_lib  # noqa: E402
from jaxpretrain.tokenizer import Tokenizer  # noqa: E402

# Span corruption at T5's settings with inputs of 48 tokens: 52-token windows whose full
# pairs have 48 inputs and 12 targets (eos included), so rows of 60 positions hold one.
INPUTS_LENGTH = 48
TARGETS_LENGTH = 16
WINDOW = 52
FULL_ROW = 48 + 12


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    prepare.prepare(
        str(path), "stdlib", vocab_size=512, max_documents=40, shard_bytes=1 << 14, progress=False
    )
    return str(path)


@pytest.fixture(scope="module")
def manifest(data_dir):
    return read_manifest(data_dir)


def _documents(manifest, split):
    """Token ids of every document of `split`, in shard order, read straight from the shards."""
    documents = []
    for path in manifest.shard_paths(split):
        reader = ArrayRecordReader(path)
        documents += [np.frombuffer(record, "<i4").astype(np.int32) for record in reader.read_all()]
        reader.close()
    return documents


def _uncorrupt(inputs, targets, special_ids):
    """Inverse of sentinel replacement: the raw window of a span-corruption pair.

    Also checks T5's layout: both end with eos, the window starts with non-noise, and the k-th
    sentinel (decreasing ids from sentinels[0]) marks the k-th span in inputs and in targets.
    """
    assert inputs[-1] == special_ids.eos and targets[-1] == special_ids.eos
    inputs, targets = list(inputs[:-1]), list(targets[:-1])
    sentinels = list(special_ids.sentinels)
    used = [token for token in inputs if token in sentinels]
    assert used == sentinels[: len(used)] and len(used) >= 1
    assert inputs[0] not in sentinels
    assert [token for token in targets if token in sentinels] == used
    assert targets[0] == sentinels[0]
    spans, current = {}, None
    for token in targets:
        if token in sentinels:
            current = token
            spans[current] = []
        else:
            spans[current].append(token)
    assert all(spans.values()), "every noise span has at least one token"
    window = []
    for token in inputs:
        window += spans[token] if token in sentinels else [token]
    return np.asarray(window, np.int32)


def _settings(**overrides):
    objective = config_lib.default_config().objective
    objective.update(overrides)
    return ml_collections.FrozenConfigDict(objective)


def _segments(batch):
    """(row, columns) of every packed example of a batch."""
    for row in range(batch["segment_ids"].shape[0]):
        for segment in np.unique(batch["segment_ids"][row]):
            if segment:
                yield row, np.flatnonzero(batch["segment_ids"][row] == segment)


# ----------------------------------------------------------------- prepared data -> seqio


def test_prepared_lm_task_yields_every_document_token_exactly(data_dir, manifest):
    task = seqio_tasks.register_prepared_data_task("jaxpretrain_test_lm", data_dir)
    assert seqio.get_mixture_or_task("jaxpretrain_test_lm") is task
    assert set(task.splits) == {"train", "validation"}
    assert task.num_input_examples("train") == manifest.split("train").documents
    vocabulary = task.output_features["targets"].vocabulary
    tokenizer = Tokenizer.load(manifest.tokenizer_path)
    assert vocabulary.vocab_size == manifest.vocab_size
    text = "def f(x):\n    return x"
    assert vocabulary.encode(text) == tokenizer.encode(text)
    eos = manifest.special_ids.eos
    documents = _documents(manifest, "validation")

    whole = task.get_dataset(sequence_length=None, split="validation", shuffle=False)
    assert [list(ex["targets"]) for ex in whole.as_numpy_iterator()] == [
        [*doc, eos] for doc in documents
    ]
    windows = task.get_dataset(sequence_length={"targets": 64}, split="validation", shuffle=False)
    targets = [ex["targets"] for ex in windows.as_numpy_iterator()]
    assert set(windows.element_spec) == {"targets"} and max(len(t) for t in targets) == 64
    assert np.array_equal(np.concatenate(targets), np.concatenate([[*d, eos] for d in documents]))


def test_prepared_source_shuffles_and_shards_whole_documents(data_dir, manifest):
    source = seqio_tasks.PreparedDataSource(data_dir)
    documents = _documents(manifest, "train")

    def read(shuffle, seed=None, shard_info=None):
        dataset = source.get_dataset("train", shuffle=shuffle, seed=seed, shard_info=shard_info)
        return [(int(ex["document_index"]), ex["targets"]) for ex in dataset.as_numpy_iterator()]

    in_order = read(shuffle=False)
    assert [index for index, _ in in_order] == list(range(len(documents)))
    assert all(np.array_equal(tokens, documents[i]) for i, tokens in in_order)
    shuffled = read(shuffle=True, seed=3)
    assert [i for i, _ in shuffled] == [i for i, _ in read(shuffle=True, seed=3)]
    assert [i for i, _ in shuffled] != [i for i, _ in read(shuffle=True, seed=4)]
    assert sorted(i for i, _ in shuffled) == list(range(len(documents)))
    # Hosts shard before shuffling, so they read disjoint documents even with other seeds.
    shards = [read(True, index, seqio.ShardInfo(index, 3)) for index in range(3)]
    indices = [i for shard in shards for i, _ in shard]
    assert sorted(indices) == list(range(len(documents)))  # disjoint and complete
    assert all(np.array_equal(tokens, documents[i]) for shard in shards for i, tokens in shard)


def test_span_corruption_task_gives_our_trainers_examples(data_dir, manifest):
    special_ids = manifest.special_ids
    task = seqio_tasks.register_prepared_data_task(
        "jaxpretrain_test_span_seeded", data_dir, span_corruption=True, seed=7
    )
    assert (
        seqio_tasks.window_length(INPUTS_LENGTH, 0.15, 3.0, special_ids)
        == WINDOW
        == span_corruption_lib.random_spans_helper(INPUTS_LENGTH, 0.15, 3.0)[0]
    )
    dataset = task.get_dataset(
        sequence_length={"inputs": INPUTS_LENGTH, "targets": TARGETS_LENGTH},
        split="validation",
        shuffle=False,
    )
    document = _documents(manifest, "validation")[0]
    num_windows = -(-len(document) // WINDOW)
    pairs = [(ex["inputs"], ex["targets"]) for ex in dataset.take(num_windows).as_numpy_iterator()]

    # Sentinel replacement inverted window by window gives the document back.
    windows = [_uncorrupt(inputs, targets, special_ids) for inputs, targets in pairs]
    assert all(len(window) == WINDOW for window in windows[:-1])
    assert np.array_equal(np.concatenate(windows), document)
    assert max(len(inputs) for inputs, _ in pairs) == INPUTS_LENGTH
    # The rows are those our input pipeline makes for document 0 with train.seed=7, epoch 0.
    expected = span_corruption_lib.make_examples(
        document,
        np.random.default_rng([7, 0, 0]),
        seq_len=FULL_ROW,
        special_ids=special_ids,
        settings=_settings(),
    )
    assert len(expected) == num_windows
    for (inputs, targets), row in zip(pairs, expected, strict=True):
        ours = rows.prefix_target_example(inputs, targets, special_ids)
        assert all(np.array_equal(ours[key], row[key]) for key in pipeline.EXAMPLE_FEATURES)


def test_span_corruption_task_is_readable_by_t5x_feature_converters(data_dir, manifest):
    seqio_tasks.register_prepared_data_task(
        "jaxpretrain_test_span_t5x", data_dir, span_corruption=True
    )
    lengths = {"inputs": INPUTS_LENGTH, "targets": TARGETS_LENGTH}
    converted = seqio.get_dataset(
        "jaxpretrain_test_span_t5x",
        task_feature_lengths=lengths,
        dataset_split="validation",
        shuffle=False,
        seed=1,
        feature_converter=seqio.EncDecFeatureConverter(pack=False),
    )
    example = next(converted.as_numpy_iterator())
    assert example["encoder_input_tokens"].shape == (INPUTS_LENGTH,)
    assert example["decoder_target_tokens"].shape == (TARGETS_LENGTH,)
    assert example["decoder_target_tokens"][0] == manifest.special_ids.sentinels[0]


# ------------------------------------------------------ the preprocessor in any seqio Task


def _token_task(name, documents, vocabulary, **preprocessor_options):
    """A Task over hand-made token documents with our span corruption as its preprocessor."""

    def dataset_fn(split, shuffle_files, seed=None):
        del split, shuffle_files, seed
        return tf.data.Dataset.from_generator(
            lambda: ({"targets": doc} for doc in documents),
            output_signature={"targets": tf.TensorSpec([None], tf.int32)},
        )

    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(dataset_fn, splits=["train"]),
        output_features={
            "inputs": seqio.Feature(vocabulary, add_eos=False),
            "targets": seqio.Feature(vocabulary, add_eos=False),
        },
        preprocessors=[
            functools.partial(seqio_tasks.span_corruption_preprocessor, **preprocessor_options)
        ],
        shuffle_buffer_size=None,
    )


def test_preprocessor_in_any_task_uses_seqio_seeds_and_reads_ids_from_the_vocabulary(manifest):
    vocabulary = seqio.SentencePieceVocabulary(manifest.tokenizer_path)
    documents = [np.arange(400, 400 + n, dtype=np.int32) for n in (1, 2, 30, 200)]
    task = _token_task("jaxpretrain_test_span_any", documents, vocabulary)
    lengths = {"inputs": INPUTS_LENGTH, "targets": TARGETS_LENGTH}

    def pairs(seed, num_epochs=1):
        dataset = task.get_dataset(
            lengths, "train", shuffle=False, seed=seed, num_epochs=num_epochs
        )
        return [
            (ex["inputs"].tolist(), ex["targets"].tolist()) for ex in dataset.as_numpy_iterator()
        ]

    first = pairs(seed=1)
    assert first == pairs(seed=1) and first != pairs(seed=2)
    windows = [_uncorrupt(np.array(i), np.array(t), manifest.special_ids) for i, t in first[1:]]
    # The 1-token document keeps its token and gets no noise (T5's short-chunk rule).
    eos, sentinel = manifest.special_ids.eos, manifest.special_ids.sentinels[0]
    assert first[0] == ([400, eos], [sentinel, eos])
    assert np.array_equal(np.concatenate(windows), np.concatenate(documents[1:]))
    two_epochs = pairs(seed=1, num_epochs=2)
    assert len(two_epochs) == 2 * len(first) and two_epochs[len(first) :] != first


def test_preprocessor_errors_name_the_setting(manifest):
    vocabulary = seqio.SentencePieceVocabulary(manifest.tokenizer_path)
    documents = [np.arange(400, 460, dtype=np.int32)]
    task = _token_task("jaxpretrain_test_span_errors", documents, vocabulary)
    with pytest.raises(ValueError, match=r"sequence_length\['targets'\]=8 .* at least 12"):
        task.get_dataset({"inputs": INPUTS_LENGTH, "targets": 8}, "train", shuffle=False)
    with pytest.raises(ValueError, match=r"needs sequence_length\['inputs'\]"):
        task.get_dataset({"targets": 8}, "train", shuffle=False)
    seeded = _token_task("jaxpretrain_test_span_seed", documents, vocabulary, seed=3)
    with pytest.raises(ValueError, match="'document_index' feature, which these examples lack"):
        seeded.get_dataset({"inputs": INPUTS_LENGTH}, "train", shuffle=False)
    with pytest.raises(ValueError, match="pass special_ids explicitly"):
        seqio_tasks.special_ids_of_vocabulary(seqio.PassThroughVocabulary(512))


# ------------------------------------------------------------------ seqio -> our trainer


def _train_iterator(task, **overrides):
    options = dict(
        sequence_length={"inputs": INPUTS_LENGTH, "targets": TARGETS_LENGTH},
        seq_len=128,
        batch_size_per_process=4,
        seed=5,
        process_index=0,
        process_count=1,
    )
    options.update(overrides)
    return seqio_tasks.make_seqio_train_iterator(task, **options)


def test_seqio_task_feeds_batches_of_our_contract(data_dir, manifest):
    seqio_tasks.register_prepared_data_task(
        "jaxpretrain_test_span_feed", data_dir, span_corruption=True
    )
    # A pad id that is not 0 shows the padding comes from special_ids, never an implicit 0.
    special_ids = dataclasses.replace(manifest.special_ids, pad=3)
    iterator = _train_iterator("jaxpretrain_test_span_feed", special_ids=special_ids)
    windows = {
        doc[start : start + WINDOW].tobytes()
        for doc in _documents(manifest, "train")
        for start in range(0, len(doc), WINDOW)
    }
    segments = 0
    for _ in range(3):
        batch = next(iterator)
        assert set(batch) == set(pipeline.BATCH_FEATURES)
        for key, value in batch.items():
            assert value.shape == (4, 128)
            assert value.dtype == (np.float32 if key == "loss_weights" else np.int32)
        padding = batch["segment_ids"] == 0
        assert padding.any()
        assert np.all(batch["inputs"][padding] == 3) and np.all(batch["targets"][padding] == 3)
        assert not batch["loss_weights"][padding].any()
        assert not batch["bidirectional"][padding].any()
        for row, columns in _segments(batch):
            segments += 1
            inputs, targets = batch["inputs"][row, columns], batch["targets"][row, columns]
            loss, bidirectional = (
                batch["loss_weights"][row, columns],
                batch["bidirectional"][row, columns],
            )
            assert np.array_equal(batch["positions"][row, columns], np.arange(len(columns)))
            prefix = int(bidirectional.sum()) - 1  # bos + the span-corruption inputs
            assert np.array_equal(bidirectional, np.arange(len(columns)) <= prefix)
            assert np.array_equal(loss, np.arange(len(columns)) >= prefix)
            assert inputs[0] == special_ids.bos
            # Bidirectional only on bos + inputs, loss only on the targets: undo the row.
            pair_inputs, pair_targets = inputs[1 : prefix + 1], targets[prefix:]
            assert np.array_equal(inputs[prefix + 1 :], pair_targets[:-1])
            window = _uncorrupt(pair_inputs, pair_targets, special_ids)
            # One segment = one window of one document (never two documents mixed).
            assert window.tobytes() in windows
    assert segments > 3 * 4  # rows are packed with several examples


def test_seqio_train_iterator_restores_to_the_same_batches(data_dir):
    seqio_tasks.register_prepared_data_task("jaxpretrain_test_lm_restore", data_dir)
    options = dict(sequence_length={"targets": 40}, seq_len=64)
    iterator = _train_iterator("jaxpretrain_test_lm_restore", **options)
    for _ in range(2):
        next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(2)]
    restored = _train_iterator("jaxpretrain_test_lm_restore", **options)
    restored.set_state(state)
    for batch, again in zip(expected, (next(restored) for _ in range(2)), strict=True):
        assert all(np.array_equal(batch[key], again[key]) for key in batch)
    # LM rows: bos + targets, causal, loss on every position.
    assert np.all(expected[0]["loss_weights"] == (expected[0]["segment_ids"] > 0))


def test_seqio_train_iterator_rejects_rows_longer_than_seq_len(data_dir):
    seqio_tasks.register_prepared_data_task("jaxpretrain_test_lm_errors", data_dir)
    with pytest.raises(ValueError, match=r"inputs \+ targets \(80\) must fit in seq_len=64"):
        _train_iterator("jaxpretrain_test_lm_errors", sequence_length={"targets": 80}, seq_len=64)
    with pytest.raises(ValueError, match=r"process_index=2 is outside \[0, process_count=2\)"):
        _train_iterator(
            "jaxpretrain_test_lm_errors",
            sequence_length={"targets": 64},
            seq_len=64,
            process_index=2,
            process_count=2,
        )


def test_a_seqio_task_trains_our_model_and_resumes_exactly(data_dir, tmp_path):
    import shutil

    from jaxpretrain import train

    config = config_lib.default_config()
    config.model.update(
        num_layers=2, embed_dim=64, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=128
    )
    config.model.update(max_seq_len=64, dtype="float32")
    config.train.update(steps=4, batch_size=8, seq_len=64, lr=3e-3, warmup_steps=1, log_every=1)
    config.objective.name = "span_corruption"
    config.checkpoint.update(every=2, max_to_keep=5)
    config.eval.update(every=0, steps=1)
    config.data.dir = data_dir
    seqio_tasks.register_prepared_data_task(
        "jaxpretrain_test_train", data_dir, span_corruption=True
    )

    def run(workdir):
        experiment = train.build_experiment(config, str(workdir))
        slot, slots = experiment.setup.data_slot
        batches = _train_iterator(
            "jaxpretrain_test_train",
            seq_len=64,
            batch_size_per_process=experiment.batch_size_per_process,
            seed=config.train.seed,
            process_index=slot,
            process_count=slots,
        )
        result = train.run_training(experiment, str(workdir), train_iterator=batches)
        return {r["step"]: r["loss"] for r in result.history if "loss" in r}

    uninterrupted = run(tmp_path / "a")
    assert sorted(uninterrupted) == [1, 2, 3, 4]
    assert uninterrupted[4] < uninterrupted[1]
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "4")
    resumed = run(tmp_path / "b")
    assert resumed == {step: uninterrupted[step] for step in (3, 4)}
