"""Sampling probabilities of a data mixture: configured weights, or temperature sampling.

Temperature sampling (as in multilingual LM practice, e.g. XLM-R / mT5) flattens a skewed
distribution: p_i ∝ q_i^(1/T), where q_i is the base distribution. T = 1 keeps q; larger T moves
towards uniform, so small sources are seen more often than their size alone would give.

    mixture_weights(counts, weights, mode="weights", temperature=1.0)   # normalised weights
    mixture_weights(counts, weights, mode="temperature", temperature=3.3)  # ∝ n_i^(1/3.3)
"""

from __future__ import annotations

import math
from collections.abc import Mapping

MIXTURE_MODES = ("weights", "temperature")


def mixture_weights(
    token_counts: Mapping[str, int],
    weights: Mapping[str, float],
    mode: str = "weights",
    temperature: float = 1.0,
) -> dict[str, float]:
    """Sampling probability per source, summing to 1, in the order of `weights`' keys.

    Args:
      token_counts: tokens per source; used as the base distribution when mode='temperature'
        (it must then have every source in `weights`); ignored when mode='weights'.
      weights: the mixture's sources and their configured weights (>= 0, not all 0). With
        mode='temperature' only the keys matter: they say which sources take part.
      mode: 'weights' (base = normalised weights) or 'temperature' (base = token shares).
      temperature: T > 0; p_i ∝ base_i^(1/T). T = 1 returns the base distribution.

    Raises:
      ValueError: an unknown mode, T <= 0, a negative or non-finite weight or count, or a base
        distribution that sums to 0.
      KeyError: mode='temperature' and a source has no token count.
    """
    if mode not in MIXTURE_MODES:
        raise ValueError(f"mixture mode={mode!r} is unknown; use one of {MIXTURE_MODES}.")
    if not (isinstance(temperature, int | float) and math.isfinite(temperature)) or (
        temperature <= 0
    ):
        raise ValueError(f"mixture temperature={temperature!r} must be a finite number > 0.")
    if not weights:
        raise ValueError("the mixture has no sources; give at least one source a weight.")
    if mode == "weights":
        base = {name: float(weight) for name, weight in weights.items()}
        what = "weight"
    else:
        missing = [name for name in weights if name not in token_counts]
        if missing:
            raise KeyError(
                f"mixture mode='temperature' needs a token count for every source; "
                f"{missing} have none (count the prepared data first)."
            )
        base = {name: float(token_counts[name]) for name in weights}
        what = "token count"
    for name, value in base.items():
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"mixture source {name!r} has {what} {value!r}; use a number >= 0.")
    total = sum(base.values())
    if total <= 0:
        raise ValueError(f"every mixture source has {what} 0; give at least one a positive value.")
    # Normalise first so large counts cannot overflow when raised to 1/T.
    tempered = {name: (value / total) ** (1.0 / temperature) for name, value in base.items()}
    tempered_total = sum(tempered.values())
    return {name: value / tempered_total for name, value in tempered.items()}
