"""The bounded, deterministic sample of train text the tokenizer learns from.

A document's rank is a stable hash of (tokenizer seed, source, id); the sample is the longest
prefix of all train documents in rank order whose texts fit in `tokenizer.max_training_bytes`.
Each partition computes its own sample while streaming (memory: the budget), and merging the
partitions' samples gives exactly the sample of the whole corpus, so the tokenizer is the same
for any number of workers and any partitioning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import ml_collections

from jaxpretrain.curate import stages
from jaxpretrain.curate.document import Document

Partition = Callable[[], Iterable[Document]]


class TrainingSample:
    """The train documents with the smallest ranks whose texts fit in `max_bytes` together.

    A rank is (hash of seed, source and id; order key), so the sample does not depend on the
    order documents arrive in nor on how they are partitioned: it is the longest prefix of all
    documents in rank order that fits. Once a document is dropped for room, no document ranked
    at or after it can enter (`threshold`); that keeps the prefix property whatever the order.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.threshold: tuple | None = None
        self._bytes = 0
        # Max-heap by rank: entries (_Descending(rank), size in bytes, text).
        self._heap: list[tuple] = []

    def offer(self, rank: tuple, text: str) -> None:
        if self.threshold is not None and rank >= self.threshold:
            return
        text = clip_utf8(text, self.max_bytes)
        size = len(text.encode("utf-8"))
        self._bytes += size
        heapq.heappush(self._heap, (_Descending(rank), size, text))
        while self._bytes > self.max_bytes:
            dropped, _, _ = self._pop_largest()
            self._lower_threshold(dropped.rank)

    def _pop_largest(self) -> tuple:
        entry = heapq.heappop(self._heap)
        self._bytes -= entry[1]
        return entry

    def _lower_threshold(self, rank: tuple) -> None:
        """Nothing ranked at or after `rank` belongs to the sample: forget what is held there."""
        if self.threshold is None or rank < self.threshold:
            self.threshold = rank
        while self._heap and self._heap[0][0].rank >= self.threshold:
            self._pop_largest()

    def merge(self, other: TrainingSample) -> None:
        """Adds another partition's sample: the result is the sample of both partitions."""
        if other.threshold is not None:
            # The other partition had to drop a document there: the whole corpus's prefix
            # ends before it too, so entries of ours ranked after it go as well.
            self._lower_threshold(other.threshold)
        for key, _, text in other._heap:
            self.offer(key.rank, text)

    @property
    def num_bytes(self) -> int:
        return self._bytes

    def texts(self) -> list[str]:
        """The sampled texts in rank order."""
        return [text for _, _, text in sorted(self._heap, key=lambda entry: entry[0].rank)]


@dataclasses.dataclass(frozen=True)
class _Descending:
    """Orders ranks backwards, so Python's min-heap pops the largest rank first."""

    rank: tuple

    def __lt__(self, other: _Descending) -> bool:
        return self.rank > other.rank


def clip_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of `text` whose UTF-8 encoding fits in `max_bytes` (whole characters)."""
    if len(text) * 4 <= max_bytes:
        return text
    encoded = text[:max_bytes].encode("utf-8")[:max_bytes]
    return encoded.decode("utf-8", errors="ignore")


def sample_rank(doc: Document, seed: int) -> tuple[int, str]:
    """A document's place in the tokenizer sample: a stable hash of seed, source and id (a
    document keeps its chance when the corpus grows), then its order key to break ties."""
    key = f"{seed}\x1f{doc.source}\x1f{doc.id}".encode()
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "little"), stages.order_key(doc)


def _sample_partition(partition: Partition, cfg: ml_collections.ConfigDict) -> TrainingSample:
    sample = TrainingSample(int(cfg.tokenizer.max_training_bytes))
    for document in partition():
        if stages.assign_split(document, cfg) == stages.TRAIN_SPLIT:
            sample.offer(sample_rank(document, int(cfg.tokenizer.seed)), document.text)
    return sample


def tokenizer_training_sample(
    partitions: Sequence[Partition],
    cfg: ml_collections.ConfigDict,
    run_on_partitions: Callable[[Callable[..., Any], Iterable[tuple]], Iterator[Any]] | None = None,
) -> list[str]:
    """The train texts the tokenizer learns from: at most `tokenizer.max_training_bytes` UTF-8
    bytes, chosen by a stable hash of each document's id (see `TrainingSample`), in rank order.

    The same for any number of workers and any partitioning of the same documents.
    `run_on_partitions(task, argument_tuples)` runs the per-partition pass and yields its
    results (default: here, one after the other; finalize gives its process pool). Each
    partition's sample is merged as it arrives, so memory holds about two budgets, plus one
    per worker process.
    """
    run_on_partitions = run_on_partitions or (lambda task, args: (task(*a) for a in args))
    merged = TrainingSample(int(cfg.tokenizer.max_training_bytes))
    for sample in run_on_partitions(_sample_partition, ((p, cfg) for p in partitions)):
        merged.merge(sample)
    return merged.texts()
