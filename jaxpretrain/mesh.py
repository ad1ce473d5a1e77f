"""Device mesh from config, and logical-axis -> mesh-axis sharding.

Modules name logical axes only (`embed`, `mlp`, `batch`, `stage`, ...); `config.mesh.rules` maps
each to zero, one or several of the mesh axes `data, fsdp, tensor, pipe`. This file is the only
place that turns those names into shardings, for parameters (`shardings_for`) and activations
(`constrain`, live inside `axis_rules`) alike, through the one resolver `logical_to_mesh_spec`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Device order, slowest-linked first: consecutive devices (one host, one NVLink domain, one TPU
# tray) fill `tensor` first, then `fsdp`; `pipe` and `data` span hosts. Tensor parallelism
# talks inside every layer, pipeline stages only once per microbatch.
MESH_AXES = ("data", "pipe", "fsdp", "tensor")

AxisRules = Sequence[tuple[str, str | Sequence[str] | None]]


def make_mesh(mesh_shape: dict[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with axes `MESH_AXES` of the given sizes (product = device count)."""
    sizes = tuple(mesh_shape[axis] for axis in MESH_AXES)
    # Auto axes: sharding is propagated by the compiler from the in/out shardings we give jit.
    return jax.make_mesh(
        sizes,
        MESH_AXES,
        axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
        devices=devices,
    )


def logical_to_mesh_spec(logical_axes: Sequence[str | None], rules: AxisRules) -> PartitionSpec:
    """Maps each logical axis name through `rules`; a mesh axis is used at most once per array."""
    rule_table = dict(rules)
    used: set[str] = set()
    spec = []
    for name in logical_axes:
        if name is None:
            spec.append(None)
            continue
        if name not in rule_table:
            raise ValueError(
                f"logical axis {name!r} has no entry in config.mesh.rules; add ({name!r}, ...) "
                "mapping it to mesh axes or None."
            )
        target = rule_table[name]
        mesh_axes = () if target is None else (target,) if isinstance(target, str) else target
        mesh_axes = tuple(axis for axis in mesh_axes if axis not in used)
        used.update(mesh_axes)
        spec.append(mesh_axes[0] if len(mesh_axes) == 1 else (mesh_axes or None))
    return PartitionSpec(*spec)


def _axis_size(mesh: Mesh, entry: str | tuple[str, ...] | None) -> int:
    if entry is None:
        return 1
    names = (entry,) if isinstance(entry, str) else entry
    return int(np.prod([mesh.shape[name] for name in names]))


def shardings_for(
    logical_specs, abstract_tree, mesh: Mesh, rules: AxisRules, what: str = "parameter"
):
    """NamedShardings for a pytree of arrays from its pytree of logical PartitionSpecs.

    Raises a ValueError naming the array, its shape and the mesh axis when a dimension does not
    divide evenly: silent replication would hide a mis-sized mesh until memory runs out.
    """

    def one(path, logical_spec, leaf):
        spec = logical_to_mesh_spec(tuple(logical_spec), rules)
        for dim, entry in zip(leaf.shape, spec, strict=False):
            size = _axis_size(mesh, entry)
            if dim % size:
                raise ValueError(
                    f"{what} {jax.tree_util.keystr(path)} with shape {leaf.shape} cannot be "
                    f"split over mesh axis {entry} of size {size}; change the mesh "
                    f"(config.mesh.*) or the model size so that {dim} divides by {size}."
                )
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(
        one,
        logical_specs,
        abstract_tree,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def batch_sharding(mesh: Mesh, rules: AxisRules) -> NamedSharding:
    """Sharding of a [batch, length] input array."""
    return NamedSharding(mesh, logical_to_mesh_spec(("batch", "length"), rules))


def data_slots(
    batch_sharding: NamedSharding,
    global_rows: int,
    process_of: Callable[[jax.Device], int] = lambda device: device.process_index,
) -> dict[int, tuple[int, int]]:
    """Which part of the global batch each process loads: {process: (slot, number of slots)}.

    A process loads the rows its devices hold. With only `data`/`fsdp` across processes every
    process holds its own rows (slot = process index). When `tensor` or `pipe` spans processes,
    several processes hold copies of the same rows: they get the same slot, load the same
    documents and so feed identical copies, as `jax.make_array_from_process_local_data` needs.

    Raises ValueError when two processes hold overlapping but different rows (no loader split
    can feed that mesh).
    """
    rows_by_process: dict[int, set[int]] = {}
    for device, index in batch_sharding.devices_indices_map((global_rows, 1)).items():
        rows = range(*index[0].indices(global_rows))
        rows_by_process.setdefault(process_of(device), set()).update(rows)
    distinct = sorted({frozenset(rows) for rows in rows_by_process.values()}, key=min)
    if sum(len(rows) for rows in distinct) != global_rows:
        raise ValueError(
            f"mesh {dict(batch_sharding.mesh.shape)} gives processes overlapping parts of the "
            f"{global_rows}-row batch; change the mesh so that each process's devices hold "
            "either the same rows as another process or rows of their own."
        )
    slot_of = {rows: slot for slot, rows in enumerate(distinct)}
    return {
        process: (slot_of[frozenset(rows)], len(distinct))
        for process, rows in rows_by_process.items()
    }


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def split_batch(x_B: jax.Array, parts: int) -> jax.Array:
    """[B, ...] -> [parts, B/parts, ...], row i going to part i mod parts.

    Interleaving (rather than contiguous blocks) keeps every part spread over the shards of the
    batch axis, so splitting a sharded batch into micro-batches moves no data between devices.
    """
    rows = x_B.shape[0] // parts
    return jnp.swapaxes(x_B.reshape(rows, parts, *x_B.shape[1:]), 0, 1)


def merge_batch(x_PB: jax.Array) -> jax.Array:
    """Inverse of `split_batch`: [parts, rows, ...] -> [parts * rows, ...]."""
    parts, rows = x_PB.shape[:2]
    return jnp.swapaxes(x_PB, 0, 1).reshape(parts * rows, *x_PB.shape[2:])


_ACTIVE_RULES: contextvars.ContextVar[AxisRules | None] = contextvars.ContextVar(
    "jaxpretrain_axis_rules", default=None
)


@contextlib.contextmanager
def axis_rules(mesh: Mesh, rules: AxisRules) -> Iterator[None]:
    """Makes `constrain` live: activations traced inside are pinned to `mesh` through `rules`."""
    token = _ACTIVE_RULES.set(tuple(rules))
    try:
        with jax.set_mesh(mesh):
            yield
    finally:
        _ACTIVE_RULES.reset(token)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Pins an activation's sharding by logical axis names.

    A no-op outside `axis_rules`, so the model runs unchanged on one device or in a plain jit.
    Inside, names resolve exactly as parameters' do: an unknown name is an error, not replication.
    """
    rules = _ACTIVE_RULES.get()
    if rules is None:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_mesh_spec(logical_axes, rules))


def mesh_axis_of(logical_axis: str) -> str | tuple[str, ...] | None:
    """The mesh axis (or axes) `logical_axis` maps to under the active rules; None outside them."""
    rules = _ACTIVE_RULES.get()
    if rules is None:
        return None
    return logical_to_mesh_spec((logical_axis,), rules)[0]
