"""T5 span corruption (Raffel et al. 2020): drop random spans, predict them after sentinels.

Per raw window of a document's tokens, as T5's `span_corruption` preprocessor does (its
arithmetic matched; t5/data/preprocessors.py):

1. Noise mask (`random_spans_noise_mask`, counts in `noise_span_counts`): num_noise_tokens =
   round(length * noise_density) clipped to [1, length - 1]; num_noise_spans =
   round(num_noise_tokens / mean_noise_span_length), at least 1. The noise tokens and the
   non-noise tokens are each cut into that many non-empty spans, every cut equally likely
   (`_random_segmentation`), and the spans interleave starting with non-noise, so a window
   always starts with non-noise and ends with noise. Rounding is T5's: float32 products and
   quotients rounded half to even (TF's `tf.round`), which at ties differs from float64 (190
   tokens at 0.15 give 29 noise tokens, not 28). A one-token window is masked as if it had two
   tokens and cut back, as in T5: inputs keep its token, targets are sentinel 0 alone.
2. inputs = the window with its k-th noise span replaced by `sentinels[k]` (<extra_id_k>; the
   ids decrease from the first span), then eos. targets = `sentinels[k]` + the k-th noise span,
   for every span in order, then eos. (T5 builds targets as the window with each non-noise span
   replaced by its sentinel, which is this same sequence.) The eos on both is T5's: its task
   features append eos after the preprocessor, and `random_spans_helper` counts it.
3. Row: `rows.prefix_target_example(inputs, targets)`: `[bos] + inputs + targets` fed shifted by
   one; bos and the inputs attend bidirectionally, the targets causally; loss on the targets.
   The row has `len(inputs) + len(targets)` positions.

Window length (`lengths_for_row`): the document is cut into consecutive windows of
`tokens_length` tokens (the last one may be shorter and is masked at its own length, as T5 does
with short chunks), `tokens_length` the longest whose row fits `seq_len`. Row length grows with
the window, so the full windows are the longest rows.

Where this differs from T5, and why:
- Windows never cross documents. T5 concatenates documents without a separator before
  splitting; here each document is windowed alone and the packer fills the rows.
- A window never needs more sentinels than the tokenizer has (100). T5 silently runs past its
  extra ids into ordinary vocabulary; here ids below the sentinels are the paradigm and control
  tokens, so `lengths_for_row` shortens the window instead, and then sizes it so that a whole
  number of examples fill a row (dense noise at long `seq_len`, e.g. UL2's X-denoisers).
- A window with fewer non-noise tokens than noise spans (only with noise_density > ~0.5 and
  short windows) gets as many spans as non-noise tokens; T5's segmentation fails there.
- Randomness comes from numpy's `rng` (seeded by seed, epoch and document: masks change every
  epoch and repeat on resume), not TF stateless seeds: same distribution, different draws.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import ml_collections
import numpy as np

from jaxpretrain import tokenizer
from jaxpretrain.objectives import losses, registry, rows
from jaxpretrain.tokenizer import SpecialIds

# A window needs one non-noise and one noise token: inputs [a, s0, eos], targets [s0, b, eos].
MIN_TOKENS_LENGTH = 2


class SpanLengths(NamedTuple):
    """Sizes of span-corruption examples for one row length (see `lengths_for_row`)."""

    tokens_length: int  # raw document tokens per window
    inputs_length: int  # len(inputs) of a full window, eos included
    targets_length: int  # len(targets) of a full window, eos included
    examples_per_row: int  # full-window examples that fit in one row together


def random_spans_helper(
    inputs_length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int]:
    """T5's `random_spans_helper`: raw tokens per window and targets length for an inputs length.

    Counts what T5's span corruption counts: one sentinel per noise span in the inputs, one per
    span in the targets, and one eos on each. `tokens_length` is the largest number of raw
    tokens whose inputs (non-noise tokens + sentinels + eos) fit `inputs_length`;
    `targets_length` is then noise tokens + sentinels + eos. Arithmetic is T5's, kept as is:
    Python float64 rounding without the mask's clipping, and, at noise_density == 0.5 only, one
    token fewer when the targets would be longer than the inputs. For inputs_length 512, density
    0.15, mean span 3: (568, 114).

    The mask itself rounds in float32 and clips its counts, so for a few settings (mean span 64
    with short inputs, or the 0.5 adjustment) the real lengths differ from these by a token;
    `lengths_for_row` uses the mask's own counts and is what the objective sizes windows with.
    """

    def lengths(tokens_length: int) -> tuple[int, int]:
        num_noise_tokens = int(round(tokens_length * noise_density))
        num_nonnoise_tokens = tokens_length - num_noise_tokens
        num_noise_spans = int(round(num_noise_tokens / mean_noise_span_length))
        return (
            num_nonnoise_tokens + num_noise_spans + 1,
            num_noise_tokens + num_noise_spans + 1,
        )

    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    inputs_length, targets_length = lengths(tokens_length)
    # T5's "minor hack": at density 0.5 keep targets no longer than the (round) inputs length.
    if noise_density == 0.5 and targets_length > inputs_length:
        tokens_length -= 1
        targets_length -= 1
    return tokens_length, targets_length


def noise_span_counts(
    length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int]:
    """(num_noise_tokens, num_noise_spans) of `random_spans_noise_mask` for a window of `length`.

    T5's arithmetic on max(length, 2) tokens: float32, rounded half to even, noise tokens clipped
    to [1, length - 1], spans to at least 1 (and, unlike T5, which fails there, to at most the
    number of non-noise tokens). A window of one token uses the counts of two and keeps only the
    first, non-noise, token.
    """
    length = max(int(length), MIN_TOKENS_LENGTH)
    # T5 computes in TF float32 (a Python float meets a float32 tensor and becomes float32);
    # numpy's float32 ops round the same way, and np.round, like tf.round, ties to even.
    num_noise_tokens = int(np.round(np.float32(length) * np.float32(noise_density)))
    num_noise_tokens = min(max(num_noise_tokens, 1), length - 1)
    num_noise_spans = int(
        np.round(np.float32(num_noise_tokens) / np.float32(mean_noise_span_length))
    )
    num_noise_spans = min(max(num_noise_spans, 1), length - num_noise_tokens)
    return num_noise_tokens, num_noise_spans


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Lengths [num_segments] of a uniformly random cut of num_items into non-empty segments.

    As T5: shuffle (num_segments - 1) segment starts among the num_items - 1 places after the
    first item; every composition of num_items into num_segments parts is equally likely.
    """
    first_in_segment = np.zeros(num_items, np.int64)
    first_in_segment[1:] = rng.permutation(np.arange(num_items - 1) < num_segments - 1)
    segment_id = np.cumsum(first_in_segment)
    return np.bincount(segment_id, minlength=num_segments)


def random_spans_noise_mask(
    length: int,
    rng: np.random.Generator,
    noise_density: float,
    mean_noise_span_length: float,
) -> np.ndarray:
    """T5's noise mask: bool [length], True on noise; random spans, non-noise first.

    Counts from `noise_span_counts`; the noise and non-noise tokens are cut into that many spans
    each by `_random_segmentation` and interleaved non-noise, noise, non-noise, ..., noise.
    Subject to the counts, every mask is equally likely.
    """
    if not 0 < noise_density < 1:
        raise ValueError(f"noise_density={noise_density} must be in (0, 1).")
    padded_length = max(int(length), MIN_TOKENS_LENGTH)
    num_noise_tokens, num_noise_spans = noise_span_counts(
        padded_length, noise_density, mean_noise_span_length
    )
    noise_span_lengths = _random_segmentation(num_noise_tokens, num_noise_spans, rng)
    nonnoise_span_lengths = _random_segmentation(
        padded_length - num_noise_tokens, num_noise_spans, rng
    )
    interleaved_lengths = np.stack([nonnoise_span_lengths, noise_span_lengths], axis=1).ravel()
    is_noise = np.tile([False, True], num_noise_spans)
    return np.repeat(is_noise, interleaved_lengths)[:length]


def noise_span_to_unique_sentinel(
    tokens: np.ndarray, noise_mask: np.ndarray, sentinel_ids: Sequence[int]
) -> np.ndarray:
    """`tokens` with the k-th run of noise replaced by the single token `sentinel_ids[k]`.

    Args:
      tokens: int token ids [n].
      noise_mask: bool [n], True where a token is noise.
      sentinel_ids: the sentinel of each run in order (`SpecialIds.sentinels`: decreasing ids).

    Returns:
      int32 [n - noise tokens + noise runs]. Raises ValueError when there are more runs than
      sentinels.
    """
    tokens = np.asarray(tokens, np.int32)
    noise_mask = np.asarray(noise_mask, bool)
    previous_is_noise = np.concatenate([[False], noise_mask[:-1]])
    first_noise = noise_mask & ~previous_is_noise
    num_runs = int(first_noise.sum())
    if num_runs > len(sentinel_ids):
        raise ValueError(
            f"{num_runs} noise spans need {num_runs} sentinels but the tokenizer has "
            f"{len(sentinel_ids)}; use a shorter window (see span_corruption.lengths_for_row)."
        )
    if num_runs == 0:
        return tokens.copy()
    run_index = np.cumsum(first_noise) - 1
    sentinels = np.asarray(sentinel_ids[:num_runs], np.int32)
    replaced = np.where(first_noise, sentinels[np.maximum(run_index, 0)], tokens)
    return replaced[~(noise_mask & previous_is_noise)].astype(np.int32)


def nonnoise_span_to_unique_sentinel(
    tokens: np.ndarray, noise_mask: np.ndarray, sentinel_ids: Sequence[int]
) -> np.ndarray:
    """T5's targets: `tokens` with the k-th run of non-noise replaced by `sentinel_ids[k]`."""
    return noise_span_to_unique_sentinel(tokens, ~np.asarray(noise_mask, bool), sentinel_ids)


def corrupt_spans(
    tokens: np.ndarray,
    rng: np.random.Generator,
    noise_density: float,
    mean_noise_span_length: float,
    special_ids: SpecialIds,
    *,
    append_eos: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """T5 span corruption of one window: (inputs, targets), int32.

    Args:
      tokens: int token ids [n], n >= 1 (one window of a document, no special tokens).
      rng: draws the noise mask (`random_spans_noise_mask`).
      noise_density: share of tokens that are noise, in (0, 1).
      mean_noise_span_length: mean noise span length, >= 1.
      special_ids: sentinels (one per span, in order) and eos.
      append_eos: append eos to both, as T5's task features do (False for a seqio preprocessor
        whose output features append eos themselves).

    Returns:
      inputs = non-noise tokens with each noise span replaced by its sentinel (+ eos), targets =
      each span's sentinel followed by its tokens (+ eos). For n >= 2 their lengths are
      `n - noise + spans (+ 1)` and `noise + spans (+ 1)` with (noise, spans) from
      `noise_span_counts`.
    """
    tokens = np.asarray(tokens, np.int32)
    if tokens.size == 0:
        raise ValueError("corrupt_spans needs a window of at least one token.")
    noise_mask = random_spans_noise_mask(tokens.size, rng, noise_density, mean_noise_span_length)
    inputs = noise_span_to_unique_sentinel(tokens, noise_mask, special_ids.sentinels)
    targets = nonnoise_span_to_unique_sentinel(tokens, noise_mask, special_ids.sentinels)
    if append_eos:
        inputs = np.append(inputs, np.int32(special_ids.eos)).astype(np.int32)
        targets = np.append(targets, np.int32(special_ids.eos)).astype(np.int32)
    return inputs, targets


def example_lengths(
    tokens_length: int,
    noise_density: float,
    mean_noise_span_length: float,
    *,
    append_eos: bool = True,
) -> tuple[int, int, int]:
    """(inputs_length, targets_length, noise spans) of `corrupt_spans` on a window of n >= 2."""
    num_noise_tokens, num_noise_spans = noise_span_counts(
        tokens_length, noise_density, mean_noise_span_length
    )
    eos = int(append_eos)
    return (
        tokens_length - num_noise_tokens + num_noise_spans + eos,
        num_noise_tokens + num_noise_spans + eos,
        num_noise_spans,
    )


def min_seq_len(
    noise_density: float, mean_noise_span_length: float, *, extra_tokens: int = 0
) -> int:
    """Positions of the smallest example (a two-token window): the least seq_len that works."""
    inputs_length, targets_length, _ = example_lengths(
        MIN_TOKENS_LENGTH, noise_density, mean_noise_span_length
    )
    return extra_tokens + inputs_length + targets_length


@functools.lru_cache(maxsize=256)
def lengths_for_row(
    seq_len: int,
    noise_density: float,
    mean_noise_span_length: float,
    *,
    max_noise_spans: int = tokenizer.NUM_SENTINELS,
    extra_tokens: int = 0,
) -> SpanLengths:
    """The window length of span-corruption examples packed into rows of `seq_len` positions.

    An example of a full window of n tokens has `extra_tokens + inputs + targets` positions
    (inputs and targets with their eos; `extra_tokens` is what a caller adds, e.g. UL2's
    paradigm token), which never decreases with n. The window is the largest n whose example
    fits `seq_len` — the decoder-only counterpart of choosing T5's inputs length: at mean span
    3, rows of `I + random_spans_helper(I, ...)[1]` positions give T5's
    `random_spans_helper(I, ...)[0]` raw tokens (for I = 512, density 0.15: 626 positions, 568
    tokens; where the helper's arithmetic and the mask's disagree, the mask's wins) — unless
    that window has more noise spans than `max_noise_spans` sentinels. Then the window is the
    largest that fits `seq_len // k` for the smallest k whose window needs few enough
    sentinels, so that k examples fill a row (at seq_len 4096, density 0.15, mean 3: k = 2,
    1860-token windows).
    Counts are the mask's own (`noise_span_counts`), so the example always fits.

    Raises:
      ValueError naming train.seq_len when not even a two-token window fits.
    """
    if max_noise_spans < 1:
        raise ValueError(f"max_noise_spans={max_noise_spans} must be >= 1.")

    def example_length(tokens_length: int) -> int:
        inputs_length, targets_length, _ = example_lengths(
            tokens_length, noise_density, mean_noise_span_length
        )
        return extra_tokens + inputs_length + targets_length

    def longest_window(budget: int) -> int:
        # Largest n in [2, budget] with example_length(n) <= budget (monotone), or 0 if none.
        if example_length(MIN_TOKENS_LENGTH) > budget:
            return 0
        low, high = MIN_TOKENS_LENGTH, budget  # example_length(low) fits; example_length(n) > n
        while low < high:
            middle = (low + high + 1) // 2
            if example_length(middle) <= budget:
                low = middle
            else:
                high = middle - 1
        return low

    for examples_per_row in range(1, seq_len + 1):
        tokens_length = longest_window(seq_len // examples_per_row)
        if tokens_length == 0:
            break
        inputs_length, targets_length, num_noise_spans = example_lengths(
            tokens_length, noise_density, mean_noise_span_length
        )
        if num_noise_spans <= max_noise_spans:
            return SpanLengths(tokens_length, inputs_length, targets_length, examples_per_row)
    raise ValueError(
        f"train.seq_len={seq_len} is too short for span corruption: the smallest example (a "
        f"two-token window) has {example_length(MIN_TOKENS_LENGTH)} positions; raise "
        "train.seq_len."
    )


def document_pairs(
    tokens: np.ndarray,
    rng: np.random.Generator,
    *,
    tokens_length: int,
    noise_density: float,
    mean_noise_span_length: float,
    special_ids: SpecialIds,
    append_eos: bool = True,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(inputs, targets) of each consecutive `tokens_length` window of one document, in order,
    each drawn from `rng` (the objective's examples and the seqio preprocessor share it)."""
    tokens = np.asarray(tokens, np.int32)
    return [
        corrupt_spans(
            tokens[start : start + tokens_length],
            rng,
            noise_density,
            mean_noise_span_length,
            special_ids,
            append_eos=append_eos,
        )
        for start in range(0, len(tokens), tokens_length)
    ]


def make_examples(
    doc_ids: np.ndarray,
    rng: np.random.Generator,
    *,
    seq_len: int,
    special_ids: SpecialIds,
    settings: ml_collections.ConfigDict,
    vocab_size: int | None = None,
) -> list[dict[str, np.ndarray]]:
    """The document in windows of `lengths_for_row(...).tokens_length`, each span-corrupted.

    Reads `settings.noise_density` and `settings.mean_noise_span_length`. Every example has at
    most seq_len positions; an empty document gives none.
    """
    del vocab_size  # only MLM draws ids that are not in the document
    noise_density = float(settings.noise_density)
    mean_noise_span_length = float(settings.mean_noise_span_length)
    tokens_length = lengths_for_row(
        seq_len,
        noise_density,
        mean_noise_span_length,
        max_noise_spans=len(special_ids.sentinels),
    ).tokens_length
    pairs = document_pairs(
        doc_ids,
        rng,
        tokens_length=tokens_length,
        noise_density=noise_density,
        mean_noise_span_length=mean_noise_span_length,
        special_ids=special_ids,
    )
    return [rows.prefix_target_example(inputs, targets, special_ids) for inputs, targets in pairs]


def check_span_settings(noise_density: float, mean_noise_span_length: float) -> None:
    """Raises ValueError naming objective.noise_density or objective.mean_noise_span_length."""
    if not 0 < noise_density < 1:
        raise ValueError(
            f"objective.noise_density={noise_density} must be in (0, 1); it is the share of "
            "tokens dropped into noise spans (T5: 0.15)."
        )
    if not mean_noise_span_length >= 1:
        raise ValueError(
            f"objective.mean_noise_span_length={mean_noise_span_length} must be >= 1; it is the "
            "mean number of tokens per noise span (T5: 3)."
        )


def check_settings(settings: ml_collections.ConfigDict, seq_len: int) -> None:
    """Raises ValueError unless the density, span length and seq_len make valid examples."""
    check_span_settings(settings.noise_density, settings.mean_noise_span_length)
    lengths_for_row(seq_len, float(settings.noise_density), float(settings.mean_noise_span_length))


SPAN_CORRUPTION = registry.register(
    registry.Objective(
        name="span_corruption",
        make_examples=make_examples,
        loss=losses.weighted_cross_entropy,
        check_settings=check_settings,
        predicts_text=False,
    )
)
