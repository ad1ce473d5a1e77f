"""Training objectives: each module registers one `Objective` (data transform + loss)."""

from jaxpretrain.objectives import (  # noqa: F401  (each registers itself)
    causal_lm,
    mlm,
    prefix_lm,
    span_corruption,
    ul2,
)
from jaxpretrain.objectives.registry import Objective, get, names, register

__all__ = ["Objective", "get", "names", "register"]
