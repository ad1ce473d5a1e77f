"""Gopher quality and repetition rules (Rae et al. 2021, "Scaling Language Models: Methods,
Analysis & Insights from Training Gopher", Appendix A.1.1 and Table A1), thresholds as published.

The paper gives thresholds but not the exact counting; each statistic here is counted the way
datatrove's `GopherQualityFilter` / `GopherRepetitionFilter` count it, the code FineWeb ran
(Penedo et al. 2024), so FineWeb's numbers carry over: words are NLTK-style tokens (punctuation
marks are tokens), repetition fractions are over all characters of the text (spaces included),
and a duplicated n-gram counts only its repeats, not its first occurrence. Where a rule differs
from datatrove the docstring of the setting says so.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from jaxpretrain.curate.document import Document
from jaxpretrain.curate.filters.base import Filter, Scores, ratio, register
from jaxpretrain.curate.filters.text_stats import (
    duplicate_elements,
    has_letter,
    is_symbol_token,
    word_tokens,
)

# Appendix A.1.1: a document must contain at least two of these English words.
GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
# datatrove's bullets: a line (after leading spaces) starting with one of these.
BULLETS = ("•", "-")
ELLIPSES = ("...", "…")


@register
@dataclasses.dataclass(frozen=True)
class GopherQuality(Filter):
    """Gopher quality rules. A document is removed when (Appendix A.1.1):

    the number of words (tokens with a letter or digit) is outside [min_words, max_words]
    (50, 100,000); their mean length is outside [3, 10] characters; '#' or ellipses per token
    (punctuation tokens included) exceed 0.1; more than 90% of lines (blank ones included) start
    with a bullet; more than 30% of lines end with an ellipsis; fewer than 80% of tokens contain
    a letter; or fewer than 2 distinct stop words occur (case-sensitive, as in datatrove: "The"
    is not "the").
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
    bullets: tuple[str, ...] = BULLETS

    def score(self, doc: Document) -> Scores:
        text = doc.text
        tokens = word_tokens(text)
        # isalnum() first: most tokens are plain words, and it answers them in C.
        words = [token for token in tokens if token.isalnum() or not is_symbol_token(token)]
        lines = text.splitlines()
        return {
            "word_count": float(len(words)),
            "mean_word_length": ratio(sum(map(len, words)), len(words)),
            "hash_word_ratio": ratio(text.count("#"), len(tokens)),
            "ellipsis_word_ratio": ratio(sum(text.count(e) for e in ELLIPSES), len(tokens)),
            "bullet_line_fraction": ratio(
                sum(line.lstrip().startswith(self.bullets) for line in lines), len(lines)
            ),
            "ellipsis_line_fraction": ratio(
                sum(line.rstrip().endswith(ELLIPSES) for line in lines), len(lines)
            ),
            "alpha_word_fraction": ratio(sum(map(has_letter, tokens)), len(tokens)),
            "stop_word_count": float(len(set(self.stop_words).intersection(tokens))),
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
_PARAGRAPH_SPLIT_RE = re.compile(r"\n{2,}")
_LINE_SPLIT_RE = re.compile(r"\n+")


def ngram_char_fractions(
    words: list[str],
    total_chars: int,
    top_sizes: tuple[int, ...],
    duplicate_sizes: tuple[int, ...],
    count_first_occurrences: bool = False,
) -> dict[str, float]:
    """Gopher's n-gram repetition statistics as fractions of `total_chars` (the text's length).

    `top_{n}gram_char_fraction`: length of the most frequent n-gram (words joined by single
    spaces; the earliest one on ties) times its count. Overlapping occurrences each count, so
    the value can exceed 1 ("a a a a"), as in datatrove.
    `duplicate_{n}gram_char_fraction`: the common definition (datatrove's `find_all_duplicate`):
    scan left to right; an n-gram seen before adds its word characters (no spaces) and the scan
    jumps past it, so only repeats count and overlapping repeats are not counted twice. With
    `count_first_occurrences` (a stricter reading of Table A1) every word inside any n-gram that
    occurs more than once counts, first occurrences included, each word once.
    N-grams are keyed by a 64-bit polynomial of per-document word ids (vectorised).
    """
    stats = {f"top_{n}gram_char_fraction": 0.0 for n in top_sizes}
    stats.update({f"duplicate_{n}gram_char_fraction": 0.0 for n in duplicate_sizes})
    word_count = len(words)
    if word_count == 0 or total_chars == 0:
        return stats
    vocabulary = {word: index for index, word in enumerate(dict.fromkeys(words))}
    ids = np.fromiter(map(vocabulary.__getitem__, words), np.uint64, word_count)
    ids += np.uint64(1)
    lengths = np.fromiter(map(len, words), np.int64, word_count)
    cumulative = np.concatenate([[0], np.cumsum(lengths)])
    keys = np.zeros(word_count, np.uint64)
    all_unique_below = False  # whether the last n-grams counted were all distinct
    for n in range(1, max((*top_sizes, *duplicate_sizes), default=0) + 1):
        if word_count < n:
            break
        keys = keys[: word_count - n + 1] * _NGRAM_KEY_MULTIPLIER + ids[n - 1 :]  # wraps on purpose
        if n not in top_sizes and n not in duplicate_sizes:
            continue
        if n > 1 and all_unique_below:
            # No (n-1)-gram repeats, so no n-gram does: the top n-gram is the first one, once,
            # and nothing is duplicated. Skips the sort for most n of ordinary prose.
            if n in top_sizes:
                stats[f"top_{n}gram_char_fraction"] = float(cumulative[n] + n - 1) / total_chars
            continue
        _, first_index, inverse, counts = np.unique(
            keys, return_index=True, return_inverse=True, return_counts=True
        )
        span_chars = cumulative[n:] - cumulative[:-n]  # word characters of the n-gram at i
        if n in top_sizes:
            # Counter.most_common keeps insertion order on ties: the earliest top n-gram wins.
            top = first_index[counts == counts.max()].min()
            joined_chars = span_chars[top] + n - 1
            stats[f"top_{n}gram_char_fraction"] = float(counts.max() * joined_chars) / total_chars
        if n in duplicate_sizes and counts.max() > 1:
            if count_first_occurrences:
                repeated = _chars_in_repeated_ngrams(counts[inverse] > 1, n, lengths)
            else:
                repeated = _chars_in_later_copies(keys.tolist(), span_chars.tolist(), n)
            stats[f"duplicate_{n}gram_char_fraction"] = repeated / total_chars
        all_unique_below = counts.max() == 1
    return stats


def _chars_in_later_copies(keys: list[int], span_chars: list[int], n: int) -> int:
    """datatrove's greedy scan: characters of n-grams equal to an n-gram seen earlier."""
    seen: set[int] = set()
    repeated = position = 0
    while position < len(keys):
        if keys[position] in seen:
            repeated += span_chars[position]
            position += n
        else:
            seen.add(keys[position])
            position += 1
    return repeated


def _chars_in_repeated_ngrams(repeated_at: np.ndarray, n: int, lengths: np.ndarray) -> int:
    """Characters of the words covered by any repeated n-gram (first occurrences included)."""
    starts = np.flatnonzero(repeated_at)
    coverage = np.zeros(lengths.size + 1, np.int64)
    coverage[starts] += 1
    coverage[starts + n] -= 1  # a difference array marks each covered word once
    return int(lengths[np.cumsum(coverage[:-1]) > 0].sum())


@register
@dataclasses.dataclass(frozen=True)
class GopherRepetition(Filter):
    """Gopher repetition rules (Table A1); a document is removed when any fraction exceeds its
    threshold: duplicate lines 0.30 and paragraphs 0.30 (by count), characters in duplicate lines
    0.20 and paragraphs 0.20, top 2/3/4-gram characters 0.20/0.18/0.16, characters in duplicated
    5..10-grams 0.15 down to 0.10. Character fractions are over the whole text's length.
    Paragraphs split on 2+ newlines, lines on 1+ newlines (datatrove's fix of 2024-04-26: runs of
    blank lines are not duplicate lines). `count_first_occurrences` selects the stricter reading
    of the duplicated n-gram fraction (see `ngram_char_fractions`).
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
    count_first_occurrences: bool = False

    def score(self, doc: Document) -> Scores:
        text = doc.text
        lines = _LINE_SPLIT_RE.split(text)
        blocks = _PARAGRAPH_SPLIT_RE.split(text.strip())
        duplicate_lines, duplicate_line_chars = duplicate_elements(lines)
        duplicate_blocks, duplicate_block_chars = duplicate_elements(blocks)
        scores = {
            "duplicate_line_fraction": ratio(duplicate_lines, len(lines)),
            "duplicate_paragraph_fraction": ratio(duplicate_blocks, len(blocks)),
            "duplicate_line_char_fraction": ratio(duplicate_line_chars, len(text)),
            "duplicate_paragraph_char_fraction": ratio(duplicate_block_chars, len(text)),
        }
        scores.update(
            ngram_char_fractions(
                word_tokens(text),
                len(text),
                tuple(sorted(self.max_top_ngram_char_fraction)),
                tuple(sorted(self.max_duplicate_ngram_char_fraction)),
                self.count_first_occurrences,
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
