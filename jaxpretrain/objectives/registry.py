"""The objective registry: a name in `config.objective.name` -> an `Objective`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import ml_collections
import numpy as np

# One document's token ids (no specials) -> zero or more examples:
#   make_examples(doc_ids, rng, *, seq_len, special_ids, settings, vocab_size) -> list[example]
# Each example is a dict with `inputs`, `targets` (int32), `loss_weights` (float32) and
# `bidirectional` (int32, 1 on the example's first tokens if any: a bidirectional prefix, the
# rest causal) of one length <= seq_len; the packer adds `segment_ids` and
# `positions`. `rng` is seeded by (train.seed, epoch, document), so random choices (masks, spans,
# split points) are redrawn every epoch yet identical on a resumed run. `settings` is the
# `config.objective` section (frozen); `vocab_size` the tokenizer's (MLM's random replacements).
ExamplesFn = Callable[..., list[dict[str, np.ndarray]]]
# (logits_BLV float32, targets_BL, loss_weights_BL) -> (summed loss, summed weight).
LossFn = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
# (settings, seq_len) -> None; raises ValueError naming `objective.<key>`, its value and the
# allowed range, before anything is built.
SettingsCheck = Callable[[ml_collections.ConfigDict, int], None]


def no_settings(settings: ml_collections.ConfigDict, seq_len: int) -> None:
    """The check of an objective that reads no `objective.*` setting."""
    del settings, seq_len


@dataclasses.dataclass(frozen=True)
class Objective:
    """An objective = its data transform + its loss reduction.

    `make_examples(doc_ids, rng, *, seq_len, special_ids, settings, vocab_size)` runs in the input
    pipeline (numpy); `loss(logits_BLV, targets_BL, loss_weights_BL)` runs inside the jitted step;
    `check_settings(settings, seq_len)` runs in `config.validate`.
    """

    name: str
    make_examples: ExamplesFn
    loss: LossFn
    check_settings: SettingsCheck = no_settings
    # True when the loss falls on the document's own tokens predicted left to right (causal and
    # prefix LM), so validation bits per byte measure the text; False for masked or
    # sentinel-marked targets, where eval reports loss and perplexity only.
    predicts_text: bool = True


_OBJECTIVES: dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
    if objective.name in _OBJECTIVES:
        raise ValueError(f"objective {objective.name!r} is registered twice.")
    _OBJECTIVES[objective.name] = objective
    return objective


def get(name: str) -> Objective:
    if name not in _OBJECTIVES:
        raise KeyError(
            f"config key objective.name={name!r} is unknown; use one of {', '.join(names())}."
        )
    return _OBJECTIVES[name]


def names() -> list[str]:
    return sorted(_OBJECTIVES)
