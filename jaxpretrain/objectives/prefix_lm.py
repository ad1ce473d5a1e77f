"""Prefix language modelling (T5X's decoder-only prefix LM): read a prefix both ways, continue it.

Windows: `doc + [eos]` is cut into consecutive, non-overlapping windows of `seq_len` tokens
(the last one may be shorter). `rows.prefix_target_example` prepends bos and feeds the tokens
shifted by one, so a window of w tokens makes a row of exactly w positions.

Split (`split_window`): the prefix is the first `round(u * w)` tokens of the window, u uniform
in [prefix_min_fraction, prefix_max_fraction], capped at `w - 1` so that the target keeps at
least one token; the rest is the target. A window of one token (a one-token tail, or an empty
document's lone eos) is therefore target only: plain causal LM from bos. The eos that ends a
document is always a target, so the model learns where documents end.

Features: bos and the prefix are bidirectional, the target positions causal; loss falls on the
target tokens only. `rng` (seeded per seed, epoch and document) draws the split, so splits change
every epoch and repeat exactly on a resumed run. UL2's S-denoiser splits with `split_point`
and checks its range with `check_settings`.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from jaxpretrain.objectives import losses, registry, rows
from jaxpretrain.tokenizer import SpecialIds


def split_point(
    window_length: int, rng: np.random.Generator, min_fraction: float, max_fraction: float
) -> int:
    """The prefix length of a window: min(round(u * w), w - 1), u uniform in the fraction range."""
    fraction = rng.uniform(min_fraction, max_fraction)
    return min(int(np.rint(fraction * window_length)), window_length - 1)


def split_window(
    window_ids: np.ndarray,
    rng: np.random.Generator,
    min_fraction: float,
    max_fraction: float,
    special_ids: SpecialIds,
) -> dict[str, np.ndarray]:
    """One prefix-LM example from one window, split at a random point (rule in the module doc).

    Args:
      window_ids: int token ids [w], w >= 1; the row has w positions.
      rng: draws the split fraction u uniformly in [min_fraction, max_fraction].
      min_fraction, max_fraction: 0 <= min_fraction <= max_fraction < 1.
      special_ids: the tokenizer's special ids (bos starts the row).

    Returns:
      `rows.prefix_target_example(window[:p], window[p:], special_ids)` with
      p = min(round(u * w), w - 1).
    """
    window_ids = np.asarray(window_ids, np.int32)
    if window_ids.size == 0:
        raise ValueError("split_window needs a window of at least one token.")
    prefix_length = split_point(window_ids.size, rng, min_fraction, max_fraction)
    return rows.prefix_target_example(
        window_ids[:prefix_length], window_ids[prefix_length:], special_ids
    )


def make_examples(
    doc_ids: np.ndarray,
    rng: np.random.Generator,
    *,
    seq_len: int,
    special_ids: SpecialIds,
    settings: ml_collections.ConfigDict,
    vocab_size: int | None = None,
) -> list[dict[str, np.ndarray]]:
    """`doc + [eos]` in windows of seq_len tokens, each split by `split_window`.

    Reads `settings.prefix_min_fraction` and `settings.prefix_max_fraction`.
    """
    del vocab_size  # only MLM draws ids that are not in the document
    tokens = np.concatenate([np.asarray(doc_ids, np.int32), [special_ids.eos]]).astype(np.int32)
    return [
        split_window(
            tokens[start : start + seq_len],
            rng,
            settings.prefix_min_fraction,
            settings.prefix_max_fraction,
            special_ids,
        )
        for start in range(0, len(tokens), seq_len)
    ]


def check_settings(settings: ml_collections.ConfigDict, seq_len: int) -> None:
    """Raises ValueError unless 0 <= prefix_min_fraction <= prefix_max_fraction < 1."""
    del seq_len  # any window length works: the split is capped to leave one target token
    low, high = settings.prefix_min_fraction, settings.prefix_max_fraction
    if not 0 <= low < 1:
        raise ValueError(
            f"objective.prefix_min_fraction={low} must be in [0, 1); it is the smallest share "
            "of a window used as prefix."
        )
    if not 0 <= high < 1:
        raise ValueError(
            f"objective.prefix_max_fraction={high} must be in [0, 1); it is the largest share "
            "of a window used as prefix, and the target needs at least one token."
        )
    if low > high:
        raise ValueError(
            f"objective.prefix_min_fraction={low} must be <= objective.prefix_max_fraction="
            f"{high}; lower the minimum or raise the maximum."
        )


PREFIX_LM = registry.register(
    registry.Objective(
        name="prefix_lm",
        make_examples=make_examples,
        loss=losses.weighted_cross_entropy,
        check_settings=check_settings,
    )
)
