"""Decontamination: remove training documents that share a long word n-gram with an evaluation set.

GPT-3 (Brown et al. 2020, Appendix C) and Llama 2 / PaLM after it measured benchmark overlap
with 13-gram matches over lowercased words; few pipelines remove it by default. Name the eval
sets in the data config and the documents that quote them are removed, each with the reason
'decontaminate:<eval set>:<eval document>', so report.json lists the overlaps by example:

    cfg.filters.chains.web = (*cfg.filters.chains.web, "decontaminate")
    cfg.filters.settings.decontaminate = {"eval_sets": {"mmlu": "gs://b/mmlu_test.jsonl"}}

An eval set file is JSONL (one object per line; its `text_field`, and `id` when present, name the
eval document) or plain text (one eval document per non-blank line). Words are maximal runs of
letters and digits, lowercased, so punctuation and case do not hide a copy. An eval document
shorter than `ngram_size` words cannot match (it has no n-gram).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from jaxpretrain import paths
from jaxpretrain.curate.document import Document
from jaxpretrain.curate.filters.base import Filter, Scores, register

_WORD_RE = re.compile(r"[^\W_]+")
_ROLL = np.uint64(0x100000001B3)  # odd multiplier of the rolling n-gram key


def normalized_words(text: str) -> list[str]:
    """Lowercased runs of letters and digits: "Hello, World!" -> ["hello", "world"]."""
    return _WORD_RE.findall(text.lower())


def ngram_keys(words: list[str], n: int) -> np.ndarray:
    """uint64 keys of the word n-grams of `words`, one per start position (none if too short).

    Word hashes are process-independent (blake2b), so keys built in one process match another's.
    """
    if len(words) < n:
        return np.zeros(0, np.uint64)
    distinct = {word: _word_hash(word) for word in set(words)}
    hashes = np.fromiter((distinct[word] for word in words), np.uint64, len(words))
    keys = hashes[: len(words) - n + 1].copy()
    for offset in range(1, n):
        keys = keys * _ROLL + hashes[offset : offset + keys.size]  # wraps mod 2**64 on purpose
    return keys


def _word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


@dataclasses.dataclass(frozen=True)
class EvalIndex:
    """Sorted n-gram keys of all eval documents and, for each key, its first eval document."""

    keys: np.ndarray  # uint64[K], sorted, unique
    owners: np.ndarray  # int64[K], index into `documents`
    documents: tuple[tuple[str, str], ...]  # (eval set name, eval document id)

    def first_match(self, keys: np.ndarray) -> tuple[int, int]:
        """(number of `keys` found, owner of the first one found in order or -1)."""
        if keys.size == 0 or self.keys.size == 0:
            return 0, -1
        positions = np.minimum(np.searchsorted(self.keys, keys), self.keys.size - 1)
        found = self.keys[positions] == keys
        if not found.any():
            return 0, -1
        return int(found.sum()), int(self.owners[positions[np.argmax(found)]])


def _eval_documents(name: str, path: str, text_field: str) -> list[tuple[str, str]]:
    """(eval document id, text) of one eval set file; raises naming the file when unreadable."""
    file = paths.resolve(path)
    if not file.exists():
        raise ValueError(
            f"Decontamination eval set {name!r}: file {path} does not exist; fix "
            "filters.settings.decontaminate.eval_sets."
        )
    lines = file.read_text(encoding="utf-8").splitlines()
    if not file.name.endswith(".jsonl"):
        return [(f"{file.name}:{i}", line) for i, line in enumerate(lines, 1) if line.strip()]
    documents = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            text = record[text_field]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(
                f"Decontamination eval set {name!r}: {path} line {number} is not a JSON object "
                f"with a {text_field!r} field; fix the file or set text_field."
            ) from None
        documents.append((str(record.get("id", f"{file.name}:{number}")), str(text)))
    return documents


@functools.lru_cache(maxsize=4)
def build_index(
    eval_sets: tuple[tuple[str, str], ...], ngram_size: int, text_field: str
) -> EvalIndex:
    """The n-gram index of `eval_sets` ((name, path) pairs); built once per process."""
    documents: list[tuple[str, str]] = []
    key_parts, owner_parts = [], []
    for name, path in eval_sets:
        for doc_id, text in _eval_documents(name, path, text_field):
            keys = ngram_keys(normalized_words(text), ngram_size)
            key_parts.append(keys)
            owner_parts.append(np.full(keys.size, len(documents), np.int64))
            documents.append((name, doc_id))
    all_keys = np.concatenate(key_parts) if key_parts else np.zeros(0, np.uint64)
    all_owners = np.concatenate(owner_parts) if owner_parts else np.zeros(0, np.int64)
    # np.unique returns each key's first index: the earliest eval document owns a shared n-gram.
    keys, first = np.unique(all_keys, return_index=True)
    return EvalIndex(keys, all_owners[first], tuple(documents))


@register
@dataclasses.dataclass(frozen=True)
class Decontaminate(Filter):
    """Removes a document sharing more than `max_shared_ngrams` (0) word `ngram_size`-grams (13)
    with any eval set. `eval_sets` maps an eval set's name to its file (local or gs://).

    Scores: `shared_ngrams` (the document's n-grams found in the eval sets) and `eval_document`
    (index of the eval document of the first one, -1 for none); the index is the eval sets'
    own, so changing `eval_sets` needs `score` again (only `max_shared_ngrams` re-tunes).
    """

    name: ClassVar[str] = "decontaminate"
    eval_sets: Mapping[str, str] = dataclasses.field(default_factory=dict)
    ngram_size: int = 13
    text_field: str = "text"
    max_shared_ngrams: int = 0

    def __post_init__(self):
        if self.ngram_size < 1:
            raise ValueError(f"ngram_size={self.ngram_size} must be at least 1.")
        if not self.eval_sets:
            raise ValueError(
                "The decontaminate filter has no eval sets; set "
                "filters.settings.decontaminate.eval_sets = {name: file}."
            )

    def _index(self) -> EvalIndex:
        return build_index(tuple(sorted(self.eval_sets.items())), self.ngram_size, self.text_field)

    def score(self, doc: Document) -> Scores:
        keys = ngram_keys(normalized_words(doc.text), self.ngram_size)
        shared, owner = self._index().first_match(keys)
        return {"shared_ngrams": float(shared), "eval_document": float(owner)}

    def keep(self, scores: Mapping[str, float]) -> tuple[bool, str | None]:
        if scores["shared_ngrams"] <= self.max_shared_ngrams:
            return True, None
        eval_set, eval_doc = self._index().documents[int(scores["eval_document"])]
        return False, f"{self.name}:{eval_set}:{eval_doc}"
