"""Device mesh from config, and logical-axis -> mesh-axis sharding.

Modules name logical axes only (`embed`, `mlp`, `batch`, ...); `config.mesh.rules` maps each to
zero, one or several of the mesh axes `data, fsdp, tensor, pipe`. This file is the only place
that turns those names into `NamedSharding`s.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor", "pipe")
BATCH_AXES = ("data", "fsdp")

AxisRules = Sequence[tuple[str, str | Sequence[str] | None]]


def make_mesh(mesh_shape: dict[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with axes (data, fsdp, tensor, pipe) of the given sizes (product = device count)."""
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


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
