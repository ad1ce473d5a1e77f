"""Decoder-only rows shared by the objectives that map inputs to targets.

Prefix LM, span corruption and UL2 all turn a document into an (inputs, targets) pair; on a
decoder-only stack the pair becomes one row, as T5X's decoder-only prefix-LM feature conversion
does: tokens `[bos] + prefix + target`, fed shifted by one, the prefix attended bidirectionally
and loss taken on the target tokens only.
"""

from __future__ import annotations

import numpy as np

from jaxpretrain.tokenizer import SpecialIds


def prefix_target_example(
    prefix_ids: np.ndarray, target_ids: np.ndarray, special_ids: SpecialIds
) -> dict[str, np.ndarray]:
    """One example of `len(prefix) + len(target)` positions for an inputs -> targets pair.

    Position i feeds token `([bos] + prefix + target)[i]` and predicts the token after it. The
    first `len(prefix) + 1` positions (bos and the prefix) are bidirectional: each sees the whole
    prefix, and the last of them predicts the first target token from all of it. Loss falls on
    the `len(target)` positions that predict a target token, which see only earlier tokens, so
    no position with loss can see the token it predicts.

    Args:
      prefix_ids: int token ids of the inputs (may be empty: then this is causal LM on target).
      target_ids: int token ids to predict (non-empty).
      special_ids: the tokenizer's special ids (bos is prepended).

    Returns:
      An example dict (`inputs`, `targets`, `loss_weights`, `bidirectional`) as the registry's
      `ExamplesFn` contract asks.
    """
    prefix_ids = np.asarray(prefix_ids, np.int32)
    target_ids = np.asarray(target_ids, np.int32)
    if target_ids.size == 0:
        raise ValueError("prefix_target_example needs at least one target token.")
    tokens = np.concatenate([[special_ids.bos], prefix_ids, target_ids]).astype(np.int32)
    length = len(tokens) - 1
    prefix_length = len(prefix_ids)
    positions = np.arange(length)
    return {
        "inputs": tokens[:-1],
        "targets": tokens[1:],
        "loss_weights": (positions >= prefix_length).astype(np.float32),
        "bidirectional": (positions <= prefix_length).astype(np.int32),
    }
