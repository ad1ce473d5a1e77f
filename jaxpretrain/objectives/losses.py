"""Loss reductions shared by objectives."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def weighted_cross_entropy(
    logits_BLV: jax.Array, targets_BL: jax.Array, loss_weights_BL: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Sum of per-token cross-entropy (nats) x weight, and the sum of weights.

    Returning sums rather than a mean lets callers combine micro-batches and eval batches exactly.
    """
    nll_BL = optax.softmax_cross_entropy_with_integer_labels(
        logits_BLV.astype(jnp.float32), targets_BL
    )
    weights_BL = loss_weights_BL.astype(jnp.float32)
    return jnp.sum(nll_BL * weights_BL), jnp.sum(weights_BL)
