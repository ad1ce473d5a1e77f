"""The checkpointer's guarantees: a corrupt newest checkpoint is set aside, anything else that
fails stops with one sentence and changes nothing, a failed save names its directory."""

import contextlib
import logging
import os
import subprocess
import uuid

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxpretrain import checkpoint


def make_state(value: float) -> dict:
    return {"weights": jnp.full((64, 64), value, jnp.float32), "step": jnp.int32(int(value))}


def abstract_state() -> dict:
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), make_state(0.0)
    )


def save_steps(directory, steps, use_async=True) -> None:
    checkpointer = checkpoint.Checkpointer(str(directory), max_to_keep=10, use_async=use_async)
    for step in steps:
        checkpointer.save(step, make_state(step), {"position": step}, {"records": step})
    checkpointer.close()


def restore(directory, read_only=False, **kwargs):
    checkpointer = checkpoint.Checkpointer(str(directory), max_to_keep=10, read_only=read_only)
    try:
        return checkpointer.restore(abstract_state(), **kwargs)
    finally:
        checkpointer.close()


def largest_file(step_dir):
    files = [
        os.path.join(root, name)
        for root, _, names in os.walk(step_dir)
        for name in names
        if name != "files.json"
    ]
    return max(files, key=os.path.getsize)


def test_restores_state_data_position_and_run_record(tmp_path):
    save_steps(tmp_path / "checkpoints", [1, 2])
    restored = restore(tmp_path / "checkpoints")
    assert restored.step == 2
    np.testing.assert_array_equal(restored.state["weights"], np.full((64, 64), 2.0))
    assert restored.data_states == [{"position": 2}]
    assert restored.run == {"records": 2}


def test_a_truncated_newest_checkpoint_is_set_aside_with_a_warning(tmp_path, caplog):
    directory = tmp_path / "checkpoints"
    save_steps(directory, [1, 2])
    victim = largest_file(directory / "2")
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)

    with caplog.at_level(logging.WARNING):
        restored = restore(directory)

    assert restored.step == 1
    np.testing.assert_array_equal(restored.state["weights"], np.full((64, 64), 1.0))
    assert any(str(directory / "2") in record.getMessage() for record in caplog.records)
    assert not (directory / "2").exists()
    assert [name.split("-")[0] for name in os.listdir(tmp_path / "checkpoints_corrupt")] == ["2"]
    # The run can save step 2 again (no "step already exists" later on).
    save_steps(directory, [2])
    assert restore(directory).step == 2


def test_a_reader_skips_a_corrupt_checkpoint_and_changes_nothing(tmp_path):
    directory = tmp_path / "checkpoints"
    save_steps(directory, [1, 2])
    os.truncate(largest_file(directory / "2"), 10)
    half_written = directory / "3.orbax-checkpoint-tmp-123"  # a live trainer's save
    half_written.mkdir()
    files_before = sorted(str(path) for path in tmp_path.rglob("*"))

    assert restore(directory, read_only=True).step == 1

    assert sorted(str(path) for path in tmp_path.rglob("*")) == files_before


def test_when_every_checkpoint_is_corrupt_the_run_stops(tmp_path):
    directory = tmp_path / "checkpoints"
    save_steps(directory, [1])
    os.truncate(largest_file(directory / "1"), 10)
    with pytest.raises(checkpoint.CheckpointError, match=r"every checkpoint .* was corrupt"):
        restore(directory)


def test_only_steps_this_checkpointer_saved_get_a_size_record(tmp_path):
    directory = tmp_path / "checkpoints"
    save_steps(directory, [1])
    os.remove(directory / "1" / "files.json")  # killed after Orbax finalised it
    save_steps(directory, [2])
    assert not (directory / "1" / "files.json").exists()
    assert (directory / "2" / "files.json").exists()
    assert restore(directory).step == 2


def test_a_checkpoint_with_a_deleted_file_is_set_aside(tmp_path):
    directory = tmp_path / "checkpoints"
    save_steps(directory, [1, 2])
    os.remove(largest_file(directory / "2"))
    assert restore(directory).step == 1


def test_a_complete_but_unreadable_checkpoint_stops_and_changes_nothing(tmp_path):
    directory = tmp_path / "checkpoints"
    save_steps(directory, [1, 2])
    # Same size, unreadable content: not provably corrupt (a storage or format problem), so the
    # run must stop rather than fall back or start over.
    data_file = directory / "2" / "data" / "metadata"
    data_file.write_bytes(b"\xff" * data_file.stat().st_size)
    before = sorted(os.listdir(directory))

    with pytest.raises(
        checkpoint.CheckpointError, match=f"checkpoint {directory / '2'} is complete"
    ):
        restore(directory)
    assert sorted(os.listdir(directory)) == before


def test_check_run_refuses_before_any_array_is_read(tmp_path):
    directory = tmp_path / "checkpoints"
    save_steps(directory, [1])

    def refuse(run):
        raise ValueError(f"another model: {run}")

    with pytest.raises(ValueError, match="another model: {'records': 1}"):
        restore(directory, check_run=refuse)
    assert os.listdir(directory) == ["1"]


def test_a_parameters_reader_leaves_the_optimizer_state_unread(tmp_path):
    """Evaluation, export and sampling restore `params_only`: the parameters as saved, and no
    array of the optimizer state (Adam's moments: twice the parameters) is read into memory."""
    params = {"w": jnp.full((64, 64), 2.0), "b": jnp.arange(64.0)}
    state = {"params": params, "opt_state": optax.adam(1e-3).init(params), "step": jnp.int32(7)}
    writer = checkpoint.Checkpointer(str(tmp_path), max_to_keep=2, use_async=False)
    writer.save(7, state, {"position": 7}, {"records": 7})
    writer.close()
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )
    reader = checkpoint.Checkpointer(str(tmp_path), max_to_keep=2, read_only=True)
    restored = reader.restore(checkpoint.params_only(abstract))
    reader.close()
    assert restored.step == 7 and int(restored.state["step"]) == 7
    jax.tree.map(np.testing.assert_array_equal, restored.state["params"], params)
    unread = jax.tree.leaves(restored.state["opt_state"])
    assert unread and not any(isinstance(leaf, jax.Array) for leaf in unread)


def test_rollback_restores_the_newest_checkpoint_before_a_step_and_discards_later_ones(tmp_path):
    directory = tmp_path / "checkpoints"
    save_steps(directory, [2, 4, 6])
    checkpointer = checkpoint.Checkpointer(str(directory), max_to_keep=10)
    restored = checkpointer.restore(abstract_state(), newest_step=5)
    checkpointer.discard_after(restored.step)
    checkpointer.close()
    assert restored.step == 4
    assert sorted(os.listdir(directory)) == ["2", "4"]


@contextlib.contextmanager
def small_filesystem(path, size: str):
    """A tmpfs of `size` at `path` (root only); skips where mounting is not permitted."""
    path.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", f"jaxpretrain-{uuid.uuid4().hex[:6]}", path],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {result.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=False)


@pytest.mark.parametrize("use_async", [True, False])
def test_a_full_disk_names_the_directory_and_keeps_the_previous_checkpoint(tmp_path, use_async):
    with small_filesystem(tmp_path / "disk", "1m") as disk:
        directory = disk / "checkpoints"
        checkpointer = checkpoint.Checkpointer(str(directory), max_to_keep=10, use_async=use_async)
        checkpointer.save(1, make_state(1.0), {"position": 1}, {"records": 1})
        checkpointer.wait()
        noise = jax.random.normal(jax.random.key(0), (512, 1024))  # 2 MiB, incompressible
        big = {"weights": noise, "step": jnp.int32(2)}
        with pytest.raises(checkpoint.CheckpointError) as error:
            checkpointer.save(2, big, {"position": 2}, {"records": 2})
            checkpointer.wait()
        message = str(error.value)
        assert str(directory) in message and "checkpoint 1 is intact" in message
        with contextlib.suppress(checkpoint.CheckpointError):
            checkpointer.close()
        # Freed space: the same directory restores the previous checkpoint.
        restored = restore(directory)
        assert restored.step == 1
        np.testing.assert_array_equal(restored.state["weights"], np.full((64, 64), 1.0))
