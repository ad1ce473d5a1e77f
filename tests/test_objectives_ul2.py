"""UL2's mixture of denoisers on hand-made sequences: mixture rates, paradigm tokens, windows."""

import ml_collections
import numpy as np
import pytest

from jaxpretrain import config as config_lib
from jaxpretrain.objectives import span_corruption as sc
from jaxpretrain.objectives import ul2
from jaxpretrain.tokenizer import SpecialIds

SPECIAL = SpecialIds(pad=0, eos=1, bos=2, unk=3, mask=4, sentinels=tuple(range(107, 7, -1)))
FIRST_DOC_ID = 10_000  # document token ids lie above every special id
PARADIGM_FAMILY = dict(zip(SPECIAL.paradigms, ul2.FAMILIES, strict=True))  # [NLU] -> "R", ...


def settings(**overrides) -> ml_collections.FrozenConfigDict:
    objective = config_lib.default_config().objective
    for key, value in overrides.items():
        objective[key] = value
    return ml_collections.FrozenConfigDict(objective)


def document(length: int) -> np.ndarray:
    return np.arange(FIRST_DOC_ID, FIRST_DOC_ID + length, dtype=np.int32)


def parts(example: dict[str, np.ndarray]) -> tuple[int, np.ndarray, np.ndarray]:
    """(paradigm token, inputs, targets) of a UL2 row, the eos of each checked and removed."""
    assert example["inputs"][0] == SPECIAL.bos
    weighted = example["loss_weights"] > 0
    inputs, targets = example["targets"][~weighted], example["targets"][weighted]
    assert inputs[-1] == targets[-1] == SPECIAL.eos
    return int(inputs[0]), inputs[1:-1], targets[:-1]


def reconstruct(inputs, targets) -> list[int]:
    """The inverse of span corruption (no eos): every sentinel in inputs becomes its span."""
    sentinels = set(SPECIAL.sentinels)
    spans, current = {}, None
    for token in targets.tolist():
        if token in sentinels:
            current = spans.setdefault(token, [])
        else:
            current.append(token)
    in_inputs = [t for t in inputs.tolist() if t in sentinels]
    assert in_inputs == list(spans)[: len(in_inputs)]
    return [
        t for token in inputs.tolist() for t in (spans[token] if token in sentinels else [token])
    ]


def window_of(example: dict[str, np.ndarray]) -> list[int]:
    """The document window an example was made from (S: prefix + target; R, X: reconstructed)."""
    paradigm, inputs, targets = parts(example)
    if PARADIGM_FAMILY[paradigm] == "S":
        return inputs.tolist() + targets.tolist()
    return reconstruct(inputs, targets)


def test_denoisers_are_ul2s_seven():
    spans = [(d.family, d.mean_noise_span_length, d.noise_density) for d in ul2.DENOISERS]
    assert spans == [
        ("R", 3.0, 0.15),
        ("R", 8.0, 0.15),
        ("X", 3.0, 0.5),
        ("X", 8.0, 0.5),
        ("X", 64.0, 0.15),
        ("X", 64.0, 0.5),
        ("S", None, None),
    ]


@pytest.mark.parametrize("rates", [(0.4, 0.4, 0.2), (1.0, 2.0, 1.0), (0.0, 1.0, 3.0)])
def test_denoiser_frequencies_match_the_rates(rates):
    objective_settings = settings(ul2_r_rate=rates[0], ul2_x_rate=rates[1], ul2_s_rate=rates[2])
    family_p = dict(zip(ul2.FAMILIES, np.array(rates) / sum(rates), strict=True))
    # A 200-token document is one window for every denoiser at seq_len 512, and each span
    # denoiser leaves a distinct number of target tokens there: the row names its denoiser.
    doc_length, seq_len = 200, 512
    span_targets = {}
    for index, denoiser in enumerate(ul2.DENOISERS):
        assert ul2.window_length(denoiser, seq_len, len(SPECIAL.sentinels)) >= doc_length
        if denoiser.family != "S":
            noise, spans = sc.noise_span_counts(
                doc_length, denoiser.noise_density, denoiser.mean_noise_span_length
            )
            span_targets[noise + spans] = index
    assert len(span_targets) == 6
    draws = 3000
    counts = np.zeros(len(ul2.DENOISERS), int)
    for seed in range(draws):
        (example,) = ul2.make_examples(
            document(doc_length),
            np.random.default_rng(seed),
            seq_len=seq_len,
            special_ids=SPECIAL,
            settings=objective_settings,
        )
        paradigm, _, targets = parts(example)
        family = PARADIGM_FAMILY[paradigm]
        index = len(ul2.DENOISERS) - 1 if family == "S" else span_targets[len(targets)]
        assert ul2.DENOISERS[index].family == family  # the paradigm token names the family
        counts[index] += 1
    expected_p = np.array(
        [
            family_p[d.family] / sum(e.family == d.family for e in ul2.DENOISERS)
            for d in ul2.DENOISERS
        ]
    )
    np.testing.assert_allclose(ul2.denoiser_probabilities(objective_settings), expected_p)
    families = np.array([d.family for d in ul2.DENOISERS])
    for family in ul2.FAMILIES:  # family frequencies, then each denoiser within its family
        p = family_p[family]
        count = counts[families == family].sum()
        assert abs(count - draws * p) <= 5 * np.sqrt(draws * p * (1 - p)) + 1e-9, (family, counts)
    for count, p in zip(counts, expected_p, strict=True):
        assert abs(count - draws * p) <= 5 * np.sqrt(draws * p * (1 - p)) + 1e-9, counts


@pytest.mark.parametrize("doc_length", [1, 2, 3, 10, 300, 2000])
def test_examples_rebuild_the_document_in_order(doc_length):
    doc = document(doc_length).tolist()
    for seed in range(10):
        examples = ul2.make_examples(
            document(doc_length),
            np.random.default_rng(seed),
            seq_len=128,
            special_ids=SPECIAL,
            settings=settings(),
        )
        rebuilt = [t for example in examples for t in window_of(example)]
        assert rebuilt == doc


def test_s_examples_split_within_the_fraction_range():
    objective_settings = settings(
        ul2_r_rate=0.0,
        ul2_x_rate=0.0,
        ul2_s_rate=1.0,
        prefix_min_fraction=0.3,
        prefix_max_fraction=0.6,
    )
    seq_len = 64
    fractions = []
    for seed in range(200):
        examples = ul2.make_examples(
            document(150),
            np.random.default_rng(seed),
            seq_len=seq_len,
            special_ids=SPECIAL,
            settings=objective_settings,
        )
        # Windows of seq_len - 3 tokens: [S2S] + prefix + eos, target + eos fill the row.
        assert [len(window_of(e)) for e in examples] == [61, 61, 28]
        assert len(examples[0]["inputs"]) == seq_len
        for example in examples:
            paradigm, prefix, target = parts(example)
            assert paradigm == SPECIAL.paradigms[2]
            window = len(prefix) + len(target)
            assert 0.3 * window - 0.5 <= len(prefix) <= 0.6 * window + 0.5
            assert len(target) >= 1
            fractions.append(len(prefix) / window)
            # bos, [S2S], the prefix and its eos see each other; the target is causal.
            assert example["bidirectional"].sum() == len(prefix) + 3
    assert min(fractions) < 0.35 and max(fractions) > 0.55  # the range is used, not one point


@pytest.mark.parametrize("seq_len", [7, 8, 12, 16, 33, 64, 128, 256, 1024, 4096])
def test_every_example_fits_the_row_and_the_sentinels(seq_len):
    for doc_length in [1, 2, 3, 7, 50, 3000]:
        examples = ul2.make_examples(
            document(doc_length),
            np.random.default_rng(doc_length),
            seq_len=seq_len,
            special_ids=SPECIAL,
            settings=settings(),
        )
        for example in examples:
            assert 1 <= len(example["inputs"]) <= seq_len
            _, inputs, _ = parts(example)
            assert np.isin(inputs, SPECIAL.sentinels).sum() <= len(SPECIAL.sentinels)


def test_dense_windows_fill_rows_at_long_seq_len():
    # X(mu=3, r=0.5) at 4096 positions would need ~340 sentinels for a row-long window: its
    # windows shrink so that six examples fill a row.
    lengths = sc.lengths_for_row(4096, 0.5, 3.0, extra_tokens=1)
    assert lengths.examples_per_row == 6
    assert 6 * (1 + lengths.inputs_length + lengths.targets_length) <= 4096
    assert ul2.window_length(ul2.DENOISERS[2], 4096, 100) == lengths.tokens_length


def test_longest_sparsest_denoiser_works_on_short_windows():
    denoiser = ul2.DENOISERS[5]
    assert (denoiser.mean_noise_span_length, denoiser.noise_density) == (64.0, 0.5)
    rng = np.random.default_rng(0)
    for length in range(1, 40):
        example = ul2.denoise_window(
            document(length),
            denoiser,
            rng,
            special_ids=SPECIAL,
            prefix_min_fraction=0.1,
            prefix_max_fraction=0.9,
        )
        paradigm, inputs, targets = parts(example)
        assert paradigm == SPECIAL.paradigms[1]
        # One span: a mean of 64 rounds to at least one span however short the window.
        assert np.isin(targets, SPECIAL.sentinels).sum() == 1
        assert reconstruct(inputs, targets) == document(length).tolist()


def test_same_seed_same_examples_other_epoch_other_examples():
    def row(seed):
        examples = ul2.make_examples(
            document(2000),
            np.random.default_rng(seed),
            seq_len=256,
            special_ids=SPECIAL,
            settings=settings(),
        )
        return np.concatenate([e["inputs"] for e in examples])

    np.testing.assert_array_equal(row(5), row(5))
    assert not np.array_equal(row(5), row(6))


@pytest.mark.parametrize(
    "overrides, seq_len, message",
    [
        ({"ul2_r_rate": -0.1}, 256, r"^objective\.ul2_r_rate=-0\.1 must be a finite number >= 0"),
        ({"ul2_s_rate": float("nan")}, 256, r"^objective\.ul2_s_rate=nan "),
        (
            {"ul2_r_rate": 0.0, "ul2_x_rate": 0.0, "ul2_s_rate": 0.0},
            256,
            r"^objective\.ul2_r_rate=0\.0, ul2_x_rate=0\.0 and ul2_s_rate=0\.0 are all 0",
        ),
        ({"prefix_min_fraction": -0.1}, 256, r"^objective\.prefix_min_fraction=-0\.1 "),
        ({"prefix_max_fraction": 1.0}, 256, r"^objective\.prefix_max_fraction=1\.0 "),
        (
            {"prefix_min_fraction": 0.8, "prefix_max_fraction": 0.2},
            256,
            r"^objective\.prefix_min_fraction=0\.8 must be <= objective\.prefix_max_fraction",
        ),
        ({}, 6, r"^train\.seq_len=6 is too short for UL2's R\(mu=3, r=0\.15\) denoiser"),
    ],
)
def test_check_settings_names_the_key(overrides, seq_len, message):
    with pytest.raises(ValueError, match=message):
        ul2.check_settings(settings(**overrides), seq_len)


def test_check_settings_accepts_defaults_and_the_smallest_seq_len():
    ul2.check_settings(settings(), 7)
    ul2.check_settings(settings(), 4096)
