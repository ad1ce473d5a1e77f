"""Llama-style decoder: pre-norm blocks (GQA attention + SwiGLU MLP) applied with a scan.

Shape suffixes: B batch, L length, D embed, F mlp, V vocab.

Parameter names and logical axes (scanned block parameters carry a leading `layers` axis):

    embed/embedding                           [vocab, embed]
    layers/attention_norm/scale               [layers, embed]
    layers/attention/{query}/kernel           [layers, embed, heads, head_dim]
    layers/attention/{key,value}/kernel       [layers, embed, kv_heads, head_dim]
    layers/attention/out/kernel               [layers, heads, head_dim, embed]
    layers/mlp_norm/scale                     [layers, embed]
    layers/mlp/{gate,up}/kernel               [layers, embed, mlp]
    layers/mlp/down/kernel                    [layers, mlp, embed]
    final_norm/scale                          [embed]
    lm_head/kernel                            [embed, vocab]   (only when tie_embeddings=False)

Matmul weights are all named `kernel` because the optimizer decays exactly those leaves.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpretrain.mesh import constrain
from jaxpretrain.model import pipeline
from jaxpretrain.model.attention import Attention, output_projection_std
from jaxpretrain.model.attention_impls import AttentionMask, attention_mask
from jaxpretrain.model.config import ModelConfig

_REMAT_POLICY_FUNCTIONS = {
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def einsum_float32_out(equation: str, x: jax.Array, w: jax.Array) -> jax.Array:
    """`jnp.einsum(equation, x, w)` accumulated and returned in float32, differentiated in the
    dtype of `x` and `w`.

    The output layer wants float32 logits (the softmax over a large vocabulary loses bits in
    bfloat16), but plain autodiff then feeds the float32 cotangent into both backward matmuls,
    which promotes them to float32 x float32: the two largest matmuls of a small model off the
    bfloat16 tensor cores, and the weight moved in float32. Here the cotangent is rounded to the
    inputs' dtype first, as mixed-precision training does for every other layer (and as
    PyTorch autocast does for this one); with float32 inputs nothing changes. A custom VJP
    gives reverse mode only: jax.jvp through the model would need a JVP rule here.
    """
    return jnp.einsum(equation, x, w, preferred_element_type=jnp.float32)


def _einsum_float32_out_forward(equation, x, w):
    return einsum_float32_out(equation, x, w), (x, w)


def _einsum_float32_out_backward(equation, residuals, cotangent):
    x, w = residuals
    # A linear map: under jit the forward product vjp evaluates here is dead code.
    _, backward = jax.vjp(
        lambda a, b: jnp.einsum(equation, a, b, preferred_element_type=x.dtype), x, w
    )
    return backward(cotangent.astype(x.dtype))


einsum_float32_out.defvjp(_einsum_float32_out_forward, _einsum_float32_out_backward)


def param_count(cfg: ModelConfig) -> int:
    """Number of parameters `Transformer(cfg)` creates, computed from the shapes alone."""
    d, n, k, h, f = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
    attention = d * n * h + 2 * d * k * h + n * h * d
    mlp = 3 * d * f
    norms = 2 * d
    per_layer = attention + mlp + norms
    embedding = cfg.vocab_size * d
    lm_head = 0 if cfg.tie_embeddings else d * cfg.vocab_size
    return embedding + cfg.num_layers * per_layer + d + lm_head


def rms_norm(cfg: ModelConfig, *, rngs: nnx.Rngs) -> nnx.RMSNorm:
    """RMSNorm over `embed` that normalizes in float32 (callers cast the output back)."""
    return nnx.RMSNorm(
        cfg.embed_dim,
        epsilon=cfg.norm_eps,
        dtype=jnp.float32,
        param_dtype=cfg.parameter_dtype,
        scale_init=nnx.with_partitioning(nnx.initializers.ones, ("embed",)),
        rngs=rngs,
    )


class Mlp(nnx.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, f = cfg.embed_dim, cfg.mlp_dim
        common = dict(dtype=cfg.compute_dtype, param_dtype=cfg.parameter_dtype, rngs=rngs)
        normal = nnx.initializers.normal(cfg.init_std)
        self.gate = nnx.Einsum(
            "BLD,DF->BLF",
            (d, f),
            kernel_init=nnx.with_partitioning(normal, ("embed", "mlp")),
            **common,
        )
        self.up = nnx.Einsum(
            "BLD,DF->BLF",
            (d, f),
            kernel_init=nnx.with_partitioning(normal, ("embed", "mlp")),
            **common,
        )
        self.down = nnx.Einsum(
            "BLF,FD->BLD",
            (f, d),
            kernel_init=nnx.with_partitioning(
                nnx.initializers.normal(output_projection_std(cfg)), ("mlp", "embed")
            ),
            **common,
        )

    def __call__(self, x_BLD: jax.Array) -> jax.Array:
        hidden_BLF = jax.nn.silu(self.gate(x_BLD)) * self.up(x_BLD)
        hidden_BLF = constrain(hidden_BLF, ("batch", "length", "mlp"))
        return self.down(hidden_BLF)


class Block(nnx.Module):
    """One pre-norm decoder layer: x + attention(norm(x)), then h + mlp(norm(h))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.compute_dtype = cfg.compute_dtype
        self.attention_norm = rms_norm(cfg, rngs=rngs)
        self.attention = Attention(cfg, rngs=rngs)
        self.mlp_norm = rms_norm(cfg, rngs=rngs)
        self.mlp = Mlp(cfg, rngs=rngs)

    def __call__(self, x_BLD: jax.Array, positions_BL: jax.Array, mask: AttentionMask) -> jax.Array:
        """[batch, length, embed] in the compute dtype -> same shape and dtype."""
        normed_BLD = self.attention_norm(x_BLD).astype(self.compute_dtype)
        h_BLD = x_BLD + self.attention(normed_BLD, positions_BL, mask)
        normed_BLD = self.mlp_norm(h_BLD).astype(self.compute_dtype)
        out_BLD = h_BLD + self.mlp(normed_BLD)
        return constrain(out_BLD, ("batch", "length", "embed"))


def create_block_stack(cfg: ModelConfig, num_layers: int, *, rngs: nnx.Rngs) -> Block:
    """`num_layers` independently initialized Blocks stacked into one Block.

    Every parameter gets a leading axis of size `num_layers`, named `layers` in its partitioning
    metadata. Apply the stack with `apply_block_stack`.
    """

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def create_block(block_rngs: nnx.Rngs) -> Block:
        return Block(cfg, rngs=block_rngs)

    return create_block(rngs)


def apply_block_stack(
    graphdef: nnx.GraphDef,
    stacked_state: nnx.State,
    x_BLD: jax.Array,
    positions_BL: jax.Array,
    mask: AttentionMask,
    remat_policy: str,
    scan: bool = True,
) -> jax.Array:
    """Runs stacked blocks (`nnx.split` of `create_block_stack`) in order.

    With `scan` (model.scan_layers) the layers run as one `jax.lax.scan`: one compiled layer
    body, whatever the depth. Without, the loop is unrolled: each layer is compiled on its own
    (compile time grows with depth), takes its weights by static rather than dynamic slices,
    and XLA may schedule and fuse across layers. Merging the block
    back inside the body (rather than using nnx.scan) keeps this independent of NNX transform
    internals. The body is wrapped in `jax.checkpoint` per `remat_policy` (see
    `REMAT_POLICIES`); every policy, scanned or not, computes the same values and gradients.
    """

    def apply_one_layer(carry_BLD: jax.Array, layer_state: nnx.State) -> tuple[jax.Array, None]:
        block = nnx.merge(graphdef, layer_state)
        return block(carry_BLD, positions_BL, mask), None

    if remat_policy != "none":
        # prevent_cse=False is safe (and faster) inside scan, which already blocks the CSE that
        # would undo rematerialization; unrolled, CSE would merge the recomputation away.
        apply_one_layer = jax.checkpoint(
            apply_one_layer, policy=_REMAT_POLICY_FUNCTIONS[remat_policy], prevent_cse=not scan
        )
    if scan:
        out_BLD, _ = jax.lax.scan(apply_one_layer, x_BLD, stacked_state)
        return out_BLD
    num_layers = jax.tree.leaves(stacked_state)[0].shape[0]
    for index in range(num_layers):
        layer_state = jax.tree.map(lambda stacked, i=index: stacked[i], stacked_state)
        x_BLD, _ = apply_one_layer(x_BLD, layer_state)
    return x_BLD


class Transformer(nnx.Module):
    """Llama-style decoder-only language model over packed rows.

    Construction never shards eagerly (it runs under `nnx.use_eager_sharding(False)`), so it needs
    no mesh; parameters carry logical axis names in their metadata instead, and
    `nnx.get_partition_spec(nnx.state(model))` returns them for the caller to map to mesh axes.
    To create sharded parameters, jit the constructor with `out_shardings` derived from those specs.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        with nnx.use_eager_sharding(False):
            self.embed = nnx.Embed(
                cfg.vocab_size,
                cfg.embed_dim,
                dtype=cfg.compute_dtype,
                param_dtype=cfg.parameter_dtype,
                embedding_init=nnx.with_partitioning(
                    nnx.initializers.normal(cfg.init_std), ("vocab", "embed")
                ),
                rngs=rngs,
            )
            self.layers = create_block_stack(cfg, cfg.num_layers, rngs=rngs)
            self.final_norm = rms_norm(cfg, rngs=rngs)
            if cfg.tie_embeddings:
                self.lm_head = None
            else:
                self.lm_head = nnx.Einsum(
                    "BLD,DV->BLV",
                    (cfg.embed_dim, cfg.vocab_size),
                    dtype=cfg.compute_dtype,
                    param_dtype=cfg.parameter_dtype,
                    kernel_init=nnx.with_partitioning(
                        nnx.initializers.normal(cfg.init_std), ("embed", "vocab")
                    ),
                    preferred_element_type=jnp.float32,
                    rngs=rngs,
                )

    def __call__(
        self,
        inputs_BL: jax.Array,
        segment_ids_BL: jax.Array,
        positions_BL: jax.Array,
        bidirectional_BL: jax.Array,
    ) -> jax.Array:
        """Next-token logits for a batch of packed rows.

        Args:
          inputs_BL: [batch, length] int32 token ids; length <= max_seq_len.
          segment_ids_BL: [batch, length] int32, 1-based document id in the row, 0 = padding.
          positions_BL: [batch, length] int32 position inside the segment (restarts at 0).
          bidirectional_BL: [batch, length] int32, 1 where a token may attend to later tokens of
            its segment (when they are bidirectional too).

        Returns:
          [batch, length, vocab] float32 logits. Rows at padding positions are meaningless.
        """
        return self.logits(self.hidden(inputs_BL, segment_ids_BL, positions_BL, bidirectional_BL))

    def hidden(
        self,
        inputs_BL: jax.Array,
        segment_ids_BL: jax.Array,
        positions_BL: jax.Array,
        bidirectional_BL: jax.Array,
    ) -> jax.Array:
        """[batch, length, embed] final-normed features in the compute dtype (what `logits`
        projects); the arguments are those of `__call__`."""
        length = inputs_BL.shape[1]
        if length > self.cfg.max_seq_len:
            raise ValueError(
                f"Input length {length} exceeds model.max_seq_len={self.cfg.max_seq_len}; "
                "shorten the sequences or raise max_seq_len."
            )
        x_BLD = constrain(self.embed(inputs_BL), ("batch", "length", "embed"))
        graphdef, stacked_state = nnx.split(self.layers)

        def apply_layers(layer_state, x_BLD, positions_BL, mask):
            return apply_block_stack(
                graphdef,
                layer_state,
                x_BLD,
                positions_BL,
                mask,
                self.cfg.remat_policy,
                scan=self.cfg.scan_layers,
            )

        if self.cfg.pipeline_stages > 1:
            x_BLD = pipeline.apply_pipeline(
                apply_layers,
                stacked_state,
                x_BLD,
                segment_ids_BL,
                positions_BL,
                bidirectional_BL,
                self.cfg,
            )
        else:
            mask = attention_mask(segment_ids_BL, bidirectional_BL)
            x_BLD = apply_layers(stacked_state, x_BLD, positions_BL, mask)
        return self.final_norm(x_BLD).astype(self.cfg.compute_dtype)

    def logits(self, x_BLD: jax.Array) -> jax.Array:
        """[batch, length, vocab] float32 logits of `hidden`'s features (any length)."""
        x_BLD = x_BLD.astype(self.cfg.compute_dtype)
        if self.lm_head is None:
            embedding_VD = self.embed.embedding[...].astype(self.cfg.compute_dtype)
            logits_BLV = einsum_float32_out("BLD,VD->BLV", x_BLD, embedding_VD)
        else:
            kernel_DV = self.lm_head.kernel[...].astype(self.cfg.compute_dtype)
            logits_BLV = einsum_float32_out("BLD,DV->BLV", x_BLD, kernel_DV)
        return constrain(logits_BLV, ("batch", "length", "vocab"))
