"""Data streams: the training data of every step is independent of the process count.

A run with S streams on P processes must give, at every step, the same global rows whichever P
it started or resumed on. Prepared data and objectives come from test_data_pipeline.py.
"""

import json

import numpy as np
import pytest
from test_data_pipeline import (  # pytest puts tests/ on sys.path (no package)
    SEQ_LEN,
    _write_prepared,
    _write_two_sources,
    random_crop_examples,
)

from jaxpretrain.data import pipeline, streams

GLOBAL_BATCH = 8


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return _write_prepared(tmp_path_factory.mktemp("data"), {"train": 40, "validation": 13})


@pytest.fixture(scope="module")
def mixed_manifest(tmp_path_factory):
    """Two sources mixed 3:1, so every stream interleaves sources by the weights."""
    return _write_two_sources(tmp_path_factory.mktemp("mixed"), {"a": 0.75, "b": 0.25})


def _iterators(manifest, *, num_streams, process_count, **overrides):
    """One training iterator per process slot, splitting a global batch of GLOBAL_BATCH rows."""
    arguments = dict(
        # Stochastic, so the objective's per-document seeding is compared too.
        examples_fn=random_crop_examples,
        seq_len=SEQ_LEN,
        batch_size_per_process=GLOBAL_BATCH // process_count,
        seed=0,
        process_count=process_count,
        num_streams=num_streams,
        read_threads=2,
        shuffle_window=32,
    )
    arguments.update(overrides)
    return [
        pipeline.make_train_iterator(manifest, process_index=index, **arguments)
        for index in range(process_count)
    ]


def _global_batches(iterators, steps):
    """The next `steps` global batches: every process's batch, concatenated in process order."""
    batches = []
    for _ in range(steps):
        per_process = [next(iterator) for iterator in iterators]
        batches.append(
            {
                feature: np.concatenate([batch[feature] for batch in per_process])
                for feature in pipeline.BATCH_FEATURES
            }
        )
    return batches


def _rows(batch):
    """The batch's rows as a sorted list of tuples of every feature: its multiset of rows."""
    return sorted(
        tuple(tuple(batch[feature][row].tolist()) for feature in pipeline.BATCH_FEATURES)
        for row in range(batch["inputs"].shape[0])
    )


def _assert_same_rows_every_step(got, want):
    assert len(got) == len(want)
    for step, (got_batch, want_batch) in enumerate(zip(got, want, strict=True)):
        assert _rows(got_batch) == _rows(want_batch), f"step {step}"


def _merged_state(iterators):
    """What the checkpointer does: every process's state, through JSON, merged."""
    return streams.merge_stream_states(
        [json.loads(json.dumps(iterator.get_state())) for iterator in iterators]
    )


@pytest.mark.parametrize("process_count", [1, 2])
def test_one_stream_per_process_is_the_default(manifest, process_count):
    default = _iterators(manifest, num_streams=None, process_count=process_count)
    explicit = _iterators(manifest, num_streams=process_count, process_count=process_count)
    for want, got in zip(_global_batches(default, 6), _global_batches(explicit, 6), strict=True):
        for feature in pipeline.BATCH_FEATURES:
            np.testing.assert_array_equal(got[feature], want[feature], err_msg=feature)
    for index, iterator in enumerate(default):
        state = iterator.get_state()
        assert state["num_streams"] == process_count
        assert list(state["streams"]) == [str(index)]


@pytest.mark.parametrize("data", ["manifest", "mixed_manifest"])
def test_the_stream_count_not_the_process_count_decides_every_step(request, data):
    manifest = request.getfixturevalue(data)
    reference = _global_batches(_iterators(manifest, num_streams=4, process_count=2), 8)
    # Steps differ from each other, so a run shifted by a step would be caught.
    assert all(_rows(a) != _rows(b) for a, b in zip(reference[:-1], reference[1:], strict=True))
    for process_count in (1, 4):
        started = _global_batches(
            _iterators(manifest, num_streams=4, process_count=process_count), 8
        )
        _assert_same_rows_every_step(started, reference)
        # Streams are concatenated in stream order, so even the row order is kept.
        for want, got in zip(reference, started, strict=True):
            np.testing.assert_array_equal(got["inputs"], want["inputs"])


# Slow pieces of the product are spread out: data (the mixed one reads slower: grain's index
# shuffle is slow on the few documents per stream), process count and prefetch.
@pytest.mark.parametrize(
    ("data", "resume_process_count", "prefetch_batches"),
    [("manifest", 1, 2), ("manifest", 4, 0), ("mixed_manifest", 4, 2)],
)
def test_a_checkpoint_from_two_processes_resumes_on_another_count(
    request, data, resume_process_count, prefetch_batches
):
    manifest = request.getfixturevalue(data)
    uninterrupted = _iterators(
        manifest, num_streams=4, process_count=2, prefetch_batches=prefetch_batches
    )
    _global_batches(uninterrupted, 5)
    state = _merged_state(uninterrupted)
    assert state["num_streams"] == 4 and sorted(state["streams"]) == ["0", "1", "2", "3"]
    want = _global_batches(uninterrupted, 10)  # Crosses an epoch boundary of every stream.

    resumed = _iterators(
        manifest,
        num_streams=4,
        process_count=resume_process_count,
        prefetch_batches=prefetch_batches,
    )
    for iterator in resumed:
        iterator.set_state(state)  # Each process picks its own streams from the merged state.
    _assert_same_rows_every_step(_global_batches(resumed, 10), want)


def test_each_process_saves_only_its_streams_and_needs_them_back(manifest):
    first, second = _iterators(manifest, num_streams=4, process_count=2)
    _global_batches([first, second], 2)
    assert sorted(first.get_state()["streams"]) == ["0", "1"]
    assert sorted(second.get_state()["streams"]) == ["2", "3"]

    single = _iterators(manifest, num_streams=4, process_count=1)[0]
    with pytest.raises(ValueError, match=r"lacks streams \[0, 1\].*merge_stream_states"):
        single.set_state(second.get_state())
    with pytest.raises(ValueError, match="saved with num_streams=2.*data.num_streams=4"):
        single.set_state({"num_streams": 2, "streams": first.get_state()["streams"]})

    with pytest.raises(ValueError, match="disagree on num_streams"):
        streams.merge_stream_states([first.get_state(), {"num_streams": 2, "streams": {}}])
    moved_on = _iterators(manifest, num_streams=4, process_count=2)[0]
    with pytest.raises(ValueError, match="Data stream 0 has two different states"):
        streams.merge_stream_states([first.get_state(), moved_on.get_state()])


@pytest.mark.parametrize(
    ("num_streams", "process_count", "batch_size_per_process", "message"),
    [
        (3, 2, 6, r"data.num_streams=3 is not a positive multiple of the data-loading process "),
        (0, 1, 4, "data.num_streams=0 is not a positive multiple"),
        (8, 2, 2, r"global batch of 4 rows .* does not split into data.num_streams=8"),
        (4, 2, 3, r"global batch of 6 rows .* does not split into data.num_streams=4"),
    ],
)
def test_bad_stream_counts_are_clear_errors(
    manifest, num_streams, process_count, batch_size_per_process, message
):
    with pytest.raises(ValueError, match=message):
        _iterators(
            manifest,
            num_streams=num_streams,
            process_count=process_count,
            batch_size_per_process=batch_size_per_process,
        )


def test_more_streams_than_documents_is_a_clear_error(tmp_path):
    tiny = _write_prepared(tmp_path / "tiny", {"train": 3, "validation": 1})
    with pytest.raises(ValueError, match=r"Data stream 3 of 4 gets no documents.*num_streams"):
        _iterators(tiny, num_streams=4, process_count=1)
