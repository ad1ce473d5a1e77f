"""Training objectives: each module registers one `Objective` (data transform + loss)."""

from jaxpretrain.objectives import causal_lm, mlm, prefix_lm  # noqa: F401  (register themselves)
from jaxpretrain.objectives.registry import Objective, get, names, register

__all__ = ["Objective", "get", "names", "register"]
