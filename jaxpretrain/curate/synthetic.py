"""A generated web-like corpus with planted duplicates, for scale tests and `benchmark.py data`.

    planted = synthetic.write_web_corpus("/tmp/web", num_documents=10_000, num_files=8)

Documents read like crawled English pages: Zipf-distributed common words in sentences and
paragraphs, curly quotes and accented names now and then, and some boilerplate lines (menus,
cookie notices) that the C4/FineWeb line rules act on. Every record has an `id`, a `text` and a
`url`. A share of documents are planted copies of an earlier one:

  exact      the same text with other whitespace and capitalisation (exact dedup catches it),
  near       2% of the words replaced (word 5-gram Jaccard ~0.8: MinHash at 0.8 should catch most),
  distant    half of the words replaced (Jaccard ~0.03: no dedup may remove it).

`PlantedCopy` records say which is which, so a test can compare removals with the truth.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections.abc import Iterator

# ~200 frequent English words (function words first, so a Zipf draw makes them most common, as in
# real text: Gopher's stop-word rule and fastText's language id both need them).
_WORD_LIST = (
    "the of and to a in is it you that he was for on are with as I his they be at one have this "
    "from or had by not word but what some we can out other were all there when up use your how "
    "said an each she which do their time if will way about many then them write would like so "
    "these her long make thing see him two has look more day could go come did number sound no "
    "most people my over know water than call first who may down side been now find any new work "
    "part take get place made live where after back little only round man year came show every "
    "good me give our under name very through just form sentence great think say help low line "
    "differ turn cause much mean before move right boy old too same tell does set three want air "
    "well also play small end put home read hand port large spell add even land here must big "
    "high such follow act why ask men change went light kind off need house picture try us again "
    "animal point mother world near build self earth father head stand own page should country "
    "found answer school grow study still learn plant cover food sun four between state keep eye "
    "never last let thought city tree cross farm hard start might story saw far sea draw left late"
)
_WORDS = tuple(_WORD_LIST.split())
_NAMES = ("José", "Zoë", "Renée", "Müller", "Dvořák", "Ångström", "Łukasz", "Chloé")
_BOILERPLATE = (
    "Home | About | Contact | Blog",
    "This website uses cookies to improve your experience.",
    "Share on Facebook",
    "Read more",
    "Copyright 2024 All rights reserved",
)
_ZIPF_WEIGHTS = [1.0 / (rank + 1) ** 0.5 for rank in range(len(_WORDS))]


@dataclasses.dataclass(frozen=True)
class PlantedCopy:
    """Document `copy_id` was made from `original_id` as `kind` ('exact', 'near', 'distant')."""

    copy_id: str
    original_id: str
    kind: str


def _sentence(rng: random.Random) -> str:
    words = rng.choices(_WORDS, weights=_ZIPF_WEIGHTS, k=rng.randint(6, 22))
    if rng.random() < 0.15:
        words[rng.randrange(len(words))] = rng.choice(_NAMES)
    if rng.random() < 0.1:
        position = rng.randrange(len(words))
        words[position] = f"“{words[position]}”"
    words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice(".........!?")


def _page(rng: random.Random) -> str:
    paragraphs = [
        " ".join(_sentence(rng) for _ in range(rng.randint(2, 7))) for _ in range(rng.randint(2, 9))
    ]
    if rng.random() < 0.5:
        paragraphs.insert(0, rng.choice(_BOILERPLATE))
    if rng.random() < 0.3:
        paragraphs.append(rng.choice(_BOILERPLATE))
    return "\n\n".join(paragraphs)


def _replace_words(text: str, fraction: float, rng: random.Random) -> str:
    words = text.split(" ")
    for position in rng.sample(range(len(words)), max(1, int(len(words) * fraction))):
        words[position] = rng.choice(_WORDS)
    return " ".join(words)


def web_like_records(
    num_documents: int,
    seed: int = 0,
    exact_fraction: float = 0.03,
    near_fraction: float = 0.05,
    distant_fraction: float = 0.02,
) -> Iterator[tuple[dict[str, str], PlantedCopy | None]]:
    """(record, planted copy or None) for `num_documents` documents, deterministic in `seed`.

    Copies are made of recent originals (within the last 1,000 documents), so memory stays
    bounded however many documents are generated.
    """
    rng = random.Random(seed)
    recent: list[tuple[str, str]] = []
    for index in range(num_documents):
        doc_id = f"web-{seed}-{index:09d}"
        draw = rng.random()
        planted = None
        if recent and draw < exact_fraction + near_fraction + distant_fraction:
            original_id, original = rng.choice(recent)
            if draw < exact_fraction:
                kind, text = "exact", original.replace(" ", "  ").upper()
            elif draw < exact_fraction + near_fraction:
                kind, text = "near", _replace_words(original, 0.02, rng)
            else:
                kind, text = "distant", _replace_words(original, 0.5, rng)
            planted = PlantedCopy(doc_id, original_id, kind)
        else:
            text = _page(rng)
            recent.append((doc_id, text))
            if len(recent) > 1_000:
                recent.pop(rng.randrange(len(recent)))
        record = {"id": doc_id, "text": text, "url": f"https://site{index % 997}.example/{index}"}
        yield record, planted


def write_web_corpus(
    directory: str | os.PathLike, num_documents: int, num_files: int = 4, seed: int = 0
) -> list[PlantedCopy]:
    """Writes `num_documents` web-like records as `num_files` JSONL files (documents dealt in
    order, file after file) and returns the planted copies."""
    os.makedirs(directory, exist_ok=True)
    per_file = -(-num_documents // num_files)
    planted: list[PlantedCopy] = []
    records = web_like_records(num_documents, seed)
    for file_index in range(num_files):
        path = os.path.join(directory, f"part-{file_index:05d}.jsonl")
        with open(path, "w", encoding="utf-8") as out:
            for record, copy in _take(records, per_file):
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                if copy is not None:
                    planted.append(copy)
    return planted


def _take(iterator: Iterator, count: int) -> Iterator:
    for _, item in zip(range(count), iterator, strict=False):
        yield item
