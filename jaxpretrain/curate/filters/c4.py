"""C4's page cleaning (Raffel et al. 2020, "Exploring the Limits of Transfer Learning...", §2.2),
in two registered variants that differ only in their defaults:

`c4` — C4 as FineWeb ran it (datatrove `C4QualityFilter(filter_no_terminal_punct=False)`,
examples/fineweb.py): lines WITHOUT terminal punctuation are kept; lines need 3 words (counted
before citation markers are removed); the page needs 5 sentences; end marks . ? ! " '.
`c4_tfds` — the rules of TFDS `tensorflow_datasets/text/c4_utils.py:clean_page`, as the paper
describes them: lines must end in . ? ! or " (not '...'), need 5 words (after citation removal);
the page needs 3 sentences. (datatrove's defaults swap these two numbers; FineWeb kept that.)

Both, in this order per line (a failing line is dropped, the page goes on): a word longer than
1000 characters; citation markers ([1], [edit], [citation needed]) removed; the end-mark rule
(c4_tfds only); too few words; a line with 'javascript'; a policy phrase ('terms of use', ...).
Page rules (the page is dropped): a kept line contains 'lorem ipsum' or a curly bracket '{';
the kept lines hold too few sentences.

The bad-words rule is the `blocklist` filter. Sentences are counted with a punctuation regex
instead of NLTK's punkt (no model download), so abbreviations like 'Mr.' count as a sentence end.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import ClassVar

from jaxpretrain.curate.document import Document
from jaxpretrain.curate.filters.base import Filter, FilterResult, Scores, ratio, register

TFDS_END_MARKS = (".", "?", "!", '"')
FINEWEB_END_MARKS = (".", "?", "!", '"', "'")
POLICY_PHRASES = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)
_CITATION_RE = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")
# A sentence ends at . ! or ? (optionally followed by closing quotes/brackets) before whitespace
# or the end of the line.
_SENTENCE_END_RE = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|$)")


def count_sentences(line: str) -> int:
    """Number of sentence ends in `line`; at least 1 for a non-empty line."""
    return max(1, len(_SENTENCE_END_RE.findall(line))) if line.strip() else 0


@register
@dataclasses.dataclass(frozen=True)
class C4Quality(Filter):
    """C4 line cleaning + page rules with FineWeb's settings; `apply` returns the kept lines.

    Line settings (they change the text, so re-tuning them needs `score` again):
      min_words_per_line (3), max_word_length (1000), require_end_mark (False), end_marks,
      count_words_before_citation_removal (True), remove_citations, drop_javascript_lines,
      drop_policy_lines.
    Page thresholds (re-tunable from scores): min_sentences (5), drop_lorem_ipsum,
      drop_curly_bracket.
    """

    name: ClassVar[str] = "c4"
    min_words_per_line: int = 3
    max_word_length: int = 1000
    require_end_mark: bool = False
    end_marks: tuple[str, ...] = FINEWEB_END_MARKS
    count_words_before_citation_removal: bool = True
    remove_citations: bool = True
    drop_javascript_lines: bool = True
    drop_policy_lines: bool = True
    min_sentences: int = 5
    drop_lorem_ipsum: bool = True
    drop_curly_bracket: bool = True

    def clean_lines(self, text: str) -> tuple[str, Scores]:
        """Applies the line rules; returns (kept lines joined by '\\n', page scores)."""
        counts = dict.fromkeys(
            ("too_long_word", "no_end_mark", "too_few_words", "javascript", "policy"), 0
        )
        kept_lines: list[str] = []
        sentences = 0
        lorem_ipsum = curly_bracket = False
        lines = text.splitlines()
        for raw_line in lines:
            line = raw_line.strip()
            words = line.split()
            if any(len(word) > self.max_word_length for word in words):
                counts["too_long_word"] += 1
                continue
            if self.remove_citations:
                line = _CITATION_RE.sub("", line)
            if self.require_end_mark and (
                not line.endswith(self.end_marks) or line.endswith("...")
            ):
                counts["no_end_mark"] += 1
                continue
            if not self.count_words_before_citation_removal:
                words = line.split()
            if len(words) < self.min_words_per_line:
                counts["too_few_words"] += 1
                continue
            lowered = line.lower()
            # TFDS drops the page on these two at once; we record them and let `keep` decide, so
            # the page-level rules stay re-tunable from scores.
            lorem_ipsum = lorem_ipsum or "lorem ipsum" in lowered
            if self.drop_javascript_lines and "javascript" in lowered:
                counts["javascript"] += 1
                continue
            curly_bracket = curly_bracket or "{" in line
            if self.drop_policy_lines and any(phrase in lowered for phrase in POLICY_PHRASES):
                counts["policy"] += 1
                continue
            sentences += count_sentences(line)
            kept_lines.append(line)
        scores: Scores = {
            "sentences": float(sentences),
            "lorem_ipsum": float(lorem_ipsum),
            "curly_bracket": float(curly_bracket),
            "kept_line_fraction": ratio(len(kept_lines), len(lines)),
        }
        scores.update({f"lines_dropped_{rule}": float(n) for rule, n in counts.items()})
        return "\n".join(kept_lines).strip(), scores

    def score(self, doc: Document) -> Scores:
        return self.clean_lines(doc.text)[1]

    def keep(self, scores: Mapping[str, float]) -> tuple[bool, str | None]:
        return self._first_failure(
            [
                ("lorem_ipsum", self.drop_lorem_ipsum and scores["lorem_ipsum"] > 0),
                ("curly_bracket", self.drop_curly_bracket and scores["curly_bracket"] > 0),
                ("too_few_sentences", scores["sentences"] < self.min_sentences),
            ]
        )

    def apply(self, doc: Document) -> FilterResult:
        text, scores = self.clean_lines(doc.text)
        kept, reason = self.keep(scores)
        return FilterResult(doc.replace(text=text), kept, reason, scores)


@register
@dataclasses.dataclass(frozen=True)
class C4TfdsQuality(C4Quality):
    """C4 exactly as TFDS builds it: end marks required, 5 words per line, 3 sentences."""

    name: ClassVar[str] = "c4_tfds"
    min_words_per_line: int = 5
    require_end_mark: bool = True
    end_marks: tuple[str, ...] = TFDS_END_MARKS
    count_words_before_citation_removal: bool = False
    min_sentences: int = 3
