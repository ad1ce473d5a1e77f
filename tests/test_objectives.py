"""Objectives: data transforms and losses."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxpretrain import objectives
from jaxpretrain.objectives import losses
from jaxpretrain.tokenizer import SpecialIds

SPECIAL = SpecialIds(pad=0, eos=1, bos=2, unk=3, mask=4, sentinels=tuple(range(107, 7, -1)))


@pytest.mark.parametrize("doc_length", [1, 5, 7, 8, 9, 30])
def test_causal_lm_predicts_every_token_once(doc_length):
    doc = np.arange(200, 200 + doc_length, dtype=np.int32)
    examples = objectives.get("causal_lm").make_examples(
        doc, np.random.default_rng(0), seq_len=8, special_ids=SPECIAL
    )
    targets = np.concatenate([e["targets"] for e in examples])
    np.testing.assert_array_equal(targets, np.concatenate([doc, [SPECIAL.eos]]))
    for example in examples:
        assert len(example["inputs"]) <= 8
        # Shifted by one: each target is the token after its input in the document.
        full = np.concatenate([[SPECIAL.bos], doc, [SPECIAL.eos]])
        start = int(np.flatnonzero(full == example["inputs"][0])[0])
        np.testing.assert_array_equal(
            example["targets"], full[start + 1 : start + 1 + len(example["targets"])]
        )
        assert example["bidirectional"].sum() == 0
        assert example["loss_weights"].dtype == np.float32


def test_weighted_cross_entropy_ignores_zero_weights():
    logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]]))
    targets = jnp.array([[0, 1]])
    loss_sum, weight_sum = losses.weighted_cross_entropy(logits, targets, jnp.array([[1.0, 0.0]]))
    np.testing.assert_allclose(float(loss_sum), np.log(2), rtol=1e-6)
    assert float(weight_sum) == 1.0


def test_unknown_objective_lists_known_ones():
    with pytest.raises(KeyError, match="causal_lm"):
        objectives.get("masked_lm_typo")


def test_prefix_target_row_predicts_each_target_once_and_hides_it():
    from jaxpretrain.objectives.rows import prefix_target_example

    prefix, target = np.array([10, 11, 12]), np.array([20, 21])
    example = prefix_target_example(prefix, target, SPECIAL)
    np.testing.assert_array_equal(example["inputs"], [SPECIAL.bos, 10, 11, 12, 20])
    np.testing.assert_array_equal(example["targets"], [10, 11, 12, 20, 21])
    # Loss exactly on the positions predicting target tokens.
    np.testing.assert_array_equal(example["targets"][example["loss_weights"] > 0], target)
    # bos and the prefix attend both ways; a position with loss sees no later token, and the
    # target it predicts is never among the bidirectional inputs.
    np.testing.assert_array_equal(example["bidirectional"], [1, 1, 1, 1, 0])
    bidirectional_inputs = example["inputs"][example["bidirectional"] == 1]
    assert not set(target) & set(bidirectional_inputs.tolist())
