"""Fault injection: a run killed anywhere, preempted, resumed on another mesh, fed a poisoned
batch or pointed at another model's workdir either finishes as if nothing happened or stops with
one sentence, losing nothing."""

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from test_train import tiny_config as train_tiny_config  # pytest puts tests/ on sys.path

from jaxpretrain import checkpoint, recovery, train
from jaxpretrain import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 24


def tiny_config(data_dir: str, **train_overrides):
    """test_train's tiny run, saving every 2 steps and keeping all of them."""
    config = train_tiny_config(data_dir, **train_overrides)
    config.checkpoint.update(every=2, max_to_keep=10)
    return config


def read_records(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def step_losses(records) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def events(records, name: str) -> list[dict]:
    return [r for r in records if r.get("event") == name]


def final_params(config, workdir: str):
    exp = train.build_experiment(config, workdir, devices=jax.devices()[:1])
    checkpointer = exp.checkpointer(workdir, read_only=True)
    restored = checkpointer.restore(exp.layout.abstract_state)
    checkpointer.close()
    return restored.step, jax.device_get(restored.state["params"])


def assert_same_params(left, right) -> None:
    jax.tree.map(np.testing.assert_array_equal, left, right)


# --- the command line, killed and preempted ----------------------------------------------------


def main_command(workdir: str, data_dir: str, log_every: int = 1) -> list[str]:
    overrides = {
        "model.num_layers": 2,
        "model.embed_dim": 64,
        "model.num_heads": 4,
        "model.num_kv_heads": 2,
        "model.head_dim": 16,
        "model.mlp_dim": 128,
        "model.max_seq_len": 64,
        "train.steps": STEPS,
        "train.batch_size": 8,
        "train.seq_len": 64,
        "train.warmup_steps": 2,
        "train.log_every": log_every,
        "checkpoint.every": 2,
        "checkpoint.max_to_keep": 3,
        "eval.every": 0,
        "eval.steps": 1,
        "data.dir": data_dir,
        "sample.length": 4,
    }
    return [
        sys.executable,
        "-m",
        "jaxpretrain.main",
        f"--config={REPO}/configs/tiny_clm.py",
        f"--workdir={workdir}",
        *(f"--config.{key}={value}" for key, value in overrides.items()),
    ]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one device: the fastest start
    return env


def last_logged_step(workdir: str) -> int:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return -1
    with open(path) as f:
        steps = [json.loads(line)["step"] for line in f if line.endswith("\n")]
    return max(steps, default=-1)


def wait_for_step(process, workdir: str, step: int, timeout: float = 300) -> bool:
    """Waits until `workdir` logged `step` (True) or the process ended (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if last_logged_step(workdir) >= step:
            return True
        time.sleep(0.01)
    raise TimeoutError(f"no step {step} in {workdir} after {timeout} s")


def run_to_completion(workdir: str, data_dir: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        main_command(workdir, data_dir),
        capture_output=True,
        text=True,
        cwd=REPO,
        env=subprocess_env(),
        timeout=600,
    )


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    result = run_to_completion(workdir, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def kill_config(data_dir):
    config = tiny_config(data_dir, steps=STEPS)
    config.model.dtype = "float32"
    return config


@pytest.mark.slow
def test_kill_9_anywhere_then_rerun_finishes_with_the_uninterrupted_parameters(
    data_dir, uninterrupted, tmp_path
):
    workdir = str(tmp_path / "killed")
    rng = random.Random(0)
    kills = []
    for _attempt in range(12):
        ahead = range(last_logged_step(workdir) + 1, STEPS - 1)
        if not ahead:
            break
        process = subprocess.Popen(
            main_command(workdir, data_dir),
            cwd=REPO,
            env=subprocess_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Kill at one of the next few steps (saves start right after even steps are logged)
        # plus a random delay, so kills land mid-step and mid-save; one in four during start-up.
        if rng.random() < 0.25:
            time.sleep(rng.uniform(0.5, 3.0))
        elif not wait_for_step(process, workdir, rng.choice(ahead[:4])):
            assert process.wait() == 0
            break  # it finished before the kill
        time.sleep(rng.uniform(0.0, 0.05))
        if process.poll() is not None:
            assert process.returncode == 0
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        checkpoints = os.path.join(workdir, "checkpoints")
        writing = os.path.isdir(checkpoints) and any("tmp" in n for n in os.listdir(checkpoints))
        kills.append((last_logged_step(workdir), writing))
    print("kills (last logged step, during an async write):", kills)
    assert len(kills) >= 5
    assert any(writing for _, writing in kills), "no kill landed during an asynchronous save"

    result = run_to_completion(workdir, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    config = kill_config(data_dir)
    reference_step, reference = final_params(config, uninterrupted)
    step, params = final_params(config, workdir)
    assert step == reference_step == STEPS
    assert_same_params(reference, params)
    # Every step's metrics once, equal to the uninterrupted run's.
    records = read_records(workdir)
    assert [r["step"] for r in records if "loss" in r] == list(range(1, STEPS + 1))
    assert step_losses(records) == step_losses(read_records(uninterrupted))


@pytest.mark.slow
def test_sigterm_saves_at_the_next_step_exits_0_and_the_rerun_resumes_there(
    data_dir, uninterrupted, tmp_path
):
    workdir = str(tmp_path / "preempted")
    # Logging every 5 steps: the preemption save must still flush the interval's metrics.
    process = subprocess.Popen(
        main_command(workdir, data_dir, log_every=5),
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert wait_for_step(process, workdir, 5)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    assert "preempted" in stdout
    records = read_records(workdir)
    (preempted,) = events(records, "preempted")
    assert 5 <= preempted["step"] < STEPS
    assert str(preempted["step"]) in os.listdir(os.path.join(workdir, "checkpoints"))
    assert [r for r in records if "loss" in r][-1]["step"] == preempted["step"]

    result = subprocess.run(
        main_command(workdir, data_dir, log_every=5),
        capture_output=True,
        text=True,
        cwd=REPO,
        env=subprocess_env(),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_records(workdir)
    assert events(records, "resume")[0]["step"] == preempted["step"]
    assert [r["step"] for r in records if "loss" in r][-1] == STEPS
    config = kill_config(data_dir)
    assert_same_params(final_params(config, uninterrupted)[1], final_params(config, workdir)[1])


# --- in-process faults ------------------------------------------------------------------------


def test_another_models_workdir_is_refused_with_the_differing_keys(data_dir, tmp_path):
    config = tiny_config(data_dir, steps=2)
    train.train_and_evaluate(config, str(tmp_path))
    metrics_before = (tmp_path / "metrics.jsonl").read_text()

    config.model.num_layers = 3
    config.model.mlp_dim = 256
    config.train.steps = 4
    with pytest.raises(config_lib.ConfigError) as error:
        train.train_and_evaluate(config, str(tmp_path))
    assert str(error.value).count(".") >= 2 and "\n" not in str(error.value)
    assert "model.num_layers 2 -> 3" in str(error.value)
    assert "model.mlp_dim 128 -> 256" in str(error.value)
    assert (tmp_path / "metrics.jsonl").read_text() == metrics_before
    assert os.listdir(tmp_path / "checkpoints") == ["2"]


def test_an_unreadable_checkpoint_stops_the_run_and_keeps_the_metrics(data_dir, tmp_path):
    config = tiny_config(data_dir, steps=4)
    train.train_and_evaluate(config, str(tmp_path))
    metrics_before = (tmp_path / "metrics.jsonl").read_text()
    # Unreadable content of the recorded size: a storage or format problem, not provable
    # corruption, so the run must stop rather than fall back or start over.
    data_file = tmp_path / "checkpoints" / "4" / "data" / "metadata"
    data_file.write_bytes(b"\xff" * data_file.stat().st_size)
    config.train.steps = 6
    with pytest.raises(checkpoint.CheckpointError, match="is complete but could not be restored"):
        train.train_and_evaluate(config, str(tmp_path))
    assert (tmp_path / "metrics.jsonl").read_text() == metrics_before
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]


def test_an_optimizer_of_another_structure_is_refused_by_name(data_dir, tmp_path):
    config = tiny_config(data_dir, steps=2)
    train.train_and_evaluate(config, str(tmp_path))
    config.train.update(grad_clip=0.0, steps=4)
    with pytest.raises(config_lib.ConfigError, match=r"train.grad_clip 1.0 -> 0.0"):
        train.train_and_evaluate(config, str(tmp_path))


def test_a_truncated_newest_checkpoint_is_skipped_and_the_run_finishes(data_dir, tmp_path):
    config = tiny_config(data_dir, steps=6)
    reference = train.train_and_evaluate(config, str(tmp_path / "reference"))
    shutil.copytree(tmp_path / "reference", tmp_path / "run")
    step_dir = tmp_path / "run" / "checkpoints" / "6"
    victim = max(
        (os.path.join(root, name) for root, _, names in os.walk(step_dir) for name in names),
        key=os.path.getsize,
    )
    os.truncate(victim, 1)

    resumed = train.train_and_evaluate(config, str(tmp_path / "run"))

    assert os.listdir(tmp_path / "run" / "checkpoints_corrupt")[0].startswith("6-")
    assert [r["step"] for r in resumed.history] == [5, 6]
    assert step_losses(resumed.history) == {
        s: v for s, v in step_losses(reference.history).items() if s > 4
    }


class PoisonedBatches:
    """Wraps a train iterator; the batches at the given positions carry a NaN loss weight."""

    def __init__(self, inner, poisoned_positions):
        self._inner, self._poisoned, self._position = inner, set(poisoned_positions), 0

    def __next__(self):
        batch = next(self._inner)
        self._position += 1
        if self._position in self._poisoned:
            batch = dict(batch, loss_weights=batch["loss_weights"].copy())
            batch["loss_weights"][0, 0] = np.nan
        return batch

    def get_state(self):
        return {"inner": self._inner.get_state(), "position": self._position}

    def set_state(self, state):
        self._inner.set_state(state["inner"])
        self._position = state["position"]


class DroppedBatches(PoisonedBatches):
    """Wraps a train iterator; the batches at the given positions are never returned."""

    def __init__(self, inner, dropped):
        super().__init__(inner, poisoned_positions=[])
        self._dropped = set(dropped)

    def __next__(self):
        while self._position + 1 in self._dropped:
            next(self._inner)
            self._position += 1
        return super().__next__()


def poisoned_run(config, workdir, positions):
    exp = train.build_experiment(config, str(workdir))
    iterator = PoisonedBatches(exp.train_iterator(num_streams=1), positions)
    return train.run_training(exp, str(workdir), train_iterator=iterator)


def test_a_nan_batch_is_skipped_inside_the_step_and_training_goes_on(data_dir, tmp_path):
    config = tiny_config(data_dir, steps=5)
    config.train.anomaly.action = "skip"
    config.checkpoint.every = 4
    skipped = poisoned_run(config, tmp_path, positions=[5])

    (anomaly,) = events(read_records(tmp_path), "anomaly")
    assert anomaly["step"] == 5 and anomaly["kinds"] == ["non_finite"]
    assert anomaly["update"] == "skipped"
    # The skipped step changed nothing: step 5's parameters and optimizer state are step 4's.
    exp = skipped.experiment
    checkpointer = exp.checkpointer(str(tmp_path))
    step_4 = checkpointer.restore(exp.layout.abstract_state, newest_step=4)
    checkpointer.close()
    assert step_4.step == 4 and int(skipped.state["step"]) == 5
    for key in ("params", "opt_state"):
        assert_same_params(jax.device_get(step_4.state[key]), jax.device_get(skipped.state[key]))

    config.train.steps = 8
    continued = poisoned_run(config, tmp_path, positions=[5])
    assert [r["step"] for r in continued.history] == [6, 7, 8]
    assert all(np.isfinite(loss) for loss in step_losses(continued.history).values())


def test_rollback_restores_the_last_good_checkpoint_and_skips_the_bad_batches(data_dir, tmp_path):
    config = tiny_config(data_dir, steps=8)
    config.train.anomaly.update(action="rollback", rollback_skip_batches=2, max_rollbacks=2)
    result = poisoned_run(config, tmp_path / "rollback", positions=[5])

    records = read_records(tmp_path / "rollback")
    (rollback,) = events(records, "rollback")
    # Checkpoint 4 is restored; batch 5 (poisoned) and the 2 after it are never trained.
    assert (rollback["step"], rollback["to_step"], rollback["skipped_batches"]) == (5, 4, 3)
    assert int(result.state["step"]) == 8
    after_rollback = [r for r in records[records.index(rollback) :] if "loss" in r]
    assert [r["step"] for r in after_rollback] == [5, 6, 7, 8]
    # Exactly a run that never saw batches 5, 6 and 7.
    exp = train.build_experiment(config, str(tmp_path / "clean"))
    iterator = DroppedBatches(exp.train_iterator(num_streams=1), dropped=[5, 6, 7])
    clean = train.run_training(exp, str(tmp_path / "clean"), train_iterator=iterator)
    assert {r["step"]: r["loss"] for r in after_rollback} == {
        step: loss for step, loss in step_losses(clean.history).items() if step >= 5
    }
    assert_same_params(
        jax.device_get(clean.state["params"]), jax.device_get(result.state["params"])
    )


def test_a_run_that_keeps_diverging_stops_after_max_rollbacks(data_dir, tmp_path):
    config = tiny_config(data_dir, steps=12)
    config.train.anomaly.update(action="rollback", rollback_skip_batches=1, max_rollbacks=2)
    with pytest.raises(recovery.AnomalyError, match="max_rollbacks"):
        poisoned_run(config, tmp_path, positions=range(5, 100))
    assert len(events(read_records(tmp_path), "rollback")) == 2


@pytest.mark.slow
def test_elastic_resume_on_another_mesh_trains_the_same_examples_and_losses(data_dir, tmp_path):
    config = tiny_config(data_dir, steps=6)
    config.mesh.update(data=1, fsdp=8)
    config.data.num_streams = 2
    uninterrupted = train.train_and_evaluate(config, str(tmp_path / "a"))

    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "6")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "4")
    config.mesh.update(data=2, fsdp=2)
    resumed = train.train_and_evaluate(config, str(tmp_path / "b"), devices=jax.devices()[:4])

    assert resumed.experiment.mesh.size == 4
    before = {r["step"]: r for r in uninterrupted.history}
    for record in resumed.history:
        reference = before[record["step"]]
        # The same examples: token shares are computed from the host batches.
        assert record["packing_efficiency"] == reference["packing_efficiency"]
        assert record["loss_token_fraction"] == reference["loss_token_fraction"]
        np.testing.assert_allclose(record["loss"], reference["loss"], rtol=2e-5)
    assert [r["step"] for r in resumed.history] == [3, 4, 5, 6]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def start_cluster(config, workdir: str, num_processes: int, devices_per_process: int):
    """Starts `config`'s training on `num_processes` CPU processes on localhost."""
    config_path = os.path.join(os.path.dirname(workdir), f"{os.path.basename(workdir)}.json")
    with open(config_path, "w") as f:
        json.dump({"config": config.to_dict()}, f, default=str)
    port = free_port()
    driver = os.path.join(REPO, "tests", "multihost_driver.py")
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("XLA_FLAGS", None)
    return [
        subprocess.Popen(
            [
                sys.executable,
                driver,
                str(index),
                str(num_processes),
                str(port),
                str(devices_per_process),
                config_path,
                workdir,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        for index in range(num_processes)
    ]


def finish_cluster(processes) -> list[dict]:
    """Waits for every process; their outputs ({"history", "preempted"})."""
    outputs = [process.communicate(timeout=900) for process in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-4000:]
    return [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]


def run_cluster(config, workdir: str, num_processes: int, devices_per_process: int) -> list[dict]:
    """Trains `config` on `num_processes` CPU processes on localhost; their outputs."""
    return finish_cluster(start_cluster(config, workdir, num_processes, devices_per_process))


@pytest.mark.slow
def test_a_two_process_run_resumes_on_one_process_with_the_same_examples(data_dir, tmp_path):
    config = tiny_config(data_dir, steps=6)
    config.mesh.update(data=-1, fsdp=1)  # 8 data-parallel devices: 4 on each process
    two_processes = run_cluster(config, str(tmp_path / "two"), 2, 4)
    assert step_losses(two_processes[0]["history"]) == step_losses(two_processes[1]["history"])
    records = [r for r in read_records(tmp_path / "two") if "loss" in r]

    # The same run on one process with 8 devices: the same examples (2 data streams) and losses.
    config.data.num_streams = 2
    one_process = train.train_and_evaluate(config, str(tmp_path / "one"))
    for record, reference in zip(records, one_process.history, strict=True):
        assert record["packing_efficiency"] == reference["packing_efficiency"]
        np.testing.assert_allclose(record["loss"], reference["loss"], rtol=2e-5)

    # Elastic: the two-process checkpoint at step 2 resumes on this single process.
    config.data.num_streams = 0
    shutil.copytree(tmp_path / "two", tmp_path / "elastic")
    for step in ("4", "6"):
        shutil.rmtree(tmp_path / "elastic" / "checkpoints" / step)
    resumed = train.train_and_evaluate(config, str(tmp_path / "elastic"))
    assert [r["step"] for r in resumed.history] == [3, 4, 5, 6]
    for record in resumed.history:
        reference = one_process.history[record["step"] - 1]
        assert record["packing_efficiency"] == reference["packing_efficiency"]
        assert record["loss_token_fraction"] == reference["loss_token_fraction"]
        np.testing.assert_allclose(record["loss"], reference["loss"], rtol=2e-5)


@pytest.mark.slow
def test_sigterm_on_one_host_saves_the_same_step_on_every_host_and_resumes(data_dir, tmp_path):
    config = tiny_config(data_dir, steps=40)
    config.mesh.update(data=-1, fsdp=1)
    config.checkpoint.every = 1000  # only the preemption save and the last
    workdir = str(tmp_path / "run")
    processes = start_cluster(config, workdir, 2, 4)
    assert wait_for_step(processes[0], workdir, 3)
    processes[1].send_signal(signal.SIGTERM)  # the preemption notice reaches one host only
    outputs = finish_cluster(processes)

    assert [output["preempted"] for output in outputs] == [True, True]
    (preempted,) = events(read_records(workdir), "preempted")
    assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(preempted["step"])]
    assert 3 <= preempted["step"] < 40
    resumed = run_cluster(config, workdir, 2, 4)
    assert [r["step"] for r in resumed[0]["history"]][-1] == 40
    assert events(read_records(workdir), "resume")[0]["step"] == preempted["step"]
