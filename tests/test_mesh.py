"""Logical axis rules -> mesh shardings."""

import jax
import pytest
from jax.sharding import PartitionSpec as P

from jaxpretrain import config as config_lib
from jaxpretrain import mesh as mesh_lib

RULES = config_lib.DEFAULT_AXIS_RULES


def test_logical_names_map_through_rules():
    assert mesh_lib.logical_to_mesh_spec(("batch", "length"), RULES) == P(("data", "fsdp"), None)
    assert mesh_lib.logical_to_mesh_spec(("layers", "embed", "mlp"), RULES) == P(
        "pipe", "fsdp", "tensor"
    )


def test_a_mesh_axis_is_used_once_per_array():
    rules = (("embed", "fsdp"), ("mlp", "fsdp"))
    assert mesh_lib.logical_to_mesh_spec(("embed", "mlp"), rules) == P("fsdp", None)


def test_unknown_logical_axis_is_a_clear_error():
    with pytest.raises(ValueError, match="logical axis 'experts' has no entry"):
        mesh_lib.logical_to_mesh_spec(("experts",), RULES)


def test_uneven_split_names_the_parameter():
    mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 8, "tensor": 1, "pipe": 1})
    abstract = {"w": jax.ShapeDtypeStruct((12, 16), "float32")}
    with pytest.raises(ValueError, match=r"\['w'\] with shape \(12, 16\) cannot be split"):
        mesh_lib.shardings_for({"w": P("embed", "mlp")}, abstract, mesh, RULES)


def test_even_split_shards_over_fsdp():
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 4, "tensor": 1, "pipe": 1})
    abstract = {"w": jax.ShapeDtypeStruct((16, 12), "float32")}
    sharding = mesh_lib.shardings_for({"w": P("embed", "mlp")}, abstract, mesh, RULES)["w"]
    assert sharding.shard_shape((16, 12)) == (4, 12)
