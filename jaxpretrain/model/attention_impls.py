"""Where attention runs: the XLA path, cuDNN flash attention (GPU), Pallas splash attention (TPU).

`model.attention` picks one of `ATTENTION_IMPLEMENTATIONS` (model/config.py); `auto` is cuDNN on
GPU, splash on TPU and XLA elsewhere. Every implementation computes the same function as
`dense_mask` says: query q attends key k iff they share a segment and either k <= q or both are
bidirectional.

Which kernel variant a batch needs depends on its values (in a causal-LM batch no token attends
a later one; in a prefix-LM batch some do), so each kernel path switches at run time
(`jax.lax.switch`, one branch executed) between the variants it can express, by the batch's
`BatchFacts` (inside pipeline stages, those of the whole batch). Both kernels rely
on the batch contract that a segment's bidirectional tokens are its first ones (a prefix): the
input pipeline checks every example an objective makes, and seqio rows are built that way
(`objectives/rows.py`); a batch that breaks it gets a different mask from these kernels than
from `dense_mask`.

    cudnn   one segment per row, causal  -> is_causal, no mask (flash attention at its fastest)
            several segments, causal     -> is_causal plus the dense segment mask (a bias to cuDNN)
            a bidirectional prefix       -> the dense mask, not causal
    splash  causal, segment ids          -> CausalMask with SegmentIds
            bidirectional everywhere     -> FullMask with SegmentIds (MLM)
            a bidirectional prefix       -> both: FullMask over the prefixes for prefix queries,
                                            CausalMask for the others (see `splash_attention`)

jax.nn.dot_product_attention takes no segment ids, so cuDNN gets them as a dense [B, 1, L, S]
mask (jax turns it into an additive bias); its private packed layout (q_offsets) is not used.
Where a kernel cannot run here (wrong platform, float32 compute, a shape it refuses, a sharding it
cannot follow) the XLA path runs instead, and the reason is logged once (absl warning).

Shape suffixes: B batch, L length (queries), S length (keys), N query heads, K key/value heads,
H head_dim.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import NamedTuple

import jax
import jax.numpy as jnp
from absl import logging

from jaxpretrain.mesh import mesh_axis_of

# The compute dtypes cuDNN flash attention accepts.
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
# Splash block sizes, largest first: a length must be a multiple of one of them.
_SPLASH_BLOCKS = (512, 256, 128)

_reasons_logged: set[str] = set()


class BatchFacts(NamedTuple):
    """What a whole batch's mask is like (bool scalars): each kernel picks its variant by them.

    Computed once per batch, before the pipeline's vmap over stages splits it into microbatches:
    a variant switch on a per-stage value would become a select that runs every variant.

    attends_forward: some token attends a later one (two neighbours bidirectional in one
      segment; a one-token prefix, a seqio row's bos, attends only itself).
    one_segment_per_row: every row is one segment (no packing, no padding).
    all_bidirectional: every real token is bidirectional (MLM).
    """

    attends_forward: jax.Array
    one_segment_per_row: jax.Array
    all_bidirectional: jax.Array


def batch_facts(segment_ids_BL: jax.Array, bidirectional_BL: jax.Array) -> BatchFacts:
    """The `BatchFacts` of a batch's features (relies on the prefix contract of `AttentionMask`)."""
    is_bidirectional_BL = bidirectional_BL != 0
    same_segment_BL = segment_ids_BL[:, 1:] == segment_ids_BL[:, :-1]
    return BatchFacts(
        attends_forward=jnp.any(
            is_bidirectional_BL[:, 1:] & is_bidirectional_BL[:, :-1] & same_segment_BL
        ),
        one_segment_per_row=jnp.all(segment_ids_BL == segment_ids_BL[:, :1]),
        all_bidirectional=jnp.all(is_bidirectional_BL | (segment_ids_BL == 0)),
    )


class AttentionMask(NamedTuple):
    """The packed-row features that decide which keys each query attends to (a pytree).

    segment_ids_BL: [batch, length] int, 1-based document id inside the row, 0 = padding.
    bidirectional_BL: [batch, length] int, 1 where a token may attend to later tokens. The
      bidirectional tokens of a segment are its first ones (a prefix; the input pipeline
      checks every example), which is what lets splash express the mask with static kernels.
    facts: the whole batch's `BatchFacts` (of more rows than these inside pipeline stages).
    """

    segment_ids_BL: jax.Array
    bidirectional_BL: jax.Array
    facts: BatchFacts


def attention_mask(
    segment_ids_BL: jax.Array, bidirectional_BL: jax.Array, facts: BatchFacts | None = None
) -> AttentionMask:
    """Which keys each query may attend to, for packed rows, as every implementation reads it.

    Query q attends key k iff they share a segment and either k <= q (row order) or both are
    bidirectional (`dense_mask` spells the rule out as a [B, 1, L, S] array). Kept as the
    features rather than the dense mask because kernels take segment ids and a causal flag, and
    the dense mask grows with length squared.

    Args:
      segment_ids_BL: [batch, length] int, 1-based document id inside the row, 0 = padding.
      bidirectional_BL: [batch, length] int, 1 where a token may attend to later tokens.
      facts: the facts of the batch these rows were split from (a pipeline's microbatch);
        None computes them from these rows.
    """
    if facts is None:
        facts = batch_facts(segment_ids_BL, bidirectional_BL)
    return AttentionMask(segment_ids_BL, bidirectional_BL, facts)


def dense_mask(mask: AttentionMask) -> jax.Array:
    """[batch, 1, length, length] bool, True = may attend, broadcast over heads.

    Padding (segment 0) attends to padding, so every query sees at least itself and no softmax
    row is empty.
    """
    segment_ids_BL = mask.segment_ids_BL
    length = segment_ids_BL.shape[1]
    same_segment_BLS = segment_ids_BL[:, :, None] == segment_ids_BL[:, None, :]
    causal_LS = jnp.arange(length)[None, :] <= jnp.arange(length)[:, None]
    is_bidirectional_BL = mask.bidirectional_BL.astype(bool)
    both_bidirectional_BLS = is_bidirectional_BL[:, :, None] & is_bidirectional_BL[:, None, :]
    mask_BLS = same_segment_BLS & (causal_LS[None] | both_bidirectional_BLS)
    return mask_BLS[:, None, :, :]


def fall_back(reason: str) -> str:
    """Logs `reason` (once per process) for running the XLA path instead; returns "xla".

    A reason says what cannot run and that the XLA path runs instead.
    """
    if reason not in _reasons_logged:
        _reasons_logged.add(reason)
        logging.warning("attention: %s.", reason)
    return "xla"


def fallback_reasons() -> list[str]:
    """The fall-back reasons logged so far in this process (for benchmark tables)."""
    return sorted(_reasons_logged)


def current_platform() -> str:
    """The platform being compiled for: the active mesh's devices, else the default backend.

    The mesh decides in ahead-of-time compiles for a TPU topology on a machine without one.
    """
    # None for an empty mesh (none set) and where jax does not know the devices.
    device = jax.sharding.get_abstract_mesh().abstract_device
    return device.platform if device is not None else jax.default_backend()


def resolve(requested: str, platform: str) -> str:
    """The implementation that runs for `model.attention=requested` on `platform`.

    `auto` picks the platform's kernel quietly. An explicit kernel on a platform without it
    falls back to XLA with a logged reason rather than failing: the same config then runs in CI,
    on a laptop and on the accelerator it was written for.
    """
    if requested == "auto":
        requested = {"gpu": "cudnn", "cuda": "cudnn", "tpu": "splash"}.get(platform, "xla")
        if requested == "xla":
            return requested
    if requested == "cudnn" and platform not in ("gpu", "cuda"):
        return fall_back(
            f"model.attention='cudnn' needs an NVIDIA GPU, this is {platform}: the XLA path runs"
        )
    if requested == "splash" and platform != "tpu":
        return fall_back(
            f"model.attention='splash' needs a TPU, this is {platform}: the XLA path runs"
        )
    return requested


def xla_attention(
    query_BLNH: jax.Array, key_BSKH: jax.Array, value_BSKH: jax.Array, mask: AttentionMask
) -> jax.Array:
    """The XLA path: scores and softmax in float32, the 1/sqrt(head_dim) scale."""
    return jax.nn.dot_product_attention(query_BLNH, key_BSKH, value_BSKH, mask=dense_mask(mask))


def cudnn_variant(mask: AttentionMask) -> jax.Array:
    """Which cuDNN call a batch needs: 0 causal with one segment per row, 1 causal with several
    segments (or padding), 2 with a bidirectional prefix (see the module docstring)."""
    facts = mask.facts
    return jnp.where(facts.attends_forward, 2, jnp.where(facts.one_segment_per_row, 0, 1))


def splash_variant(mask: AttentionMask) -> jax.Array:
    """Which splash call a batch needs: 0 causal, 1 bidirectional on every real token (MLM),
    2 a bidirectional prefix (both kernels).

    Under variant 1 padding attends all padding rather than the padding before it: padding rows
    differ from `dense_mask`'s, but no real token sees padding, so losses and gradients do not.
    """
    facts = mask.facts
    return jnp.where(facts.attends_forward, jnp.where(facts.all_bidirectional, 1, 2), 0)


def cudnn_attention(
    query_BLNH: jax.Array,
    key_BSKH: jax.Array,
    value_BSKH: jax.Array,
    mask: AttentionMask,
    *,
    backend: str = "cudnn",
) -> jax.Array:
    """cuDNN flash attention through `jax.nn.dot_product_attention`, one variant per batch.

    `backend` is jax's `implementation` argument; "xla" runs the same variants on any platform
    (how the CPU tests check the variant logic).
    """
    problem = kernel_problem("cudnn", query_BLNH.shape[1], query_BLNH.dtype)
    if backend == "cudnn" and problem:
        fall_back(problem)
        return xla_attention(query_BLNH, key_BSKH, value_BSKH, mask)
    attend = functools.partial(jax.nn.dot_product_attention, implementation=backend)

    def causal_one_segment(q, k, v, mask):
        return attend(q, k, v, is_causal=True)

    def causal_segments(q, k, v, mask):
        return attend(q, k, v, mask=dense_mask(mask), is_causal=True)

    def bidirectional_prefix(q, k, v, mask):
        return attend(q, k, v, mask=dense_mask(mask))

    branches = (causal_one_segment, causal_segments, bidirectional_prefix)
    try:
        return jax.lax.switch(cudnn_variant(mask), branches, query_BLNH, key_BSKH, value_BSKH, mask)
    except (NotImplementedError, ValueError) as error:
        # jax checks shapes, dtypes and the cuDNN version while tracing.
        fall_back(f"cuDNN refused this attention ({error}): the XLA path runs")
        return xla_attention(query_BLNH, key_BSKH, value_BSKH, mask)


def _splash_block(length: int) -> int | None:
    return next((block for block in _SPLASH_BLOCKS if length % block == 0), None)


def _splash_kernel_call(
    query_BLNH: jax.Array,
    key_BSKH: jax.Array,
    value_BSKH: jax.Array,
    segment_ids_BL: jax.Array,
    *,
    causal: bool,
    interpret: bool,
) -> jax.Array:
    """Splash attention on one device's shard: a kernel per example, vmapped over the batch.

    A query attends the keys of its own segment id: earlier ones (`causal`) or all of them."""
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as kernel_lib,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as mask_lib,
    )

    _, length, num_heads, head_dim = query_BLNH.shape
    block = _splash_block(length)
    shape = (length, length)
    head_mask = mask_lib.CausalMask(shape) if causal else mask_lib.FullMask(shape)
    kernel = kernel_lib.make_splash_mha(
        mask_lib.MultiHeadMask([head_mask] * num_heads),
        block_sizes=kernel_lib.BlockSizes(
            block_q=block,
            block_kv=block,
            block_kv_compute=block,
            block_q_dkv=block,
            block_kv_dkv=block,
            block_kv_dkv_compute=block,
            block_q_dq=block,
            block_kv_dq=block,
        ),
        head_shards=1,
        q_seq_shards=1,
        interpret=interpret,
    )
    # The kernel leaves the scale to the caller; it wants heads before length.
    query_BNLH = jnp.swapaxes(query_BLNH * head_dim**-0.5, 1, 2)
    key_BKSH, value_BKSH = jnp.swapaxes(key_BSKH, 1, 2), jnp.swapaxes(value_BSKH, 1, 2)

    def one_example(q_NLH, k_KSH, v_KSH, segment_ids_L):
        return kernel(
            q_NLH, k_KSH, v_KSH, segment_ids=kernel_lib.SegmentIds(segment_ids_L, segment_ids_L)
        )

    encoded_BNLH = jax.vmap(one_example)(query_BNLH, key_BKSH, value_BKSH, segment_ids_BL)
    return jnp.swapaxes(encoded_BNLH, 1, 2).astype(query_BLNH.dtype)


def kernel_problem(implementation: str, length: int, dtype: jnp.dtype) -> str | None:
    """Why `implementation`'s kernel cannot run attention over `length` tokens in `dtype` under
    the active sharding rules (a sentence saying the XLA path runs), or None when it can.
    The kernels check this while tracing; the dry run asks it to say what its program runs."""
    if implementation == "cudnn" and jnp.dtype(dtype) not in _CUDNN_DTYPES:
        return (
            f"cuDNN attention needs bfloat16 or float16 compute, not {jnp.dtype(dtype)}: the XLA "
            "path runs (set model.dtype='bfloat16')"
        )
    if implementation != "splash":
        return None
    if _splash_block(length) is None:
        return f"splash attention needs a length divisible by 128, not {length}: the XLA path runs"
    if importlib.util.find_spec("jax.experimental.pallas.ops.tpu.splash_attention") is None:
        return f"jax {jax.__version__} has no Pallas splash attention: the XLA path runs"
    if mesh_axis_of("length") is not None:
        return "splash attention cannot split the sequence over devices: the XLA path runs"
    if mesh_axis_of("heads") != mesh_axis_of("kv_heads"):
        return (
            "splash attention needs heads and kv_heads split over the same mesh axes: the XLA "
            "path runs"
        )
    return None


def splash_attention(
    query_BLNH: jax.Array,
    key_BSKH: jax.Array,
    value_BSKH: jax.Array,
    mask: AttentionMask,
    *,
    interpret: bool = False,
) -> jax.Array:
    """Pallas splash attention (TPU) with segment ids, one variant per batch.

    Under active sharding rules the kernel runs per device in a `shard_map` over the batch and
    head axes. `interpret=True` runs the kernel in the Pallas interpreter (any platform; slow),
    which is how the CPU tests check it.
    """
    problem = kernel_problem("splash", query_BLNH.shape[1], query_BLNH.dtype)
    if problem:
        fall_back(problem)
        return xla_attention(query_BLNH, key_BSKH, value_BSKH, mask)

    def splash(causal):  # (q, k, v, segment_ids) -> attention within those segment ids
        call = functools.partial(_splash_kernel_call, causal=causal, interpret=interpret)
        if mesh_axis_of("batch") is None and mesh_axis_of("heads") is None:
            return call
        batch, heads = mesh_axis_of("batch"), mesh_axis_of("heads")
        spec_BLNH = jax.P(batch, None, heads, None)
        return jax.shard_map(
            call,
            in_specs=(spec_BLNH, spec_BLNH, spec_BLNH, jax.P(batch, None)),
            out_specs=spec_BLNH,
            check_vma=False,
        )

    causal, full = splash(causal=True), splash(causal=False)

    def causal_rows(q, k, v, mask):
        return causal(q, k, v, mask.segment_ids_BL)

    def bidirectional_rows(q, k, v, mask):
        return full(q, k, v, mask.segment_ids_BL)

    def prefix_rows(q, k, v, mask):
        # A prefix query may see exactly its segment's prefix (the keys up to it are prefix
        # tokens too): a full mask within ids that give a segment's prefix and its causal rest
        # different values. The other queries see their segment causally. Every query sees at
        # least itself in both calls, so neither produces an empty softmax row.
        is_prefix_BL = mask.bidirectional_BL != 0
        prefix_ids_BL = 2 * mask.segment_ids_BL + jnp.where(is_prefix_BL, 0, 1)
        return jnp.where(
            is_prefix_BL[:, :, None, None],
            full(q, k, v, prefix_ids_BL),
            causal(q, k, v, mask.segment_ids_BL),
        )

    branches = (causal_rows, bidirectional_rows, prefix_rows)
    return jax.lax.switch(splash_variant(mask), branches, query_BLNH, key_BSKH, value_BSKH, mask)


def dot_product_attention(
    query_BLNH: jax.Array,
    key_BSKH: jax.Array,
    value_BSKH: jax.Array,
    mask: AttentionMask,
    implementation: str,
) -> jax.Array:
    """Grouped-query attention within `mask` by `model.attention=implementation`.

    Args:
      query_BLNH: [batch, length, heads, head_dim] queries (RoPE applied).
      key_BSKH, value_BSKH: [batch, length, kv_heads, head_dim]; query head n reads kv head
        n // (heads // kv_heads).
      mask: the batch's segment ids and bidirectional flags.
      implementation: one of config.ATTENTION_IMPLEMENTATIONS; resolved for the platform being
        compiled for.

    Returns:
      [batch, length, heads, head_dim] in the dtype of the query.
    """
    resolved = resolve(implementation, current_platform())
    if resolved == "cudnn":
        return cudnn_attention(query_BLNH, key_BSKH, value_BSKH, mask)
    if resolved == "splash":
        return splash_attention(query_BLNH, key_BSKH, value_BSKH, mask)
    return xla_attention(query_BLNH, key_BSKH, value_BSKH, mask)
