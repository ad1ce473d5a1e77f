"""T5 span corruption on hand-made sequences: counts, spans, sentinels, lengths and rows."""

import ml_collections
import numpy as np
import pytest

from jaxpretrain import config as config_lib
from jaxpretrain.objectives import span_corruption as sc
from jaxpretrain.tokenizer import SpecialIds

SPECIAL = SpecialIds(pad=0, eos=1, bos=2, unk=3, mask=4, sentinels=tuple(range(107, 7, -1)))
# Enough sentinels for T5's longest windows here (inputs 2048 at density 0.5: 512 spans).
MANY_SENTINELS = SpecialIds(
    pad=0, eos=1, bos=2, unk=3, mask=4, sentinels=tuple(range(4999, 3999, -1))
)
FIRST_DOC_ID = 10_000  # document token ids lie above every special id


def settings(**overrides) -> ml_collections.FrozenConfigDict:
    objective = config_lib.default_config().objective
    for key, value in overrides.items():
        objective[key] = value
    return ml_collections.FrozenConfigDict(objective)


def document(length: int) -> np.ndarray:
    return np.arange(FIRST_DOC_ID, FIRST_DOC_ID + length, dtype=np.int32)


def runs(mask: np.ndarray) -> list[tuple[bool, int]]:
    """(value, length) of each run of equal values, in order."""
    starts = np.flatnonzero(np.diff(mask.astype(int))) + 1
    bounds = [0, *starts.tolist(), len(mask)]
    return [(bool(mask[a]), b - a) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def reconstruct(inputs, targets, special_ids: SpecialIds) -> list[int]:
    """The inverse of span corruption (no eos): every sentinel in inputs becomes its span."""
    sentinels = set(special_ids.sentinels)
    spans, current = {}, None
    for token in targets:
        if token in sentinels:
            current = spans.setdefault(int(token), [])
        else:
            current.append(int(token))
    in_inputs = [t for t in inputs if t in sentinels]
    assert in_inputs == list(spans)[: len(in_inputs)]  # same sentinels, same order
    # Only a one-token window (masked as two and cut back, as T5 does) leaves a sentinel in
    # the targets with no span and none in the inputs.
    assert all(not spans[t] for t in list(spans)[len(in_inputs) :])
    return [t for token in inputs for t in (spans[token] if token in sentinels else [token])]


def split_row(example: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of a prefix_target_example row: the unweighted and weighted targets."""
    weighted = example["loss_weights"] > 0
    return example["targets"][~weighted], example["targets"][weighted]


def test_random_spans_helper_gives_t5s_lengths_for_512():
    assert sc.random_spans_helper(512, 0.15, 3.0) == (568, 114)


@pytest.mark.parametrize("noise_density", [0.15, 0.5])
@pytest.mark.parametrize("inputs_length", [128, 256, 512, 1024, 2048])
def test_lengths_equal_random_spans_helper(inputs_length, noise_density):
    tokens_length, targets_length = sc.random_spans_helper(inputs_length, noise_density, 3.0)
    for seed in range(3):
        inputs, targets = sc.corrupt_spans(
            document(tokens_length),
            np.random.default_rng(seed),
            noise_density,
            3.0,
            MANY_SENTINELS,
        )
        assert (len(inputs), len(targets)) == (inputs_length, targets_length)
    # The objective, given T5's row of inputs + targets positions, cuts T5's raw windows.
    seq_len = inputs_length + targets_length
    assert sc.lengths_for_row(seq_len, noise_density, 3.0, max_noise_spans=1000) == (
        tokens_length,
        inputs_length,
        targets_length,
        1,
    )
    examples = sc.make_examples(
        document(tokens_length + 5),  # a full window and a short tail
        np.random.default_rng(0),
        seq_len=seq_len,
        special_ids=MANY_SENTINELS,
        settings=settings(noise_density=noise_density),
    )
    inputs, targets = split_row(examples[0])
    assert (len(inputs), len(targets)) == (inputs_length, targets_length)


@pytest.mark.parametrize(
    "length, noise_density, mean_span, num_noise, num_spans",
    [
        (568, 0.15, 3.0, 85, 28),
        # T5 rounds in float32 (190 * 0.15 = 28.5000001 -> 29; float64 would give 28) ...
        (190, 0.15, 3.0, 29, 10),
        # ... and half to even: 10 * 0.15 = 1.5 -> 2, 30 * 0.15 = 4.5 -> 4, 500 / 8 -> 62.
        (10, 0.15, 3.0, 2, 1),
        (30, 0.15, 3.0, 4, 1),
        (1000, 0.5, 8.0, 500, 62),
        # Clipping: at least one noise token, one non-noise token and one span.
        (2, 0.15, 3.0, 1, 1),
        (3, 0.5, 3.0, 2, 1),
        (20, 0.5, 64.0, 10, 1),
        (4, 0.01, 3.0, 1, 1),
    ],
)
def test_noise_mask_has_t5s_counts_and_interleaves_from_non_noise(
    length, noise_density, mean_span, num_noise, num_spans
):
    assert sc.noise_span_counts(length, noise_density, mean_span) == (num_noise, num_spans)
    for seed in range(20):
        mask = sc.random_spans_noise_mask(
            length, np.random.default_rng(seed), noise_density, mean_span
        )
        assert mask.dtype == bool and mask.shape == (length,)
        assert mask.sum() == num_noise
        mask_runs = runs(mask)
        # Runs alternate by construction, so starting with non-noise and ending with noise
        # means the spans interleave non-noise, noise, ..., noise: num_spans of each.
        assert mask_runs[0][0] is False and mask_runs[-1][0] is True
        assert len(mask_runs) == 2 * num_spans


def test_one_token_window_is_masked_as_two_and_cut_back_like_t5():
    mask = sc.random_spans_noise_mask(1, np.random.default_rng(0), 0.15, 3.0)
    np.testing.assert_array_equal(mask, [False])
    inputs, targets = sc.corrupt_spans(document(1), np.random.default_rng(0), 0.15, 3.0, SPECIAL)
    np.testing.assert_array_equal(inputs, [FIRST_DOC_ID, SPECIAL.eos])
    np.testing.assert_array_equal(targets, [SPECIAL.sentinels[0], SPECIAL.eos])


def test_segmentation_is_uniform_over_compositions():
    # 5 items in 2 non-empty segments: first lengths 1..4, each with probability 1/4.
    rng = np.random.default_rng(0)
    draws = 4000
    firsts = [sc._random_segmentation(5, 2, rng)[0] for _ in range(draws)]
    counts = np.bincount(firsts, minlength=5)[1:]
    sigma = np.sqrt(draws * 0.25 * 0.75)
    assert np.all(np.abs(counts - draws / 4) < 5 * sigma), counts


def test_sentinels_decrease_from_the_first_in_inputs_and_targets():
    inputs, targets = sc.corrupt_spans(document(200), np.random.default_rng(1), 0.15, 3.0, SPECIAL)
    _, num_spans = sc.noise_span_counts(200, 0.15, 3.0)
    expected = list(SPECIAL.sentinels[:num_spans])
    assert expected == sorted(expected, reverse=True) and expected[0] == 107
    assert [t for t in inputs if t in SPECIAL.sentinels] == expected
    assert [t for t in targets if t in SPECIAL.sentinels] == expected
    assert targets[0] == SPECIAL.sentinels[0]  # targets open with the first span's sentinel
    assert inputs[-2] == SPECIAL.sentinels[num_spans - 1]  # the window ends with noise
    assert inputs[-1] == targets[-1] == SPECIAL.eos


@pytest.mark.parametrize("doc_length", [1, 2, 3, 5, 17, 100, 141, 142, 500])
def test_examples_reconstruct_the_document_and_fit_the_row(doc_length):
    seq_len = 128
    doc = document(doc_length)
    rebuilt = []
    for seed in range(5):
        examples = sc.make_examples(
            doc,
            np.random.default_rng(seed),
            seq_len=seq_len,
            special_ids=SPECIAL,
            settings=settings(),
        )
        rebuilt = []
        for example in examples:
            assert 1 <= len(example["inputs"]) <= seq_len
            inputs, targets = split_row(example)
            assert inputs[-1] == targets[-1] == SPECIAL.eos
            rebuilt += reconstruct(inputs[:-1].tolist(), targets[:-1].tolist(), SPECIAL)
        assert rebuilt == doc.tolist()


def test_row_has_loss_on_targets_and_bidirectional_inputs():
    doc = document(60)
    (example,) = sc.make_examples(
        doc, np.random.default_rng(7), seq_len=128, special_ids=SPECIAL, settings=settings()
    )
    # make_examples draws nothing but the mask, so the same seed gives the same corruption.
    inputs, targets = sc.corrupt_spans(doc, np.random.default_rng(7), 0.15, 3.0, SPECIAL)
    length = len(inputs) + len(targets)
    np.testing.assert_array_equal(
        example["inputs"], np.concatenate([[SPECIAL.bos], inputs, targets[:-1]])
    )
    np.testing.assert_array_equal(example["targets"], np.concatenate([inputs, targets]))
    # Loss exactly on the positions that predict a target token, none on the inputs.
    np.testing.assert_array_equal(example["loss_weights"], np.arange(length) >= len(inputs))
    # bos and the inputs see each other both ways; positions feeding target tokens are causal.
    np.testing.assert_array_equal(example["bidirectional"], np.arange(length) <= len(inputs))
    assert example["loss_weights"].dtype == np.float32
    assert example["inputs"].dtype == example["targets"].dtype == np.int32
    assert example["bidirectional"].dtype == np.int32


def test_same_seed_same_examples_other_epoch_other_masks():
    def masks(seed):
        examples = sc.make_examples(
            document(1000),
            np.random.default_rng(seed),
            seq_len=256,
            special_ids=SPECIAL,
            settings=settings(),
        )
        return np.concatenate([e["inputs"] for e in examples])

    np.testing.assert_array_equal(masks(3), masks(3))
    assert not np.array_equal(masks(3), masks(4))


@pytest.mark.parametrize(
    "overrides, seq_len, message",
    [
        ({"noise_density": 1.2}, 256, r"^objective\.noise_density=1\.2 must be in \(0, 1\)"),
        ({"noise_density": 0.0}, 256, r"^objective\.noise_density=0\.0 "),
        ({"mean_noise_span_length": 0.5}, 256, r"^objective\.mean_noise_span_length=0\.5 "),
        ({}, 5, r"^train\.seq_len=5 is too short"),
    ],
)
def test_check_settings_names_the_key(overrides, seq_len, message):
    with pytest.raises(ValueError, match=message):
        sc.check_settings(settings(**overrides), seq_len)


def test_check_settings_accepts_the_smallest_seq_len_that_works():
    sc.check_settings(settings(), sc.min_seq_len(0.15, 3.0))
    examples = sc.make_examples(
        document(10), np.random.default_rng(0), seq_len=6, special_ids=SPECIAL, settings=settings()
    )
    assert [len(e["inputs"]) for e in examples] == [6] * 5


@pytest.mark.parametrize(
    "noise_density, mean_span", [(0.15, 3.0), (0.5, 3.0), (0.15, 64.0), (0.5, 64.0), (0.3, 1.0)]
)
def test_every_example_fits_the_row_and_the_sentinels(noise_density, mean_span):
    objective_settings = settings(noise_density=noise_density, mean_noise_span_length=mean_span)
    for seq_len in [*range(6, 200, 7), 1000]:
        examples = sc.make_examples(
            document(1500),
            np.random.default_rng(seq_len),
            seq_len=seq_len,
            special_ids=SPECIAL,
            settings=objective_settings,
        )
        for example in examples:
            assert len(example["inputs"]) <= seq_len
            inputs, _ = split_row(example)
            assert np.isin(inputs, SPECIAL.sentinels).sum() <= len(SPECIAL.sentinels)


def test_t5s_helper_overshoots_where_the_mask_clips_and_lengths_for_row_does_not():
    # Mean span 64 at inputs 128: T5's helper rounds 22/64 to 0 spans, the mask clips it to 1,
    # so the helper's 149-token window really gives 129 inputs. The row size stays exact here.
    tokens_length, targets_length = sc.random_spans_helper(128, 0.15, 64.0)
    assert (tokens_length, targets_length) == (149, 23)
    inputs, _ = sc.corrupt_spans(
        document(tokens_length), np.random.default_rng(0), 0.15, 64.0, SPECIAL
    )
    assert len(inputs) == 129
    lengths = sc.lengths_for_row(128 + 23, 0.15, 64.0)
    assert lengths.inputs_length + lengths.targets_length == 151
    assert lengths.tokens_length == 147  # 148 tokens would make 128 inputs + 24 targets


def test_windows_shrink_to_the_sentinels_and_fill_rows():
    # At 4096 positions a row-long window would need 186 sentinels: two windows per row instead.
    lengths = sc.lengths_for_row(4096, 0.15, 3.0)
    assert lengths == (1860, 1675, 373, 2)
    assert sc.noise_span_counts(1860, 0.15, 3.0)[1] <= 100
    examples = sc.make_examples(
        document(2 * 1860),
        np.random.default_rng(0),
        seq_len=4096,
        special_ids=SPECIAL,
        settings=settings(),
    )
    assert sum(len(e["inputs"]) for e in examples) == 4096


def test_more_spans_than_non_noise_tokens_are_capped_where_t5_fails():
    # 10 tokens at density 0.9, mean 1: 9 noise tokens in 9 spans would need 9 non-noise
    # tokens between them; there is 1, so there is 1 span.
    assert sc.noise_span_counts(10, 0.9, 1.0) == (9, 1)
    inputs, targets = sc.corrupt_spans(document(10), np.random.default_rng(0), 0.9, 1.0, SPECIAL)
    assert (
        reconstruct(inputs[:-1].tolist(), targets[:-1].tolist(), SPECIAL) == document(10).tolist()
    )


def test_running_out_of_sentinels_is_an_error_not_a_wrong_id():
    mask = np.tile([False, True], 101)
    with pytest.raises(ValueError, match="101 noise spans need 101 sentinels"):
        sc.noise_span_to_unique_sentinel(document(202), mask, SPECIAL.sentinels)
