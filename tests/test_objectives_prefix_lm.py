"""Prefix LM: windows, the random split point, masks and loss, settings checks."""

import ml_collections
import numpy as np
import pytest

from jaxpretrain import config as config_lib
from jaxpretrain.objectives import prefix_lm
from jaxpretrain.tokenizer import SpecialIds

SPECIAL = SpecialIds(pad=0, eos=1, bos=2, unk=3, mask=4, sentinels=tuple(range(107, 7, -1)))
SEED = 99


def settings(**overrides) -> ml_collections.FrozenConfigDict:
    objective = config_lib.default_config().objective
    objective.name = "prefix_lm"
    for key, value in overrides.items():
        objective[key] = value
    return ml_collections.FrozenConfigDict(objective)


def examples_of(doc, *, epoch=0, seq_len=128, **overrides):
    """make_examples with a generator seeded as the pipeline seeds it."""
    rng = np.random.default_rng([SEED, epoch, 0])
    return prefix_lm.make_examples(
        np.asarray(doc, np.int32),
        rng,
        seq_len=seq_len,
        special_ids=SPECIAL,
        settings=settings(**overrides),
    )


def prefix_length_of(example) -> int:
    """bos and the prefix are the bidirectional positions."""
    return int(example["bidirectional"].sum()) - 1


def assert_is_split_of(example, window: np.ndarray) -> None:
    """The example is window split after its prefix: masks, loss and tokens as T5X's prefix LM."""
    p = prefix_length_of(example)
    positions = np.arange(len(window))
    assert len(example["inputs"]) == len(window)
    np.testing.assert_array_equal(example["inputs"], np.concatenate([[SPECIAL.bos], window[:-1]]))
    np.testing.assert_array_equal(example["targets"], window)
    # bos + prefix bidirectional, the target causal; loss on the target tokens only.
    np.testing.assert_array_equal(example["bidirectional"], positions <= p)
    np.testing.assert_array_equal(example["loss_weights"], positions >= p)
    np.testing.assert_array_equal(example["targets"][example["loss_weights"] > 0], window[p:])
    # No position with loss sees (bidirectionally) the token it predicts.
    assert not set(window[p:].tolist()) & set(example["inputs"][example["bidirectional"] == 1])


@pytest.mark.parametrize("doc_length", [0, 1, 6, 7, 8, 20])
def test_windows_reconstruct_the_document(doc_length):
    doc = np.arange(200, 200 + doc_length)
    tokens = np.concatenate([doc, [SPECIAL.eos]])
    examples = examples_of(doc, seq_len=7)
    assert len(examples) == -(-len(tokens) // 7)
    for index, example in enumerate(examples):
        assert_is_split_of(example, tokens[7 * index : 7 * index + 7])
        assert example["loss_weights"].dtype == np.float32
        assert example["inputs"].dtype == example["bidirectional"].dtype == np.int32
    np.testing.assert_array_equal(np.concatenate([e["targets"] for e in examples]), tokens)


def test_split_point_lies_in_the_fraction_range_over_many_draws():
    doc = np.arange(300, 399)  # with eos: one window of 100 tokens
    low, high, width, draws = 0.1, 0.9, 100, 2000
    lengths = []
    for epoch in range(draws):
        (example,) = examples_of(
            doc, epoch=epoch, prefix_min_fraction=low, prefix_max_fraction=high
        )
        assert_is_split_of(example, np.concatenate([doc, [SPECIAL.eos]]))
        lengths.append(prefix_length_of(example))
    lengths = np.array(lengths)
    assert lengths.min() >= round(low * width) and lengths.max() <= round(high * width)
    # The whole range is used (uniform over 81 values: each end is hit ~25 times)...
    assert lengths.min() <= round(low * width) + 2 and lengths.max() >= round(high * width) - 2
    # ... with the uniform's mean, within 5 standard deviations.
    sd_of_mean = width * (high - low) / np.sqrt(12) / np.sqrt(draws)
    assert abs(lengths.mean() - width * (low + high) / 2) <= 5 * sd_of_mean
    # ... and both halves equally often (binomial, 5 sd).
    below = int(np.sum(lengths < width * (low + high) / 2))
    assert abs(below - draws / 2) <= 5 * np.sqrt(draws / 4)


@pytest.mark.parametrize(
    ("width", "low", "high", "expected"),
    [
        (10, 0.5, 0.5, {5}),
        (10, 0.0, 0.0, {0}),  # empty prefix: causal LM from bos
        (10, 0.95, 0.99, {9}),  # round(9.5..9.9) = 10, capped so one target token remains
        (1, 0.1, 0.9, {0}),  # a one-token window is target only
        (2, 0.6, 0.9, {1}),
    ],
)
def test_split_window_rounds_and_keeps_one_target_token(width, low, high, expected):
    window = np.arange(500, 500 + width)
    seen = set()
    for seed in range(50):
        example = prefix_lm.split_window(window, np.random.default_rng(seed), low, high, SPECIAL)
        assert_is_split_of(example, window)
        seen.add(prefix_length_of(example))
    assert seen == expected


def test_splits_are_deterministic_per_epoch_and_change_between_epochs():
    doc = np.arange(300, 600)  # three windows of 128 and one of 45 at seq_len 128

    def splits(epoch):
        return [prefix_length_of(e) for e in examples_of(doc, epoch=epoch)]

    assert splits(4) == splits(4)
    assert splits(0) != splits(1)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"prefix_min_fraction": -0.1},
            r"^objective\.prefix_min_fraction=-0\.1 must be in \[0, 1\)",
        ),
        ({"prefix_max_fraction": 1.0}, r"^objective\.prefix_max_fraction=1\.0 must be in \[0, 1\)"),
        (
            {"prefix_min_fraction": 0.6, "prefix_max_fraction": 0.4},
            r"^objective\.prefix_min_fraction=0\.6 must be <= objective\.prefix_max_fraction=0\.4",
        ),
    ],
)
def test_check_settings_names_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        prefix_lm.check_settings(settings(**overrides), seq_len=128)


@pytest.mark.parametrize(("low", "high"), [(0.1, 0.9), (0.0, 0.0), (0.5, 0.5), (0.0, 0.99)])
def test_check_settings_accepts_the_allowed_range(low, high):
    prefix_lm.check_settings(
        settings(prefix_min_fraction=low, prefix_max_fraction=high), seq_len=128
    )
