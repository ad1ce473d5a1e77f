"""The command line as a user runs it: outputs in the workdir, resume, and one-line errors."""

import ast
import json
import os
import random
import socket
import string
import subprocess
import sys
import textwrap

import pytest

TINY_CONFIG = """
from jaxpretrain.config import default_config


def get_config():
    config = default_config()
    config.model.update(num_layers=1, embed_dim=32, num_heads=2, num_kv_heads=1, head_dim=16,
                        mlp_dim=64, max_seq_len=64, dtype="float32")
    config.train.update(steps=4, batch_size=8, seq_len=64, log_every=2, warmup_steps=1)
    config.checkpoint.update(every=2)
    config.eval.update(every=2, steps=1)
    config.data.update(vocab_size=512, shard_bytes=1 << 30, validation_fraction=0.3)
    config.sample.length = 8
    return config
"""


def run_main(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jaxpretrain.main", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


@pytest.fixture
def tiny(tmp_path):
    (tmp_path / "tiny.py").write_text(TINY_CONFIG)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = random.Random(0)
    for i in range(12):
        words = (
            "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 8))) for _ in range(400)
        )
        (corpus / f"doc{i}.txt").write_text(" ".join(words))
    return tmp_path


@pytest.mark.slow
def test_main_prepares_trains_writes_outputs_and_resumes(tiny):
    args = (
        "--config=tiny.py",
        "--workdir=run",
        "--config.data.source=corpus",
        "--config.train.seed=7",
    )
    first = run_main(*args, cwd=tiny)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "step       4/4 | loss" in first.stdout
    assert "sample: " in first.stdout

    workdir = tiny / "run"
    with open(workdir / "config.json") as f:
        assert json.load(f)["train"]["seed"] == 7
    with open(workdir / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records] == [0, 2, 4]
    assert set(records[1]) >= {"loss", "learning_rate", "grad_norm", "tokens_per_second", "mfu"}
    assert "eval/bits_per_byte" in records[2]
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
    assert (workdir / "data" / "manifest.json").exists()
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir))

    # A longer run in the same workdir continues from step 4 instead of starting over.
    second = run_main(*args, "--config.train.steps=6", cwd=tiny)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from checkpoint at step 4" in second.stderr
    with open(workdir / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records if "event" not in r] == [0, 2, 4, 6]
    assert [(r["step"], r["event"]) for r in records if "event" in r] == [(4, "resume")]

    # --mode=eval re-evaluates the newest checkpoint: the same numbers the run logged at step 6.
    evaluation = run_main(*args, "--config.train.steps=6", "--mode=eval", cwd=tiny)
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    printed = ast.literal_eval(evaluation.stdout.strip().splitlines()[-1])
    assert printed["step"] == 6
    assert printed["eval/loss"] == pytest.approx(records[-1]["eval/loss"], rel=1e-6)


@pytest.mark.slow
def test_two_processes_train_like_one_with_eight_devices_exit_and_resume(tiny):
    args = ["--config=tiny.py", "--config.data.source=corpus", "--config.data.num_streams=2"]
    one = run_main(*args, "--workdir=one", cwd=tiny)  # 8 devices (tests/conftest.py)
    assert one.returncode == 0, one.stderr[-3000:]

    def run_two_processes(*extra: str) -> list[subprocess.CompletedProcess]:
        with socket.socket() as sock:
            sock.bind(("localhost", 0))
            port = sock.getsockname()[1]
        env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
        processes = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "jaxpretrain.main",
                    *args,
                    "--workdir=two",
                    f"--coordinator_address=localhost:{port}",
                    "--num_processes=2",
                    f"--process_id={index}",
                    *extra,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=tiny,
                env=env,
            )
            for index in range(2)
        ]
        results = []
        for process in processes:
            stdout, stderr = process.communicate(timeout=600)
            results.append(
                subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
            )
        return results

    first = run_two_processes()
    for result in first:
        assert result.returncode == 0, result.stderr[-3000:]
    # Only process 0 prints the sample and writes metrics, but both compute it (a collective).
    assert "sample: " in first[0].stdout and "sample: " not in first[1].stdout

    def logged(workdir: str) -> dict[int, dict]:
        with open(tiny / workdir / "metrics.jsonl") as f:
            return {r["step"]: r for r in map(json.loads, f) if "event" not in r}

    two, reference = logged("two"), logged("one")
    assert sorted(two) == sorted(reference) == [0, 2, 4]
    for step, record in two.items():
        for key in ("loss", "eval/loss"):
            if key in record:
                assert record[key] == pytest.approx(reference[step][key], rel=2e-5)

    second = run_two_processes("--config.train.steps=6")
    for result in second:
        assert result.returncode == 0, result.stderr[-3000:]
        assert "resumed from checkpoint at step 4" in result.stderr
    assert sorted(logged("two")) == [0, 2, 4, 6]


def test_process_zero_failing_to_prepare_stops_every_process(tiny):
    """Process 1 must not wait forever at a barrier process 0 never reaches."""
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jaxpretrain.main",
                "--config=tiny.py",
                "--workdir=run",
                "--config.data.source=missing_dir",
                f"--coordinator_address=localhost:{port}",
                "--num_processes=2",
                f"--process_id={index}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tiny,
            env=env,
        )
        for index in range(2)
    ]
    try:
        results = [process.communicate(timeout=180) for process in processes]
    finally:
        for process in processes:
            process.kill()
    for process, (_, stderr) in zip(processes, results, strict=True):
        assert process.returncode != 0
        assert "Traceback" not in stderr, stderr[-3000:]
    assert "missing_dir" in results[0][1].strip().splitlines()[-1]
    assert "process 0 failed to prepare the data" in results[1][1].strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--config.train.batch_size=12", "error: config key train.batch_size=12 is not divisible"),
        ("--config.train.nonexistent=1", "error: --config.train.nonexistent=1 names no config key"),
        ("--config.data.source=missing_dir", "missing_dir"),
    ],
)
def test_bad_input_is_one_clear_line(tiny, override, message):
    result = run_main("--config=tiny.py", "--workdir=run", override, cwd=tiny)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]


def test_data_curation_config_drives_the_automatic_prepare(tmp_path):
    from jaxpretrain import config as config_lib
    from jaxpretrain.curate import prepare
    from jaxpretrain.data import manifest as manifest_lib

    (tmp_path / "corpus").mkdir()
    rng = random.Random(1)
    for i in range(8):
        words = (
            "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 8))) for _ in range(400)
        )
        (tmp_path / "corpus" / f"d{i}.txt").write_text(" ".join(words))
    corpus = str(tmp_path / "corpus")
    (tmp_path / "curation.py").write_text(
        textwrap.dedent(f"""
            from jaxpretrain.curate import config as data_config

            def get_config():
                c = data_config.default_data_config()
                c.sources = [data_config.source_config(name="mine", type="files", path={corpus!r})]
                c.filters.chain = ()
                c.dedup.minhash.enabled = False
                c.tokenizer.vocab_size = 430
                return c
        """)
    )
    config = config_lib.default_config()
    config.data.curation = str(tmp_path / "curation.py")
    data_dir = prepare.ensure_prepared_data(config, str(tmp_path / "run"))
    manifest = manifest_lib.read_manifest(data_dir)
    assert manifest.vocab_size == 430
    assert {shard.source for shard in manifest.split("train").shards} == {"mine"}


@pytest.mark.slow
def test_restart_reuses_the_persistent_compilation_cache(tiny):
    """train.compilation_cache_dir: the first run writes compiled programs there, a restart
    (a fresh process, as after a preemption) finds every one of them and compiles nothing new."""
    env = {**os.environ, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    args = ("--config=tiny.py", "--config.train.compilation_cache_dir=xla_cache",
            "--config.train.steps=2", "--config.eval.every=0")  # fmt: skip

    def run(workdir: str) -> set[str]:
        result = subprocess.run(
            [sys.executable, "-m", "jaxpretrain.main", *args, f"--workdir={workdir}"],
            capture_output=True, text=True, cwd=tiny, timeout=600, env=env,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        return {p.name for p in (tiny / "xla_cache").glob("*-cache")}

    first = run("run_a")
    assert len(first) >= 2  # at least the init and the train step
    # A new workdir trains from step 0 again: the same programs, all read from the cache.
    assert run("run_b") == first
