"""Source-code quality rules of Codex, The Stack and StarCoder (the bigcode "basic" filter).

Chen et al. 2021 (Codex, §3.1) removed files "with average line length greater than 100, maximum
line length greater than 1000, or a small percentage of alphanumeric characters"; The Stack
(Kocetkov et al. 2022) and StarCoder (Li et al. 2023, §3) ran the same rule with the fraction at
0.25 (bigcode-dataset `preprocessing/filtering.py` defaults: line_max 1000, line_mean 100,
alpha_frac 0.25). These catch minified, generated and data files that prose filters cannot see.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from jaxpretrain.curate.document import Document
from jaxpretrain.curate.filters.base import Filter, Scores, ratio, register


@register
@dataclasses.dataclass(frozen=True)
class CodeQuality(Filter):
    """Removes a file whose longest line exceeds `max_line_length` (1000) characters, whose mean
    line length exceeds `max_mean_line_length` (100), or whose share of alphanumeric characters
    is below `min_alphanumeric_fraction` (0.25). Lines are `str.splitlines()` of the file.
    """

    name: ClassVar[str] = "code_quality"
    max_line_length: int = 1000
    max_mean_line_length: float = 100.0
    min_alphanumeric_fraction: float = 0.25

    def score(self, doc: Document) -> Scores:
        text = doc.text
        line_lengths = [len(line) for line in text.splitlines()]
        return {
            "max_line_length": float(max(line_lengths, default=0)),
            "mean_line_length": ratio(sum(line_lengths), len(line_lengths)),
            "alphanumeric_fraction": ratio(sum(char.isalnum() for char in text), len(text)),
        }

    def keep(self, scores: Mapping[str, float]) -> tuple[bool, str | None]:
        return self._first_failure(
            [
                ("max_line_length", scores["max_line_length"] > self.max_line_length),
                ("mean_line_length", scores["mean_line_length"] > self.max_mean_line_length),
                (
                    "alphanumeric_fraction",
                    scores["alphanumeric_fraction"] < self.min_alphanumeric_fraction,
                ),
            ]
        )
