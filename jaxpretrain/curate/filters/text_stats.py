"""Text statistics shared by the heuristic filters: words, lines, paragraphs, repeated elements."""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Sequence

# ASCII punctuation plus the typographic marks common in web text; stripped from word edges.
PUNCTUATION = string.punctuation + "“”‘’«»‹›…–—―·•¡¿、。，！？：；（）「」『』【】"
_PARAGRAPH_BREAK_RE = re.compile(r"\n\s*\n")
# A word (letters/digits joined by inner hyphens, apostrophes, dots or commas: "don't", "3.14",
# "1,000"), an ellipsis, or one punctuation/symbol character.
_TOKEN_RE = re.compile(r"\w+(?:[-'’.,]\w+)*|\.\.\.|[^\w\s]")


def split_words(text: str) -> list[str]:
    """Whitespace tokens with punctuation stripped from both ends; punctuation-only tokens dropped.

    Gopher counts "words" this way in spirit (the paper does not name a tokenizer); whitespace
    splitting keeps every filter language-agnostic and fast.
    """
    words = (token.strip(PUNCTUATION) for token in text.split())
    return [word for word in words if word]


# The Gopher repetition and quality filters (and FineWeb's) tokenize the same text one after
# the other; the last few results are kept (as immutable tuples) so each text is scanned once.
@functools.lru_cache(maxsize=4)
def word_tokens(text: str) -> tuple[str, ...]:
    """Words and punctuation marks as separate tokens: "Hello, world." -> (Hello, ",", world, ".").

    Approximates NLTK's `word_tokenize` (Treebank rules), which datatrove's Gopher and FineWeb
    filters ran on for FineWeb, without its punkt model: punctuation tokens count in ratios
    "per word" there, so they count here. Contractions stay one token ("don't"; NLTK: do, n't).
    """
    return tuple(_TOKEN_RE.findall(text))


def is_symbol_token(token: str) -> bool:
    """True for a token made only of punctuation (datatrove leaves these out of word counts)."""
    return not token.isalnum() and not any(char.isalnum() for char in token)


def has_letter(token: str) -> bool:
    """True when `token` contains an alphabetic character."""
    return token.isalpha() or (not token.isdigit() and any(char.isalpha() for char in token))


def nonempty_lines(text: str) -> list[str]:
    """Lines of `text` with surrounding whitespace removed, empty lines dropped."""
    return [line for line in (raw.strip() for raw in text.split("\n")) if line]


def paragraphs(text: str) -> list[str]:
    """Blocks separated by one or more blank lines, stripped, empty blocks dropped."""
    return [block for block in (raw.strip() for raw in _PARAGRAPH_BREAK_RE.split(text)) if block]


def duplicate_elements(elements: Sequence[str]) -> tuple[int, int]:
    """(number, total characters) of elements equal to an earlier element.

    The first occurrence is not a duplicate; every later copy is. This matches Gopher's
    "fraction of lines that are duplicates" (Rae et al. 2021, Table A1).
    """
    seen: set[str] = set()
    duplicate_count = 0
    duplicate_chars = 0
    for element in elements:
        if element in seen:
            duplicate_count += 1
            duplicate_chars += len(element)
        else:
            seen.add(element)
    return duplicate_count, duplicate_chars
