"""Optimizer: schedule shape and which parameters get weight decay."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpretrain import config as config_lib
from jaxpretrain import optim


def train_config():
    config = config_lib.default_config()
    config.train.steps, config.train.warmup_steps, config.train.lr = 100, 10, 1e-3
    config.train.min_lr_ratio = 0.1
    return config.train


def test_warmup_then_cosine_to_floor():
    schedule = optim.learning_rate_schedule(train_config())
    assert float(schedule(0)) == 0.0
    np.testing.assert_allclose(float(schedule(10)), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(100)), 1e-4, rtol=1e-5)
    assert float(schedule(50)) < 1e-3


def test_only_kernels_decay():
    params = {
        "embedder": {"embedding": jnp.ones((8, 4))},
        "blocks": {
            "mlp": {"up": {"kernel": jnp.ones((2, 4, 6))}},
            "norm": {"scale": jnp.ones((2, 4))},
        },
    }
    mask = optim.decay_mask(params)
    assert mask == {
        "embedder": {"embedding": False},
        "blocks": {"mlp": {"up": {"kernel": True}}, "norm": {"scale": False}},
    }
    # With zero gradients, only masked-in leaves shrink.
    cfg = train_config()
    cfg.grad_clip, cfg.weight_decay, cfg.warmup_steps = 1.0, 0.5, 0
    tx = optim.make_optimizer(cfg)
    state = tx.init(params)
    zeros = jax_zeros_like(params)
    updates, _ = tx.update(zeros, state, params)
    new = optax.apply_updates(params, updates)
    assert float(new["blocks"]["mlp"]["up"]["kernel"][0, 0, 0]) < 1.0
    assert float(new["embedder"]["embedding"][0, 0]) == 1.0
    assert float(new["blocks"]["norm"]["scale"][0, 0]) == 1.0


def jax_zeros_like(tree):
    import jax

    return jax.tree.map(jnp.zeros_like, tree)


def test_max_update_norm_rescales_the_adamw_update_to_its_bound():
    params = {
        "mlp": {"kernel": jnp.ones((4, 3))},
        "norm": {"scale": jnp.ones(3)},
    }
    rng = np.random.default_rng(0)
    grads = {
        "mlp": {"kernel": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)},
        "norm": {"scale": jnp.asarray(rng.normal(size=3), jnp.float32)},
    }
    cfg = train_config()
    cfg.warmup_steps, cfg.lr = 0, 0.1

    def first_update(max_update_norm: float):
        cfg.max_update_norm = max_update_norm
        tx = optim.make_optimizer(cfg)
        return tx.update(grads, tx.init(params), params)[0]

    unclipped = first_update(0.0)
    unclipped_norm = float(optax.tree.norm(unclipped))
    # Adam's first step moves every coordinate by about lr: a norm near 0.1 * sqrt(15).
    assert unclipped_norm > 0.3
    clipped = first_update(0.1)
    np.testing.assert_allclose(float(optax.tree.norm(clipped)), 0.1, rtol=1e-5)
    # The same direction: the cap rescales AdamW's update, it does not change it.
    jax.tree.map(
        lambda c, u: np.testing.assert_allclose(c, u * 0.1 / unclipped_norm, rtol=1e-5),
        clipped,
        unclipped,
    )
    # A cap above the update's norm changes nothing.
    jax.tree.map(np.testing.assert_array_equal, first_update(10.0), unclipped)
