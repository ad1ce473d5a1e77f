"""Gopher quality and repetition rules (Rae et al. 2021, "Scaling Language Models: Methods,
Analysis & Insights from Training Gopher", Appendix A.1.1 and Table A1), thresholds as published.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from jaxpretrain.curate.document import Document
from jaxpretrain.curate.filters.base import Filter, Scores, ratio, register
from jaxpretrain.curate.filters.text_stats import (
    duplicate_elements,
    nonempty_lines,
    paragraphs,
    split_words,
)

# Appendix A.1.1: a document must contain at least two of these English words.
GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
BULLETS = ("•", "●", "○", "◦", "▪", "▫", "■", "□", "‣", "⁃", "-", "*")
ELLIPSES = ("...", "…")


@register
@dataclasses.dataclass(frozen=True)
class GopherQuality(Filter):
    """Gopher quality rules. A document is removed when (Appendix A.1.1):

    word count is outside [min_words, max_words] (50, 100,000); mean word length is outside
    [3, 10] characters; the '#' or the ellipsis to word ratio exceeds 0.1; more than 90% of lines
    start with a bullet; more than 30% of lines end with an ellipsis; fewer than 80% of words
    contain an alphabetic character; or fewer than 2 of the stop words occur (distinct words,
    as "at least two of the following English words" reads).
    """

    name: ClassVar[str] = "gopher_quality"
    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_hash_word_ratio: float = 0.1
    max_ellipsis_word_ratio: float = 0.1
    max_bullet_line_fraction: float = 0.9
    max_ellipsis_line_fraction: float = 0.3
    min_alpha_word_fraction: float = 0.8
    min_stop_words: int = 2
    stop_words: tuple[str, ...] = GOPHER_STOP_WORDS

    def score(self, doc: Document) -> Scores:
        text = doc.text
        words = split_words(text)
        lines = nonempty_lines(text)
        word_count = len(words)
        stop_words = set(self.stop_words)
        return {
            "word_count": float(word_count),
            "mean_word_length": ratio(sum(map(len, words)), word_count),
            "hash_word_ratio": ratio(text.count("#"), word_count),
            "ellipsis_word_ratio": ratio(sum(text.count(e) for e in ELLIPSES), word_count),
            "bullet_line_fraction": ratio(
                sum(line.startswith(BULLETS) for line in lines), len(lines)
            ),
            "ellipsis_line_fraction": ratio(
                sum(line.endswith(ELLIPSES) for line in lines), len(lines)
            ),
            "alpha_word_fraction": ratio(
                sum(any(char.isalpha() for char in word) for word in words), word_count
            ),
            "stop_word_count": float(len(stop_words.intersection(w.lower() for w in words))),
        }

    def keep(self, scores: Mapping[str, float]) -> tuple[bool, str | None]:
        return self._first_failure(
            [
                ("too_few_words", scores["word_count"] < self.min_words),
                ("too_many_words", scores["word_count"] > self.max_words),
                (
                    "mean_word_length_too_short",
                    scores["mean_word_length"] < self.min_mean_word_length,
                ),
                (
                    "mean_word_length_too_long",
                    scores["mean_word_length"] > self.max_mean_word_length,
                ),
                ("hash_word_ratio", scores["hash_word_ratio"] > self.max_hash_word_ratio),
                (
                    "ellipsis_word_ratio",
                    scores["ellipsis_word_ratio"] > self.max_ellipsis_word_ratio,
                ),
                ("bullet_lines", scores["bullet_line_fraction"] > self.max_bullet_line_fraction),
                (
                    "ellipsis_lines",
                    scores["ellipsis_line_fraction"] > self.max_ellipsis_line_fraction,
                ),
                ("alpha_words", scores["alpha_word_fraction"] < self.min_alpha_word_fraction),
                ("stop_words", scores["stop_word_count"] < self.min_stop_words),
            ]
        )


# Table A1 of the Gopher paper: remove when the statistic exceeds the threshold.
TOP_NGRAM_MAX_CHAR_FRACTION = {2: 0.20, 3: 0.18, 4: 0.16}
DUPLICATE_NGRAM_MAX_CHAR_FRACTION = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
_NGRAM_KEY_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


def ngram_char_fractions(
    words: list[str], top_sizes: tuple[int, ...], duplicate_sizes: tuple[int, ...]
) -> dict[str, float]:
    """Gopher's n-gram repetition statistics over word characters (spaces are not counted).

    `top_{n}gram_char_fraction`: characters covered by the most frequent n-gram (counting every
    occurrence) / all word characters; 0 when no n-gram repeats (a single occurrence is not
    repetition). `duplicate_{n}gram_char_fraction`: characters of words inside any n-gram that
    occurs more than once, each character counted once even where repeats overlap.
    Vectorised: n-grams are keyed by a 64-bit polynomial of per-document word ids.
    """
    stats = {f"top_{n}gram_char_fraction": 0.0 for n in top_sizes}
    stats.update({f"duplicate_{n}gram_char_fraction": 0.0 for n in duplicate_sizes})
    word_count = len(words)
    if word_count == 0:
        return stats
    vocabulary: dict[str, int] = {}
    ids = np.fromiter(
        (vocabulary.setdefault(word, len(vocabulary)) for word in words), np.uint64, word_count
    )
    ids += np.uint64(1)
    lengths = np.fromiter(map(len, words), np.int64, word_count)
    cumulative = np.concatenate([[0], np.cumsum(lengths)])
    total_chars = float(cumulative[-1])
    keys = ids.copy()
    for n in range(2, max((*top_sizes, *duplicate_sizes), default=1) + 1):
        if word_count < n:
            break
        keys = keys[:-1] * _NGRAM_KEY_MULTIPLIER + ids[n - 1 :]  # wraps mod 2**64 on purpose
        _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        count_at_start = counts[inverse]
        if n in top_sizes and counts.max() > 1:
            span_chars = cumulative[n:] - cumulative[:-n]
            most = counts.max()
            covered = most * span_chars[count_at_start == most].max()
            stats[f"top_{n}gram_char_fraction"] = min(1.0, float(covered) / total_chars)
        if n in duplicate_sizes:
            starts = np.flatnonzero(count_at_start > 1)
            if starts.size:
                # Difference array marks each word covered by at least one repeated n-gram.
                coverage = np.zeros(word_count + 1, np.int64)
                coverage[starts] += 1
                coverage[starts + n] -= 1
                covered_words = np.cumsum(coverage[:-1]) > 0
                stats[f"duplicate_{n}gram_char_fraction"] = (
                    float(lengths[covered_words].sum()) / total_chars
                )
    return stats


@register
@dataclasses.dataclass(frozen=True)
class GopherRepetition(Filter):
    """Gopher repetition rules (Table A1); a document is removed when any fraction exceeds its
    threshold: duplicate lines 0.30 and paragraphs 0.30 (by count), characters in duplicate lines
    0.20 and paragraphs 0.20, top 2/3/4-gram characters 0.20/0.18/0.16, characters in duplicated
    5..10-grams 0.15 down to 0.10. Lines split on newlines, paragraphs on blank lines.
    """

    name: ClassVar[str] = "gopher_repetition"
    max_duplicate_line_fraction: float = 0.30
    max_duplicate_paragraph_fraction: float = 0.30
    max_duplicate_line_char_fraction: float = 0.20
    max_duplicate_paragraph_char_fraction: float = 0.20
    max_top_ngram_char_fraction: Mapping[int, float] = dataclasses.field(
        default_factory=lambda: dict(TOP_NGRAM_MAX_CHAR_FRACTION)
    )
    max_duplicate_ngram_char_fraction: Mapping[int, float] = dataclasses.field(
        default_factory=lambda: dict(DUPLICATE_NGRAM_MAX_CHAR_FRACTION)
    )

    def score(self, doc: Document) -> Scores:
        lines = nonempty_lines(doc.text)
        blocks = paragraphs(doc.text)
        duplicate_lines, duplicate_line_chars = duplicate_elements(lines)
        duplicate_blocks, duplicate_block_chars = duplicate_elements(blocks)
        scores = {
            "duplicate_line_fraction": ratio(duplicate_lines, len(lines)),
            "duplicate_paragraph_fraction": ratio(duplicate_blocks, len(blocks)),
            "duplicate_line_char_fraction": ratio(duplicate_line_chars, sum(map(len, lines))),
            "duplicate_paragraph_char_fraction": ratio(
                duplicate_block_chars, sum(map(len, blocks))
            ),
        }
        scores.update(
            ngram_char_fractions(
                split_words(doc.text),
                tuple(sorted(self.max_top_ngram_char_fraction)),
                tuple(sorted(self.max_duplicate_ngram_char_fraction)),
            )
        )
        return scores

    def keep(self, scores: Mapping[str, float]) -> tuple[bool, str | None]:
        rules = [
            (
                "duplicate_lines",
                scores["duplicate_line_fraction"] > self.max_duplicate_line_fraction,
            ),
            (
                "duplicate_paragraphs",
                scores["duplicate_paragraph_fraction"] > self.max_duplicate_paragraph_fraction,
            ),
            (
                "duplicate_line_chars",
                scores["duplicate_line_char_fraction"] > self.max_duplicate_line_char_fraction,
            ),
            (
                "duplicate_paragraph_chars",
                scores["duplicate_paragraph_char_fraction"]
                > self.max_duplicate_paragraph_char_fraction,
            ),
        ]
        for n, limit in sorted(self.max_top_ngram_char_fraction.items()):
            rules.append((f"top_{n}gram", scores[f"top_{n}gram_char_fraction"] > limit))
        for n, limit in sorted(self.max_duplicate_ngram_char_fraction.items()):
            rules.append((f"duplicate_{n}gram", scores[f"duplicate_{n}gram_char_fraction"] > limit))
        return self._first_failure(rules)
