"""MLM: windows, selection rate, the 80/10/10 split (binomial tolerances), dynamic masking."""

import ml_collections
import numpy as np
import pytest

from jaxpretrain import config as config_lib
from jaxpretrain import tokenizer
from jaxpretrain.objectives import mlm
from jaxpretrain.tokenizer import SpecialIds

SPECIAL = SpecialIds(pad=0, eos=1, bos=2, unk=3, mask=4, sentinels=tuple(range(107, 7, -1)))
FIRST_REGULAR = tokenizer.NUM_RESERVED_IDS - tokenizer.NUM_BYTE_PIECES
SEED = 1234
VOCAB_SIZE = 4096  # the tokenizer vocabulary random replacements are drawn from


def settings(**overrides) -> ml_collections.FrozenConfigDict:
    objective = config_lib.default_config().objective
    objective.name = "mlm"
    for key, value in overrides.items():
        objective[key] = value
    return ml_collections.FrozenConfigDict(objective)


def examples_of(doc, *, epoch=0, document=0, seq_len=64, **overrides):
    """make_examples with a generator seeded as the pipeline seeds it."""
    rng = np.random.default_rng([SEED, epoch, document])
    return mlm.make_examples(
        np.asarray(doc, np.int32),
        rng,
        seq_len=seq_len,
        special_ids=SPECIAL,
        settings=settings(**overrides),
        vocab_size=VOCAB_SIZE,
    )


def assert_within_binomial(count: int, trials: int, p: float, what: str) -> None:
    """count ~ Binomial(trials, p): within 5 standard deviations of its expectation."""
    expected, sd = trials * p, np.sqrt(trials * p * (1 - p))
    assert abs(count - expected) <= 5 * sd, (what, count, expected, sd)


def test_first_regular_id_is_the_first_byte_piece():
    assert SPECIAL.first_regular_id == FIRST_REGULAR == 108


@pytest.mark.parametrize("doc_length", [0, 1, 5, 6, 7, 8, 20])
def test_windows_cover_the_document_once(doc_length):
    doc = np.arange(200, 200 + doc_length)
    examples = examples_of(doc, seq_len=8)
    tokens = np.concatenate([[SPECIAL.bos], doc, [SPECIAL.eos]])
    if len(tokens) % 8 == 1 or doc_length == 0:
        tokens = tokens[:-1]  # a lone trailing eos window (or an empty document) has no loss
    if doc_length == 0:
        assert examples == []
        return
    np.testing.assert_array_equal(np.concatenate([e["targets"] for e in examples]), tokens)
    for example in examples:
        assert set(example) == {"inputs", "targets", "loss_weights", "bidirectional"}
        assert 1 <= len(example["inputs"]) <= 8
        assert example["inputs"].dtype == example["targets"].dtype == np.int32
        assert example["loss_weights"].dtype == np.float32
        np.testing.assert_array_equal(example["bidirectional"], 1)
        assert example["loss_weights"].sum() >= 1  # every example has a loss


def test_selection_rate_and_80_10_10_split_over_many_draws():
    """62 distinct tokens per window: selection is floor(9.3 + u), corruption 80/10/10."""
    doc = np.arange(200, 262)
    n, draws, p = len(doc), 2000, 0.15
    counts, per_position = [], np.zeros(n + 2)
    masked = unchanged = replaced = 0
    for epoch in range(draws):
        (example,) = examples_of(doc, epoch=epoch)
        selected = example["loss_weights"] > 0
        counts.append(int(selected.sum()))
        per_position += selected
        inputs, targets = example["inputs"][selected], example["targets"][selected]
        masked += int(np.sum(inputs == SPECIAL.mask))
        unchanged += int(np.sum(inputs == targets))
        replaced += int(np.sum((inputs != targets) & (inputs != SPECIAL.mask)))
    # Exactly floor(p * n + u) per window: 9 or 10, with mean p * n (a Bernoulli(0.3) on top of 9).
    assert set(counts) <= {9, 10}
    assert_within_binomial(sum(counts) - 9 * draws, draws, p * n - 9, "selection count")
    # Every non-special position is selected at rate p (no position favoured); bos/eos never.
    assert per_position[0] == per_position[-1] == 0
    for position in range(1, n + 1):
        assert_within_binomial(int(per_position[position]), draws, p * n / n, f"pos {position}")
    total = sum(counts)
    # A random replacement is uniform over the vocabulary's non-special ids: the original with
    # probability 1 / (VOCAB_SIZE - FIRST_REGULAR).
    hit = 1 / (VOCAB_SIZE - FIRST_REGULAR)
    assert_within_binomial(masked, total, 0.8, "mask")
    assert_within_binomial(unchanged, total, 0.1 + 0.1 * hit, "unchanged")
    assert_within_binomial(replaced, total, 0.1 * (1 - hit), "random")


@pytest.mark.parametrize("mask_prob", [0.05, 0.3, 0.6])
def test_selection_rate_follows_mask_prob(mask_prob):
    doc = np.arange(300, 340)  # 40 non-special tokens in one window
    draws = 500
    total = sum(
        int(examples_of(doc, epoch=epoch, mask_prob=mask_prob)[0]["loss_weights"].sum())
        for epoch in range(draws)
    )
    base = int(np.floor(mask_prob * 40))
    # floor(p * n + u) = base + Bernoulli(frac(p * n)).
    assert_within_binomial(total - base * draws, draws, mask_prob * 40 - base, "selection")


def test_special_tokens_are_never_selected_nor_drawn_as_replacements():
    # Three distinct regular ids, between unk tokens (which a document should not hold, but a
    # special id inside one must still never be selected); replacements come from the whole
    # vocabulary's non-special ids, never a special one.
    doc = np.array([SPECIAL.unk, 500, 501, SPECIAL.unk, 502, 500, 500, SPECIAL.unk] * 4)
    regular = {500, 501, 502}
    replacements = set()
    for epoch in range(300):
        for example in examples_of(doc, epoch=epoch, seq_len=16, mask_prob=0.5):
            selected = example["loss_weights"] > 0
            np.testing.assert_array_equal(np.unique(example["loss_weights"]), [0.0, 1.0])
            assert set(example["targets"][selected].tolist()) <= regular
            # Loss exactly on the selected positions: every change is selected ...
            changed = example["inputs"] != example["targets"]
            assert not np.any(changed & ~selected)
            # ... and a change is either the mask or a non-special id of the vocabulary.
            new_ids = example["inputs"][changed & (example["inputs"] != SPECIAL.mask)]
            assert all(FIRST_REGULAR <= i < VOCAB_SIZE for i in new_ids.tolist())
            replacements |= set(new_ids.tolist())
    # The draw really reaches beyond the document's own tokens, over the vocabulary.
    assert len(replacements - regular) > 50


def test_targets_are_the_original_window():
    doc = np.arange(150, 190)
    (example,) = examples_of(doc)
    np.testing.assert_array_equal(example["targets"], np.concatenate([[2], doc, [1]]))


def test_masks_are_deterministic_per_epoch_and_change_between_epochs():
    doc = np.arange(200, 300)

    def masks(epoch):
        return [(e["inputs"], e["loss_weights"]) for e in examples_of(doc, epoch=epoch)]

    for (inputs_a, weights_a), (inputs_b, weights_b) in zip(masks(3), masks(3), strict=True):
        np.testing.assert_array_equal(inputs_a, inputs_b)
        np.testing.assert_array_equal(weights_a, weights_b)
    first, second = masks(0), masks(1)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(first, second, strict=True))


def test_short_window_still_selects_one_token():
    # One regular token: floor(0.15 + u) is usually 0, but every example needs a loss.
    for epoch in range(20):
        (example,) = examples_of([400], epoch=epoch)
        np.testing.assert_array_equal(example["loss_weights"], [0, 1, 0])


@pytest.mark.parametrize("mask_prob", [0.0, 1.0, 1.5, -0.1])
def test_check_settings_rejects_mask_prob_outside_the_open_interval(mask_prob):
    with pytest.raises(ValueError, match=rf"^objective\.mask_prob={mask_prob} must be in \(0, 1\)"):
        mlm.check_settings(settings(mask_prob=mask_prob), seq_len=64)
    mlm.check_settings(settings(), seq_len=64)  # the default passes


def test_config_validate_names_the_key():
    config = config_lib.default_config()
    config.train.batch_size, config.train.seq_len, config.model.max_seq_len = 8, 64, 128
    config.objective.name, config.objective.mask_prob = "mlm", 1.5
    with pytest.raises(config_lib.ConfigError, match=r"config key objective\.mask_prob=1\.5"):
        config_lib.validate(config, num_devices=8)
