"""Text statistics shared by the heuristic filters: words, lines, paragraphs, repeated elements."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

# ASCII punctuation plus the typographic marks common in web text; stripped from word edges.
PUNCTUATION = string.punctuation + "“”‘’«»‹›…–—―·•¡¿、。，！？：；（）「」『』【】"
_PARAGRAPH_BREAK_RE = re.compile(r"\n\s*\n")


def split_words(text: str) -> list[str]:
    """Whitespace tokens with punctuation stripped from both ends; punctuation-only tokens dropped.

    Gopher counts "words" this way in spirit (the paper does not name a tokenizer); whitespace
    splitting keeps every filter language-agnostic and fast.
    """
    words = (token.strip(PUNCTUATION) for token in text.split())
    return [word for word in words if word]


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
