"""The filter contract, a name -> class registry, and helpers to run filters and re-decide later.

A filter works in two steps so thresholds can be re-tuned without recomputing anything:

  scores = f.score(doc)          # expensive, threshold-free statistics, e.g. {"word_count": 312}
  kept, reason = f.keep(scores)  # cheap; applies the configured thresholds

Stored scores (e.g. a JSONL column next to the curated data) can be fed back to `keep` of a filter
built with other thresholds. Parameters that change *what is measured* (a stop-word list, the C4
line rules that rewrite text) are not thresholds; changing them needs `score` again.

Filters are frozen dataclasses whose fields are their settings; `register` adds a class under its
`name` so configs can name filters as strings: `get("gopher_quality", min_words=20)`.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import ClassVar, TypeVar

from jaxpretrain.curate.document import Document

Scores = dict[str, float]


@dataclasses.dataclass(frozen=True)
class FilterResult:
    """What one filter (or a chain) decided about one document.

    Attributes:
      document: the document after the filter (C4's line rules rewrite text; others pass it on).
      kept: whether the document survives.
      reason: '<filter name>:<rule>' of the first failed rule, None when kept.
      scores: the statistics the decision was made from.
    """

    document: Document
    kept: bool
    reason: str | None
    scores: Scores


class Filter(abc.ABC):
    """Base of all filters. Subclasses are frozen dataclasses and set the class attribute `name`."""

    name: ClassVar[str] = ""

    @abc.abstractmethod
    def score(self, doc: Document) -> Scores:
        """Threshold-free statistics of `doc` (floats; booleans as 0.0/1.0)."""

    @abc.abstractmethod
    def keep(self, scores: Mapping[str, float]) -> tuple[bool, str | None]:
        """(True, None) if scores pass every threshold, else (False, '<name>:<failed rule>')."""

    def score_batch(self, docs: Sequence[Document]) -> list[Scores]:
        """`score` of each of `docs`, in order; filters that batch (a model) override this."""
        return [self.score(doc) for doc in docs]

    def apply(self, doc: Document) -> FilterResult:
        """Scores `doc` and decides; subclasses that rewrite text override this."""
        scores = self.score(doc)
        kept, reason = self.keep(scores)
        return FilterResult(doc, kept, reason, scores)

    def _first_failure(self, failed_rules: Iterable[tuple[str, bool]]) -> tuple[bool, str | None]:
        """Helper for `keep`: rules in order as (rule name, failed?) -> the first failure."""
        for rule, failed in failed_rules:
            if failed:
                return False, f"{self.name}:{rule}"
        return True, None


_REGISTRY: dict[str, type[Filter]] = {}
FilterClass = TypeVar("FilterClass", bound=type[Filter])


def register(cls: FilterClass) -> FilterClass:
    """Class decorator: makes `cls` reachable as `get(cls.name)`."""
    if not cls.name:
        raise ValueError(f"Filter class {cls.__qualname__} has no `name`; set the class attribute.")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        owner = _REGISTRY[cls.name].__qualname__
        raise ValueError(
            f"Filter name {cls.name!r} is already registered by {owner}; pick another."
        )
    _REGISTRY[cls.name] = cls
    return cls


def get(name: str, **settings) -> Filter:
    """Builds the registered filter `name` with `settings` overriding its defaults."""
    _import_builtin_filters()
    if name not in _REGISTRY:
        raise KeyError(f"Unknown filter {name!r}; registered filters are {sorted(_REGISTRY)}.")
    return _REGISTRY[name](**settings)


def registered_names() -> list[str]:
    """Names of all registered filters, sorted."""
    _import_builtin_filters()
    return sorted(_REGISTRY)


def _import_builtin_filters() -> None:
    # Importing the package registers the built-in filters (each module registers on import).
    import jaxpretrain.curate.filters  # noqa: F401


def apply_filters(doc: Document, filters: Sequence[Filter], score_all: bool = True) -> FilterResult:
    """Runs `filters` in order; scores are merged under '<filter name>.<score key>'.

    With `score_all` every filter scores the document even after one rejected it, so any threshold
    can be re-tuned later from the stored scores (`decide`); without it the chain stops at the
    first rejection (cheaper). The reason is always the first failure in filter order.
    """
    merged: Scores = {}
    first_reason: str | None = None
    for current in filters:
        result = current.apply(doc)
        doc = result.document
        merged.update({f"{current.name}.{key}": value for key, value in result.scores.items()})
        if not result.kept and first_reason is None:
            first_reason = result.reason
            if not score_all:
                break
    return FilterResult(doc, first_reason is None, first_reason, merged)


def decide(
    merged_scores: Mapping[str, float], filters: Sequence[Filter]
) -> tuple[bool, str | None]:
    """Re-applies `filters`' thresholds to scores stored by `apply_filters` (no text needed)."""
    for current in filters:
        prefix = f"{current.name}."
        own = {
            key[len(prefix) :]: value
            for key, value in merged_scores.items()
            if key.startswith(prefix)
        }
        if not own:
            raise KeyError(
                f"No stored scores for filter {current.name!r}; re-run apply_filters with it "
                "(and score_all=True) before re-deciding."
            )
        kept, reason = current.keep(own)
        if not kept:
            return kept, reason
    return True, None


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, 0.0 for an empty denominator (empty docs have no repetition)."""
    return numerator / denominator if denominator else 0.0
