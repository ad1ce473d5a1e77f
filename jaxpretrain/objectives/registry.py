"""The objective registry: a name in `config.objective.name` -> an `Objective`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np

# One document's token ids (no specials) -> zero or more examples. Each example is a dict with
# `inputs`, `targets` (int32), `loss_weights` (float32) and `bidirectional` (int32) of one length
# <= seq_len; the packer adds `segment_ids` and `positions`.
ExamplesFn = Callable[..., list[dict[str, np.ndarray]]]
# (logits_BLV float32, targets_BL, loss_weights_BL) -> (summed loss, summed weight).
LossFn = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Objective:
    """An objective = its data transform + its loss reduction.

    `make_examples(doc_ids, rng, *, seq_len, special_ids)` runs in the input pipeline (numpy);
    `loss(logits_BLV, targets_BL, loss_weights_BL)` runs inside the jitted step.
    """

    name: str
    make_examples: ExamplesFn
    loss: LossFn


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
