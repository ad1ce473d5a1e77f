"""tools/gpu_bench.sh and tools/fetch_gpu_wheels.sh parse and pass shellcheck; the script itself
runs end to end in CI with --cpu-smoke (in the environment that has torch, .ci/run)."""

import pathlib
import subprocess
import sys

import pytest

SCRIPTS = [
    pathlib.Path(__file__).parent.parent / "tools" / name
    for name in ("gpu_bench.sh", "fetch_gpu_wheels.sh")
]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_script_parses_and_passes_shellcheck(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    shellcheck = pathlib.Path(sys.executable).parent / "shellcheck"
    result = subprocess.run([str(shellcheck), str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_unknown_flags_are_refused_with_the_usage():
    result = subprocess.run(
        ["bash", str(SCRIPTS[0]), "--fast"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "usage: tools/gpu_bench.sh" in result.stderr
