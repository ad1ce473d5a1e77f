"""UL2's mixture of denoisers (Tay et al. 2022) on the decoder-only stack.

Denoisers (`DENOISERS`), by family, each family led by its paradigm token:
- R, [NLU] (`special_ids.paradigms[0]`): span corruption with (mean span, density) (3, 0.15)
  and (8, 0.15);
- X, [NLG] (`paradigms[1]`): (3, 0.5), (8, 0.5), (64, 0.15), (64, 0.5);
- S, [S2S] (`paradigms[2]`): prefix LM.

Mixture: every example draws its denoiser from `rng` (seeded by seed, epoch and document, so
the draws repeat exactly on resume): a family with probability proportional to
`objective.ul2_r_rate` / `ul2_x_rate` / `ul2_s_rate`, then one of the family's denoisers
uniformly (`denoiser_probabilities`). A document is consumed left to right: draw a denoiser,
take the next window of that denoiser's length, make its example, repeat; the last window may
be shorter.

Examples, in T5/UL2's (inputs, targets) form with the paradigm token prepended to the inputs
(UL2's `prepend_prompt`) and eos appended to both (T5's task features), then made a row by
`rows.prefix_target_example` (bos, paradigm and inputs bidirectional, targets causal, loss on
the targets):
- R and X: `span_corruption.corrupt_spans` (T5's noise mask and unique sentinels) on a window
  of `span_corruption.lengths_for_row(seq_len, density, mean span, extra_tokens=1)` tokens —
  the longest whose row, paradigm token included, fits seq_len and needs no more sentinels
  than the tokenizer has (dense denoisers at long seq_len get shorter windows, several to a
  row). A mean span longer than the window (mean 64 on a short document) yields one span.
- S: a window of `seq_len - 3` tokens split at p = min(round(u * w), w - 1), u uniform in
  [objective.prefix_min_fraction, prefix_max_fraction]; inputs = [S2S] + window[:p] + [eos],
  targets = window[p:] + [eos], a row of exactly w + 3 positions. (UL2's released code uses
  T5's `prefix_lm`, whose split is uniform over the whole window; the fraction range is this
  project's prefix-LM setting, shared with `objective.name="prefix_lm"`.)
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from jaxpretrain import tokenizer
from jaxpretrain.objectives import losses, prefix_lm, registry, rows, span_corruption
from jaxpretrain.tokenizer import SpecialIds

FAMILIES = ("R", "X", "S")  # family i is led by special_ids.paradigms[i]: [NLU], [NLG], [S2S]
# The S-denoiser adds its paradigm token and an eos after the inputs and one after the targets.
S_EXTRA_TOKENS = 3


@dataclasses.dataclass(frozen=True)
class Denoiser:
    """One denoiser; span settings are None for the S-denoiser (prefix LM)."""

    family: str
    mean_noise_span_length: float | None = None
    noise_density: float | None = None

    @property
    def name(self) -> str:
        if self.family == "S":
            return "S"
        return f"{self.family}(mu={self.mean_noise_span_length:g}, r={self.noise_density:g})"


DENOISERS = (
    Denoiser("R", 3.0, 0.15),
    Denoiser("R", 8.0, 0.15),
    Denoiser("X", 3.0, 0.5),
    Denoiser("X", 8.0, 0.5),
    Denoiser("X", 64.0, 0.15),
    Denoiser("X", 64.0, 0.5),
    Denoiser("S"),
)


def family_rates(settings: ml_collections.ConfigDict) -> dict[str, float]:
    """The configured (unnormalised) rate of each family."""
    return {
        "R": float(settings.ul2_r_rate),
        "X": float(settings.ul2_x_rate),
        "S": float(settings.ul2_s_rate),
    }


def denoiser_probabilities(settings: ml_collections.ConfigDict) -> np.ndarray:
    """float64 [len(DENOISERS)]: family rate (normalised) / number of denoisers in the family."""
    rates = family_rates(settings)
    total = sum(rates.values())
    family_sizes = {f: sum(d.family == f for d in DENOISERS) for f in FAMILIES}
    return np.array([rates[d.family] / total / family_sizes[d.family] for d in DENOISERS])


def window_length(denoiser: Denoiser, seq_len: int, num_sentinels: int) -> int:
    """Raw tokens per window of `denoiser` so that its example fits seq_len (module doc)."""
    if denoiser.family == "S":
        if seq_len - S_EXTRA_TOKENS < 2:
            raise ValueError(
                f"train.seq_len={seq_len} is too short for UL2's S-denoiser, which needs "
                f"{S_EXTRA_TOKENS + 2} positions; raise train.seq_len."
            )
        return seq_len - S_EXTRA_TOKENS
    return span_corruption.lengths_for_row(
        seq_len,
        denoiser.noise_density,
        denoiser.mean_noise_span_length,
        max_noise_spans=num_sentinels,
        extra_tokens=1,
    ).tokens_length


def denoise_window(
    window_ids: np.ndarray,
    denoiser: Denoiser,
    rng: np.random.Generator,
    *,
    special_ids: SpecialIds,
    prefix_min_fraction: float,
    prefix_max_fraction: float,
) -> dict[str, np.ndarray]:
    """One UL2 example (registry example dict) from one window with one denoiser.

    Args:
      window_ids: int token ids [w], w >= 1, at most `window_length(denoiser, ...)`.
      denoiser: one of `DENOISERS`.
      rng: draws the noise mask (R, X) or the split fraction (S).
      special_ids: paradigm tokens, sentinels, eos and bos.
      prefix_min_fraction, prefix_max_fraction: the S-denoiser's split range, in [0, 1).

    Returns:
      `rows.prefix_target_example([paradigm] + inputs + [eos], targets + [eos])`.
    """
    window_ids = np.asarray(window_ids, np.int32)
    if window_ids.size == 0:
        raise ValueError("denoise_window needs a window of at least one token.")
    paradigm = np.int32(special_ids.paradigms[FAMILIES.index(denoiser.family)])
    eos = np.int32(special_ids.eos)
    if denoiser.family == "S":
        split = prefix_lm.split_point(
            window_ids.size, rng, prefix_min_fraction, prefix_max_fraction
        )
        inputs = np.concatenate([[paradigm], window_ids[:split], [eos]])
        targets = np.append(window_ids[split:], eos)
    else:
        inputs, targets = span_corruption.corrupt_spans(
            window_ids,
            rng,
            denoiser.noise_density,
            denoiser.mean_noise_span_length,
            special_ids,
        )
        inputs = np.concatenate([[paradigm], inputs])
    return rows.prefix_target_example(inputs, targets, special_ids)


def make_examples(
    doc_ids: np.ndarray,
    rng: np.random.Generator,
    *,
    seq_len: int,
    special_ids: SpecialIds,
    settings: ml_collections.ConfigDict,
    vocab_size: int | None = None,
) -> list[dict[str, np.ndarray]]:
    """The document consumed window by window, each window's denoiser drawn from `rng`.

    Reads the `objective.ul2_*_rate` keys and the prefix fractions. Every example has at most
    seq_len positions; an empty document gives none.
    """
    del vocab_size  # only MLM draws ids that are not in the document
    probabilities = denoiser_probabilities(settings)
    lengths = [window_length(d, seq_len, len(special_ids.sentinels)) for d in DENOISERS]
    doc_ids = np.asarray(doc_ids, np.int32)
    examples = []
    start = 0
    while start < len(doc_ids):
        index = int(rng.choice(len(DENOISERS), p=probabilities))
        window = doc_ids[start : start + lengths[index]]
        examples.append(
            denoise_window(
                window,
                DENOISERS[index],
                rng,
                special_ids=special_ids,
                prefix_min_fraction=settings.prefix_min_fraction,
                prefix_max_fraction=settings.prefix_max_fraction,
            )
        )
        start += len(window)
    return examples


def check_settings(settings: ml_collections.ConfigDict, seq_len: int) -> None:
    """Raises ValueError unless the rates, the prefix fractions and seq_len suit every denoiser."""
    rates = family_rates(settings)
    for family, rate in rates.items():
        if not 0 <= rate < float("inf"):
            raise ValueError(
                f"objective.ul2_{family.lower()}_rate={rate} must be a finite number >= 0; it "
                f"is how often UL2 draws its {family}-denoisers (normalised over R, X and S)."
            )
    if sum(rates.values()) == 0:
        raise ValueError(
            f"objective.ul2_r_rate={rates['R']}, ul2_x_rate={rates['X']} and ul2_s_rate="
            f"{rates['S']} are all 0; give at least one denoiser family a positive rate."
        )
    prefix_lm.check_settings(settings, seq_len)  # the S-denoiser's split range
    for denoiser in DENOISERS:
        if denoiser.family == "S":
            needed = S_EXTRA_TOKENS + 2
        else:
            needed = span_corruption.min_seq_len(
                denoiser.noise_density, denoiser.mean_noise_span_length, extra_tokens=1
            )
        if seq_len < needed:
            raise ValueError(
                f"train.seq_len={seq_len} is too short for UL2's {denoiser.name} denoiser, whose "
                f"smallest example has {needed} positions; raise train.seq_len."
            )
        window_length(denoiser, seq_len, tokenizer.NUM_SENTINELS)


UL2 = registry.register(
    registry.Objective(
        name="ul2",
        make_examples=make_examples,
        loss=losses.weighted_cross_entropy,
        check_settings=check_settings,
        predicts_text=False,
    )
)
