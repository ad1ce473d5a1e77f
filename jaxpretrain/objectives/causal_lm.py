"""Causal language modelling: predict every next token of a document, attending only backwards."""

from __future__ import annotations

import numpy as np

from jaxpretrain.objectives import losses, registry
from jaxpretrain.tokenizer import SpecialIds


def make_examples(
    doc_ids: np.ndarray,
    rng: np.random.Generator,
    *,
    seq_len: int,
    special_ids: SpecialIds,
    settings: object = None,
    vocab_size: int | None = None,
) -> list[dict[str, np.ndarray]]:
    """`[bos] + doc + [eos]` cut into windows of seq_len + 1 tokens, shifted by one.

    Consecutive windows overlap by one token so that every token of the document is a target
    exactly once. Targets never cross into another document: each example is one document's
    window, and packing keeps examples in separate segments.
    """
    del rng, settings, vocab_size  # deterministic, no settings, ids from the document
    tokens = np.concatenate(
        [[special_ids.bos], np.asarray(doc_ids, np.int32), [special_ids.eos]]
    ).astype(np.int32)
    examples = []
    for start in range(0, len(tokens) - 1, seq_len):
        window = tokens[start : start + seq_len + 1]
        length = len(window) - 1
        examples.append(
            {
                "inputs": window[:-1],
                "targets": window[1:],
                "loss_weights": np.ones(length, np.float32),
                "bidirectional": np.zeros(length, np.int32),
            }
        )
    return examples


CAUSAL_LM = registry.register(
    registry.Objective(
        name="causal_lm", make_examples=make_examples, loss=losses.weighted_cross_entropy
    )
)
