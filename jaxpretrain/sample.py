"""Text generation from a trained model (temperature sampling, no KV cache).

Good for a glance at what the model learned at the end of a run; not a serving path. A fixed
buffer of `seq_len` tokens keeps one compiled program for every generated position.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpretrain.tokenizer import Tokenizer


def generate(
    graphdef: nnx.GraphDef,
    params: Any,
    tokenizer: Tokenizer,
    prompt: str,
    *,
    length: int,
    seq_len: int,
    temperature: float,
    rng: jax.Array,
) -> str:
    """Continues `prompt` by up to `length` tokens (stops early at EOS); returns the new text.

    temperature 0 is greedy decoding.
    """
    prompt_ids = [tokenizer.special_ids.bos, *tokenizer.encode(prompt)]
    if len(prompt_ids) >= seq_len:
        raise ValueError(f"prompt of {len(prompt_ids)} tokens leaves no room in seq_len={seq_len}.")
    length = min(length, seq_len - len(prompt_ids))
    buffer_1L = jnp.full((1, seq_len), tokenizer.special_ids.pad, jnp.int32)
    buffer_1L = buffer_1L.at[0, : len(prompt_ids)].set(jnp.asarray(prompt_ids, jnp.int32))
    tokens_1L = _sample_loop(graphdef, params, buffer_1L, len(prompt_ids), length, temperature, rng)
    new_ids = [int(t) for t in tokens_1L[0, len(prompt_ids) : len(prompt_ids) + length]]
    if tokenizer.special_ids.eos in new_ids:
        new_ids = new_ids[: new_ids.index(tokenizer.special_ids.eos)]
    return tokenizer.decode(new_ids)


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
def _sample_loop(graphdef, params, buffer_1L, prompt_length, length, temperature, rng):
    model = nnx.merge(graphdef, params)
    seq_len = buffer_1L.shape[1]
    positions_1L = jnp.arange(seq_len, dtype=jnp.int32)[None]
    segment_ids_1L = jnp.ones((1, seq_len), jnp.int32)
    bidirectional_1L = jnp.zeros((1, seq_len), jnp.int32)

    def step(index, carry):
        buffer_1L, rng = carry
        rng, sample_rng = jax.random.split(rng)
        logits_1LV = model(buffer_1L, segment_ids_1L, positions_1L, bidirectional_1L)
        logits_V = logits_1LV[0, index - 1]
        if temperature > 0:
            next_token = jax.random.categorical(sample_rng, logits_V / temperature)
        else:
            next_token = jnp.argmax(logits_V)
        return buffer_1L.at[0, index].set(next_token.astype(jnp.int32)), rng

    buffer_1L, _ = jax.lax.fori_loop(prompt_length, prompt_length + length, step, (buffer_1L, rng))
    return buffer_1L
