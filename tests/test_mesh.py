"""Logical axis rules -> mesh shardings."""

import jax
import numpy as np
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


def two_hosts(device) -> int:
    """A pretend 2-process layout of the 8 test devices: 0-3 on process 0, 4-7 on process 1."""
    return device.id // 4


def slots(**mesh_shape) -> dict[int, tuple[int, int]]:
    shape = {"data": 1, "fsdp": 1, "tensor": 1, "pipe": 1, **mesh_shape}
    mesh = mesh_lib.make_mesh(shape)
    batch = mesh_lib.batch_sharding(mesh, RULES)
    return mesh_lib.data_slots(batch, global_rows=16, process_of=two_hosts)


def test_each_process_loads_its_own_rows_when_only_the_batch_spans_processes():
    assert slots(data=8) == {0: (0, 2), 1: (1, 2)}
    assert slots(data=2, fsdp=2, tensor=2) == {0: (0, 2), 1: (1, 2)}


def test_processes_holding_copies_of_the_same_rows_share_a_slot():
    # Pipeline stages on different hosts both hold the whole batch (stage 0 embeds it).
    assert slots(pipe=2, fsdp=4) == {0: (0, 1), 1: (0, 1)}
    # Tensor parallelism over all 8 devices: every process holds every row.
    assert slots(tensor=8) == {0: (0, 1), 1: (0, 1)}
    # Within each stage the batch splits over data, across the same hosts.
    assert slots(data=2, pipe=2, fsdp=2) == {0: (0, 2), 1: (1, 2)}


def test_the_mesh_fills_tensor_with_neighbouring_devices_and_pipe_last():
    mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 2, "tensor": 2, "pipe": 2})
    devices = np.vectorize(lambda d: d.id)(mesh.devices)
    tensor_groups = devices.reshape(-1, 2).tolist()
    assert tensor_groups == [[0, 1], [2, 3], [4, 5], [6, 7]]
    stage_of = {int(d): stage for stage in range(2) for d in devices[:, stage].flat}
    assert stage_of == {0: 0, 1: 0, 2: 0, 3: 0, 4: 1, 5: 1, 6: 1, 7: 1}


def test_processes_with_overlapping_but_different_rows_are_a_clear_error():
    mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 4, "tensor": 1, "pipe": 2})
    batch = mesh_lib.batch_sharding(mesh, RULES)
    uneven_hosts = lambda device: 0 if device.id in (0, 1, 4) else 1  # noqa: E731
    with pytest.raises(ValueError, match="overlapping parts of the 16-row batch"):
        mesh_lib.data_slots(batch, global_rows=16, process_of=uneven_hosts)
