"""Pipeline parallelism: the layer stack split into stages that hand microbatches along `stage`.

Every stage runs at every iteration, as one `jax.vmap` over a leading `stage` axis that the axis
rules shard over the `pipe` mesh axis (MaxText's formulation): after each iteration the stage
outputs shift by one stage (`jnp.roll`, which XLA lowers to a collective permute between
neighbouring pipe devices) and stage 0 takes the next microbatch.

Schedule, with S stages, R repeats and M microbatches, iteration t = 0 .. M*R + S - 2:

    stage s works on virtual index v = t - s (idle while v < 0 or v >= M*R)
    microbatch m = v mod M, repeat r = v // M, layers of group (r, s)

Layer group (r, s) is layers [(r*S + s) * P, (r*S + s + 1) * P) with P = num_layers / (S*R).
R = 1 is GPipe: stage s holds one contiguous block of layers. R > 1 is the circular
(interleaved) schedule: a microbatch passes through all stages R times, each stage holding R
non-adjacent blocks, which shrinks the bubble from (S-1)/(M+S-1) to (S-1)/(R*M+S-1) at the cost
of R x more stage-to-stage transfers (and, here, one re-layout of the layer weights per step: the
parameters keep their natural layer order so checkpoints do not depend on the pipeline).

The per-microbatch activations between passes live in one buffer `io_MbLD`, which turns by one
microbatch each iteration: stage 0 reads microbatch t mod M from slot 0 and the last stage
writes its finished microbatch back to a fixed slot, which the circular schedule reads again M
iterations later (hence M >= S there). The features that shape attention (segment ids,
positions, bidirectional) travel by microbatch index, so every objective's masks hold per stage;
the attention kernels' variant is picked from the whole batch, outside the vmap over stages.

Shape suffixes: S stages, R repeats, P layers per group, M microbatches, b microbatch rows,
L length, D embed.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpretrain import mesh as mesh_lib
from jaxpretrain.model.attention_impls import attention_mask, batch_facts
from jaxpretrain.model.config import ModelConfig


def bubble_fraction(stages: int, repeats: int, microbatches: int) -> float:
    """Share of stage-iterations that compute nothing useful: (S-1) / (R*M + S-1)."""
    return (stages - 1) / (repeats * microbatches + stages - 1)


def _stage_weights(stacked_state: nnx.State, cfg: ModelConfig) -> nnx.State:
    """Layer weights [num_layers, ...] -> [S, R, P, ...], the S axis sharded over `stage`."""
    stages, repeats = cfg.pipeline_stages, cfg.pipeline_repeats
    per_group = cfg.num_layers // (stages * repeats)
    logical_specs = nnx.get_partition_spec(stacked_state)

    def regroup(weight: jax.Array, logical_spec: Any) -> jax.Array:
        grouped = weight.reshape(repeats, stages, per_group, *weight.shape[1:])
        grouped_SRP = jnp.swapaxes(grouped, 0, 1)
        return mesh_lib.constrain(grouped_SRP, ("stage", None, None, *tuple(logical_spec)[1:]))

    return jax.tree.map(regroup, stacked_state, logical_specs)


def apply_pipeline(
    apply_layers: Any,
    stacked_state: nnx.State,
    x_BLD: jax.Array,
    segment_ids_BL: jax.Array,
    positions_BL: jax.Array,
    bidirectional_BL: jax.Array,
    cfg: ModelConfig,
) -> jax.Array:
    """Runs the layer stack as a pipeline; equals running the layers in order on the batch.

    Args:
      apply_layers: (layer_state [P, ...], x_bLD, positions_bL, mask_b) -> x_bLD, applying P
        layers in order (the model's scanned stack).
      stacked_state: the stacked layers' parameters, [num_layers, ...] in layer order.
      x_BLD: [batch, length, embed] the embedded inputs; batch divisible by the microbatches.
      segment_ids_BL, positions_BL, bidirectional_BL: the batch features shaping attention.
      cfg: the model config; its `pipeline_*` fields give S, R and M.

    Returns:
      [batch, length, embed], the output of the last layer.
    """
    stages, repeats = cfg.pipeline_stages, cfg.pipeline_repeats
    microbatches = cfg.pipeline_microbatches
    batch = x_BLD.shape[0]
    if batch % microbatches:
        raise ValueError(
            f"a batch of {batch} rows does not split into mesh.microbatches={microbatches}; "
            f"use a batch size divisible by {microbatches}."
        )
    weights_SRP = _stage_weights(stacked_state, cfg)
    io_logical = (None, "batch", "length", "embed")
    io_MbLD = mesh_lib.constrain(mesh_lib.split_batch(x_BLD, microbatches), io_logical)
    segment_ids_MbL = mesh_lib.split_batch(segment_ids_BL, microbatches)
    positions_MbL = mesh_lib.split_batch(positions_BL, microbatches)
    bidirectional_MbL = mesh_lib.split_batch(bidirectional_BL, microbatches)
    # Of the whole batch, outside the vmap over stages: an attention kernel's variant switch
    # then stays one executed branch in every stage (see attention_impls.BatchFacts).
    facts = batch_facts(segment_ids_BL, bidirectional_BL)

    def run_stage(weights_RP, repeat, x_bLD, segment_ids_bL, positions_bL, bidirectional_bL):
        weights_P = jax.tree.map(
            lambda w: jax.lax.dynamic_index_in_dim(w, repeat, axis=0, keepdims=False), weights_RP
        )
        mask_b = attention_mask(segment_ids_bL, bidirectional_bL, facts)
        return apply_layers(weights_P, x_bLD, positions_bL, mask_b)

    # Constraints inside the stage get the stage axis's mesh axis on their vmapped dimension.
    run_stages = jax.vmap(run_stage, spmd_axis_name=mesh_lib.mesh_axis_of("stage"))
    stage_index_S = jnp.arange(stages)
    state_logical = ("stage", "batch", "length", "embed")

    # The buffer turns by one microbatch an iteration (a local copy along the unsplit M axis), so
    # stage 0 always reads slot 0 and the last stage always writes slot `write_slot`: static
    # slices. Indexing it by iteration instead made the partitioner gather the whole buffer over
    # the batch shards every iteration (seen in libtpu's program).
    write_slot = (1 - stages) % microbatches

    def iteration(carry, t):
        state_SbLD, io_MbLD = carry
        virtual_S = t - stage_index_S
        micro_S = jnp.mod(virtual_S, microbatches)
        repeat_S = jnp.clip(virtual_S // microbatches, 0, repeats - 1)
        state_SbLD = state_SbLD.at[0].set(io_MbLD[0])  # microbatch t mod M
        state_SbLD = mesh_lib.constrain(state_SbLD, state_logical)
        out_SbLD = run_stages(
            weights_SRP,
            repeat_S,
            state_SbLD,
            segment_ids_MbL[micro_S],
            positions_MbL[micro_S],
            bidirectional_MbL[micro_S],
        )
        out_SbLD = mesh_lib.constrain(out_SbLD, state_logical)
        # The last stage's finished microbatch, (t - S + 1) mod M, goes back to the buffer
        # (stage 0 of the next repeat, or the output); before the pipeline has filled it holds
        # nothing to keep.
        finished = t >= stages - 1
        keep = jnp.where(finished, out_SbLD[stages - 1], io_MbLD[write_slot])
        io_MbLD = jnp.roll(io_MbLD.at[write_slot].set(keep), -1, axis=0)
        io_MbLD = mesh_lib.constrain(io_MbLD, io_logical)
        # Stage s's output is stage s+1's input; slot 0 is overwritten at the next iteration.
        return (jnp.roll(out_SbLD, 1, axis=0), io_MbLD), None

    state_SbLD = jnp.zeros((stages, *io_MbLD.shape[1:]), x_BLD.dtype)
    iterations = repeats * microbatches + stages - 1
    (_, io_MbLD), _ = jax.lax.scan(
        iteration, (state_SbLD, io_MbLD), jnp.arange(iterations, dtype=jnp.int32)
    )
    # Undo the buffer's turns: slot 0 holds microbatch `iterations` mod M.
    io_MbLD = jnp.roll(io_MbLD, iterations % microbatches, axis=0)
    return mesh_lib.merge_batch(io_MbLD)
