"""MinHash signatures of word n-gram shingles, vectorised over batches of documents.

Permutations follow datasketch >= 2.0 (`MinHash(scheme="affine32")`, its default): 32-bit shingle
hashes are pre-mixed with the MurmurHash3 finalizer, then permutation k maps h -> a_k * h + b_k
mod 2^32 with odd a_k, and (a, b) come from `np.random.RandomState(seed)` exactly as datasketch
draws them. With `shingle_hash="sha1"` the shingle hash is datasketch's `sha1_hash32` of the UTF-8
shingle, so signatures equal `datasketch.MinHash(num_perm, seed).update_batch(shingles)` bit for
bit; the default "fast" hash combines per-word CRC32s with numpy and is several times quicker.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import zlib
from collections.abc import Sequence

import numpy as np

_NON_WORD_RE = re.compile(r"[^\w\s]+")
_DIGITS_RE = re.compile(r"\d")
EMPTY_SIGNATURE_VALUE = np.uint32(0xFFFFFFFF)


@dataclasses.dataclass(frozen=True)
class MinHashConfig:
    """MinHash LSH settings; defaults are FineWeb's (Penedo et al. 2024, §3.4): word 5-gram
    shingles, 112 permutations split into 14 bands of 8 rows, i.e. a ~0.72 similarity threshold
    and a ~92% chance that a pair at Jaccard 0.8 shares a bucket.

    Attributes:
      ngram: words per shingle.
      num_perm: permutations (signature length).
      bands, rows: LSH banding; bands * rows must not exceed num_perm.
      seed: permutation seed (same seed, same signatures, on any machine).
      shingle_hash: 'fast' (vectorised CRC32 combination) or 'sha1' (datasketch-identical).
      verify_threshold: if set, a bucket collision only joins two documents whose signatures
        agree on at least this fraction of permutations (an estimate of their Jaccard); None
        joins every colliding pair, as FineWeb does.
      batch_size: documents hashed together in one vectorised call.
    """

    ngram: int = 5
    num_perm: int = 112
    bands: int = 14
    rows: int = 8
    seed: int = 1
    shingle_hash: str = "fast"
    verify_threshold: float | None = None
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.bands * self.rows > self.num_perm:
            raise ValueError(
                f"MinHashConfig bands={self.bands} x rows={self.rows} needs at least "
                f"{self.bands * self.rows} permutations but num_perm={self.num_perm}; raise "
                "num_perm or lower bands/rows."
            )
        if self.shingle_hash not in ("fast", "sha1"):
            raise ValueError(
                f"MinHashConfig.shingle_hash={self.shingle_hash!r}; use 'fast' or 'sha1'."
            )
        if self.ngram < 1:
            raise ValueError(f"MinHashConfig.ngram={self.ngram} must be >= 1.")

    def candidate_probability(self, jaccard: float) -> float:
        """LSH theory: P(two documents at this Jaccard share at least one band bucket)."""
        return 1.0 - (1.0 - jaccard**self.rows) ** self.bands


def shingle_words(text: str) -> list[str]:
    """Words used for shingling: lowercase, punctuation removed, digits mapped to '0'
    (so dates and counters in templated pages do not hide near-duplicates)."""
    return _DIGITS_RE.sub("0", _NON_WORD_RE.sub(" ", text.lower())).split()


def shingles(text: str, ngram: int = 5) -> list[str]:
    """Distinct-or-not word n-grams joined by spaces; a text shorter than `ngram` words is one
    shingle, an empty text has none."""
    words = shingle_words(text)
    if not words:
        return []
    if len(words) < ngram:
        return [" ".join(words)]
    return [" ".join(words[i : i + ngram]) for i in range(len(words) - ngram + 1)]


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) uint32 arrays drawn as datasketch's affine32 scheme draws them."""
    generator = np.random.RandomState(seed)
    a = generator.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = generator.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def _fmix32(values: np.ndarray) -> np.ndarray:
    values = values ^ (values >> np.uint32(16))
    values = values * np.uint32(0x85EBCA6B)
    values = values ^ (values >> np.uint32(13))
    values = values * np.uint32(0xC2B2AE35)
    return values ^ (values >> np.uint32(16))


def _fmix64(values: np.ndarray) -> np.ndarray:
    values = values ^ (values >> np.uint64(33))
    values = values * np.uint64(0xFF51AFD7ED558CCD)
    values = values ^ (values >> np.uint64(33))
    values = values * np.uint64(0xC4CEB9FE1A85EC53)
    return values ^ (values >> np.uint64(33))


# Odd 64-bit multipliers, one per position inside a shingle (up to 64 words per shingle).
_POSITION_MULTIPLIERS = np.random.RandomState(0x5EED).randint(
    0, 1 << 63, 64, dtype=np.uint64
) * np.uint64(2) + np.uint64(1)


def _fast_shingle_hashes(text: str, ngram: int) -> np.ndarray:
    words = shingle_words(text)
    if not words:
        return np.empty(0, np.uint32)
    word_hashes = np.fromiter(
        (zlib.crc32(word.encode("utf-8")) for word in words), np.uint64, len(words)
    )
    width = min(ngram, len(words))
    count = len(words) - width + 1
    combined = np.full(count, np.uint64(width))  # the width term separates short-doc shingles
    for position in range(width):
        combined += word_hashes[position : position + count] * _POSITION_MULTIPLIERS[position]
    return (_fmix64(combined) >> np.uint64(32)).astype(np.uint32)


def _sha1_shingle_hashes(text: str, ngram: int) -> np.ndarray:
    return np.array(
        [
            int.from_bytes(hashlib.sha1(s.encode("utf-8")).digest()[:4], "little")
            for s in shingles(text, ngram)
        ],
        dtype=np.uint32,
    )


class MinHasher:
    """Computes signatures for a `MinHashConfig`: `signatures(texts) -> uint32[len(texts), P]`."""

    # Shingle x permutation cells per vectorised block: ~0.5 MB of uint32, cache-sized (measured
    # fastest; 16 MB blocks were ~40% slower).
    _BLOCK_CELLS = 1 << 17

    def __init__(self, config: MinHashConfig | None = None):
        self.config = config = config or MinHashConfig()
        self._a, self._b = permutations(config.num_perm, config.seed)
        self._hash = _fast_shingle_hashes if config.shingle_hash == "fast" else _sha1_shingle_hashes

    def shingle_hashes(self, text: str) -> np.ndarray:
        """uint32 hashes of `text`'s shingles (duplicates kept; they do not change a minimum)."""
        return self._hash(text, self.config.ngram)

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """uint32[len(texts), num_perm]; a text without words gets all 0xFFFFFFFF."""
        per_doc = [self.shingle_hashes(text) for text in texts]
        out = np.full((len(texts), self.config.num_perm), EMPTY_SIGNATURE_VALUE, np.uint32)
        max_shingles = max(1, self._BLOCK_CELLS // self.config.num_perm)
        start = 0
        while start < len(per_doc):
            # Pack whole documents into one block, then reduce each document's rows with reduceat.
            stop, cells = start, 0
            while stop < len(per_doc) and (
                stop == start or cells + len(per_doc[stop]) <= max_shingles
            ):
                cells += len(per_doc[stop])
                stop += 1
            block_docs = [i for i in range(start, stop) if len(per_doc[i])]
            if block_docs:
                hashes = _fmix32(np.concatenate([per_doc[i] for i in block_docs]))
                permuted = hashes[:, None] * self._a[None, :] + self._b[None, :]  # wraps mod 2^32
                offsets = np.cumsum([0] + [len(per_doc[i]) for i in block_docs[:-1]])
                out[block_docs] = np.minimum.reduceat(permuted, offsets, axis=0)
            start = stop
        return out


def estimated_jaccard(signature_a: np.ndarray, signature_b: np.ndarray) -> float:
    """Fraction of permutations on which two signatures agree (unbiased Jaccard estimate)."""
    return float(np.mean(signature_a == signature_b))


def has_words(signatures: np.ndarray) -> np.ndarray:
    """bool[N]: False for texts without words (their signature is all EMPTY_SIGNATURE_VALUE);
    they are left out of LSH, where they would all share buckets (exact dedup handles them)."""
    return ~np.all(signatures == EMPTY_SIGNATURE_VALUE, axis=1)


def band_buckets(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """uint64[N, bands]: one 64-bit bucket key per band (a mix of that band's `rows` values)."""
    n = signatures.shape[0]
    banded = signatures[:, : bands * rows].reshape(n, bands, rows).astype(np.uint64)
    keys = np.zeros((n, bands), np.uint64)
    for row in range(rows):
        keys = _fmix64(keys ^ (banded[:, :, row] * _POSITION_MULTIPLIERS[row]))
    return keys
