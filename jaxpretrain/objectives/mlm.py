"""Masked language modelling (BERT, with RoBERTa's dynamic masking): predict hidden tokens from
both sides.

Windows: `[bos] + doc + [eos]` is cut into consecutive, non-overlapping windows of `seq_len`
tokens, and every window is its own example (the last one may be shorter). A window without a
non-special token (the lone `[eos]` left when `len(doc) + 2` is one more than a multiple of
`seq_len`, or an empty document) carries no loss and is dropped.

Selection: a window with n non-special tokens (ids from `SpecialIds.first_regular_id`, i.e. the
byte and learned pieces; bos, eos, pad, unk, mask, paradigm tokens and sentinels are never
selected)
selects exactly `floor(mask_prob * n + u)` of them, u uniform in [0, 1) — fairseq's RoBERTa
rounding, whose expectation is exactly `mask_prob * n` — and at least one, so that every example
has a loss. Only windows with `mask_prob * n < 1` (fewer than 7 tokens at 0.15) select more
than `mask_prob` on average.

Corruption: each selected token independently becomes `<mask>` with probability 0.8, a random
non-special token with 0.1, and stays itself with 0.1. The random token is drawn uniformly from
the tokenizer's non-special ids, `[special_ids.first_regular_id, vocab_size)` (as BERT draws
from its vocabulary); it can hit the original token, as BERT's can.

Features: `inputs` the corrupted window, `targets` the original window (unshifted),
`loss_weights` 1 exactly on the selected positions, `bidirectional` 1 everywhere (the packer's
segments keep documents apart). All randomness comes from `rng`, which the pipeline seeds by
(seed, epoch, document): masks change every epoch and repeat exactly on a resumed run.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from jaxpretrain.objectives import losses, registry
from jaxpretrain.tokenizer import SpecialIds

# BERT's split of the selected tokens: <mask>, a random token, unchanged.
MASK_SHARE = 0.8
RANDOM_SHARE = 0.1


def mask_window(
    window_ids: np.ndarray,
    rng: np.random.Generator,
    *,
    mask_prob: float,
    special_ids: SpecialIds,
    vocab_size: int,
) -> dict[str, np.ndarray]:
    """One MLM example from one window (selection and 80/10/10 corruption as the module says).

    Args:
      window_ids: int token ids [n], at most seq_len, with at least one non-special token.
      rng: the only source of randomness.
      mask_prob: share of the window's non-special tokens to select, in (0, 1).
      special_ids: the tokenizer's special ids (mask is inserted; specials are never selected).
      vocab_size: the tokenizer's vocabulary; random replacements are drawn uniformly from
        its non-special ids, [special_ids.first_regular_id, vocab_size).

    Returns:
      An example dict (`inputs`, `targets`, `loss_weights`, `bidirectional`), all of length n.
    """
    window_ids = np.asarray(window_ids, np.int32)
    candidates = np.flatnonzero(window_ids >= special_ids.first_regular_id)
    if candidates.size == 0:
        raise ValueError("mask_window needs a window with at least one non-special token.")
    count = int(np.floor(mask_prob * candidates.size + rng.random()))
    count = min(max(count, 1), candidates.size)
    selected = rng.choice(candidates, size=count, replace=False)
    action = rng.random(count)
    to_mask = selected[action < MASK_SHARE]
    to_replace = selected[(action >= MASK_SHARE) & (action < MASK_SHARE + RANDOM_SHARE)]
    inputs = window_ids.copy()
    inputs[to_mask] = special_ids.mask
    inputs[to_replace] = rng.integers(
        special_ids.first_regular_id, vocab_size, size=to_replace.size, dtype=np.int32
    )
    loss_weights = np.zeros(len(window_ids), np.float32)
    loss_weights[selected] = 1.0
    return {
        "inputs": inputs,
        "targets": window_ids.copy(),
        "loss_weights": loss_weights,
        "bidirectional": np.ones(len(window_ids), np.int32),
    }


def make_examples(
    doc_ids: np.ndarray,
    rng: np.random.Generator,
    *,
    seq_len: int,
    special_ids: SpecialIds,
    settings: ml_collections.ConfigDict,
    vocab_size: int,
) -> list[dict[str, np.ndarray]]:
    """`[bos] + doc + [eos]` in windows of seq_len, each masked by `mask_window`.

    Reads `settings.mask_prob`; random replacements are uniform over the vocabulary's
    non-special ids.
    """
    doc_ids = np.asarray(doc_ids, np.int32)
    first_regular = special_ids.first_regular_id
    tokens = np.concatenate([[special_ids.bos], doc_ids, [special_ids.eos]]).astype(np.int32)
    examples = []
    for start in range(0, len(tokens), seq_len):
        window = tokens[start : start + seq_len]
        if not np.any(window >= first_regular):
            continue  # nothing to predict (the lone trailing eos, or an empty document)
        examples.append(
            mask_window(
                window,
                rng,
                mask_prob=settings.mask_prob,
                special_ids=special_ids,
                vocab_size=vocab_size,
            )
        )
    return examples


def check_settings(settings: ml_collections.ConfigDict, seq_len: int) -> None:
    """Raises ValueError unless 0 < objective.mask_prob < 1."""
    del seq_len  # any window length works
    if not 0 < settings.mask_prob < 1:
        raise ValueError(
            f"objective.mask_prob={settings.mask_prob} must be in (0, 1); it is the share of "
            "non-special tokens MLM selects (BERT uses 0.15)."
        )


MLM = registry.register(
    registry.Objective(
        name="mlm",
        make_examples=make_examples,
        loss=losses.weighted_cross_entropy,
        check_settings=check_settings,
        predicts_text=False,
    )
)
