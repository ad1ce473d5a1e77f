"""Length filter: bounds on characters, words and lines (any bound may be None = unbounded).

Defaults only drop empty documents; C4 additionally drops pages over 190,000 characters before
cleaning (TFDS `c4_utils.is_valid_length`), which is `LengthFilter(max_chars=190_000)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from jaxpretrain.curate.document import Document
from jaxpretrain.curate.filters.base import Filter, Scores, register
from jaxpretrain.curate.filters.text_stats import nonempty_lines, split_words


@register
@dataclasses.dataclass(frozen=True)
class LengthFilter(Filter):
    """Keeps documents with min <= length <= max for characters, words and non-empty lines."""

    name: ClassVar[str] = "length"
    min_chars: int | None = 1
    max_chars: int | None = None
    min_words: int | None = None
    max_words: int | None = None
    min_lines: int | None = None
    max_lines: int | None = None

    def score(self, doc: Document) -> Scores:
        return {
            "chars": float(len(doc.text)),
            "words": float(len(split_words(doc.text))),
            "lines": float(len(nonempty_lines(doc.text))),
        }

    def keep(self, scores: Mapping[str, float]) -> tuple[bool, str | None]:
        rules = []
        for unit in ("chars", "words", "lines"):
            low, high = getattr(self, f"min_{unit}"), getattr(self, f"max_{unit}")
            rules.append((f"too_few_{unit}", low is not None and scores[unit] < low))
            rules.append((f"too_many_{unit}", high is not None and scores[unit] > high))
        return self._first_failure(rules)
