"""Device put: per-process numpy batches -> global jax.Arrays sharded on the batch dimension."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding


def to_global_arrays(
    batch: Mapping[str, np.ndarray], sharding: NamedSharding, global_rows: int
) -> dict[str, jax.Array]:
    """Assembles each process's rows into global arrays laid out by `sharding`.

    Args:
      batch: this process's part of the batch (its data slot, `mesh.data_slots`), arrays of
        shape [global_rows / slots, ...]; processes sharing a slot pass identical arrays.
      sharding: the global batch's sharding (`mesh.batch_sharding`), the same on every process.
      global_rows: rows of the global batch.

    Returns:
      Arrays of shape [global_rows, ...]; each process's rows fill the rows held by its own
      devices. Runs unchanged on one or many hosts.
    """
    return {
        name: jax.make_array_from_process_local_data(
            sharding, local_values, (global_rows, *local_values.shape[1:])
        )
        for name, local_values in batch.items()
    }
