"""The optimizer: global-norm clipping + AdamW with warmup-cosine schedule and a decay mask, then
an optional cap on the update's global norm."""

from __future__ import annotations

import jax
import ml_collections
import optax


def learning_rate_schedule(train_cfg: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warmup from 0 to `train.lr`, then cosine decay to `lr * min_lr_ratio` at the end."""
    warmup_steps = min(train_cfg.warmup_steps, train_cfg.steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=train_cfg.lr,
        warmup_steps=warmup_steps,
        decay_steps=max(train_cfg.steps, warmup_steps + 1),
        end_value=train_cfg.lr * train_cfg.min_lr_ratio,
    )


def decay_mask(params) -> object:
    """True for matmul kernels only: norms' scales and the token embedding are not decayed."""

    def is_kernel(path, _) -> bool:
        last = path[-1]
        return getattr(last, "key", getattr(last, "name", None)) == "kernel"

    return jax.tree_util.tree_map_with_path(is_kernel, params)


def make_optimizer(train_cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The optax chain used by the train step, built from `config.train`.

    `grad_clip` bounds the gradient's global norm before AdamW; `max_update_norm` bounds the
    final update's (after AdamW, weight decay and the learning rate). Adam divides each
    coordinate by its running gradient scale, which largely undoes a gradient clip: a sudden
    large gradient after quiet steps still moves every parameter by up to ~lr. The update cap
    bounds that move. 0 leaves either out.
    """
    chain = []
    if train_cfg.grad_clip > 0:
        chain.append(optax.clip_by_global_norm(train_cfg.grad_clip))
    chain.append(
        optax.adamw(
            learning_rate_schedule(train_cfg),
            b1=train_cfg.b1,
            b2=train_cfg.b2,
            eps=train_cfg.eps,
            weight_decay=train_cfg.weight_decay,
            mask=decay_mask,
        )
    )
    if train_cfg.max_update_norm > 0:
        chain.append(optax.clip_by_global_norm(train_cfg.max_update_norm))
    return optax.chain(*chain)
