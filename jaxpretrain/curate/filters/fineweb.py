"""FineWeb's extra heuristics (Penedo et al. 2024, "The FineWeb Datasets", §3.3 custom filters),
with the thresholds and comparisons of the code that produced the dataset
(datatrove `FineWebQualityFilter` defaults, used as-is by FineWeb's pipeline):

  remove when the fraction of lines ending in terminal punctuation is < 0.12,
  the fraction of lines of at most 30 characters is > 0.67,
  characters in duplicated lines / all non-newline characters is > 0.01
  (the paper's prose says 0.1; the released pipeline ran with 0.01),
  or newlines per word is > 0.3 (list-like pages).

Lines are the non-blank lines between newlines, not stripped (a line ending in '. ' does not end in
punctuation; its length counts its spaces), and words are NLTK-style tokens, as in datatrove.
The end marks are FineWeb's of April 2024 (. ' " ! ?); datatrove later (FineWeb-2) replaced them
with terminal punctuation of many scripts, without quotes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from jaxpretrain.curate.document import Document
from jaxpretrain.curate.filters.base import Filter, Scores, ratio, register
from jaxpretrain.curate.filters.text_stats import duplicate_elements, word_tokens

LINE_END_PUNCTUATION = (".", "'", '"', "!", "?")


@register
@dataclasses.dataclass(frozen=True)
class FineWebQuality(Filter):
    """FineWeb's line-punctuation, short-line, duplicated-line-characters and list-ratio rules."""

    name: ClassVar[str] = "fineweb"
    min_line_punctuation_fraction: float = 0.12
    max_short_line_fraction: float = 0.67
    short_line_max_chars: int = 30
    max_duplicate_line_char_fraction: float = 0.01
    max_newline_word_ratio: float = 0.3
    line_end_punctuation: tuple[str, ...] = LINE_END_PUNCTUATION

    def score(self, doc: Document) -> Scores:
        text = doc.text
        lines = [line for line in text.split("\n") if line.strip()]
        _, duplicate_chars = duplicate_elements(lines)
        return {
            "line_punctuation_fraction": ratio(
                sum(line.endswith(self.line_end_punctuation) for line in lines), len(lines)
            ),
            "short_line_fraction": ratio(
                sum(len(line) <= self.short_line_max_chars for line in lines), len(lines)
            ),
            "duplicate_line_char_fraction": ratio(duplicate_chars, len(text) - text.count("\n")),
            "newline_word_ratio": ratio(text.count("\n"), len(word_tokens(text))),
            "line_count": float(len(lines)),
        }

    def keep(self, scores: Mapping[str, float]) -> tuple[bool, str | None]:
        return self._first_failure(
            [
                ("empty", scores["line_count"] == 0),
                (
                    "line_punctuation",
                    scores["line_punctuation_fraction"] < self.min_line_punctuation_fraction,
                ),
                ("short_lines", scores["short_line_fraction"] > self.max_short_line_fraction),
                (
                    "duplicate_line_chars",
                    scores["duplicate_line_char_fraction"] > self.max_duplicate_line_char_fraction,
                ),
                ("list_like", scores["newline_word_ratio"] > self.max_newline_word_ratio),
            ]
        )
