"""tools/profile_summary.py: where a profiled step's time goes, on a hand-made GPU trace with
known totals and on a real CPU trace of the tiny model written by `benchmark.py train`."""

import gzip
import json
import os
import pathlib
import subprocess
import sys

import pytest

TOOLS = pathlib.Path(__file__).parent.parent / "tools"
sys.path.insert(0, str(TOOLS))

import profile_summary  # noqa: E402


def metadata(pid, name, tid=None):
    if tid is None:
        return {"ph": "M", "pid": pid, "name": "process_name", "args": {"name": name}}
    return {"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": name}}


def op(name, ts, dur, tid=1, pid=1, long_name=None):
    event = {"ph": "X", "pid": pid, "tid": tid, "ts": ts, "dur": dur, "name": name}
    if long_name:
        event["args"] = {"long_name": long_name}
    return event


def gpu_trace(path: pathlib.Path) -> pathlib.Path:
    """One GPU: 'XLA Ops' (HLO ops) and a stream (kernels, the same time again), a host thread.
    Ops: a cuBLAS GEMM 600 us, a fusion 200, an all-reduce 100, 500 idle, cuDNN attention 500."""
    events = [
        metadata(1, "/device:GPU:0"),
        metadata(1, "XLA Ops", tid=1),
        metadata(1, "Stream #13(compute)", tid=2),
        metadata(2, "/host:CPU"),
        metadata(2, "python", tid=7),
        op("while.2", 0, 2000),  # spans its body's ops: not counted
        op("custom-call.3", 0, 600, long_name='custom_call_target="__cublas$lt$matmul"'),
        op("loop_add_fusion", 600, 200),
        op("all-reduce-start.1", 800, 100),
        op("custom-call.7", 1500, 500, long_name='custom_call_target="__cudnn$fmhaSoftmax"'),
        op("sm90_xmma_gemm_bf16", 0, 600, tid=2),  # kernels: the same time, another view
        op("PjitFunction(train_step)", 0, 3000, pid=2, tid=7),
    ]
    path.mkdir(parents=True)
    trace = path / "host.trace.json.gz"
    with gzip.open(trace, "wt") as file:
        json.dump({"displayTimeUnit": "ns", "traceEvents": events}, file)
    return trace


def test_gpu_trace_totals_categories_and_busy_fraction(tmp_path):
    trace = gpu_trace(tmp_path / "plugins" / "profile" / "run")
    assert profile_summary.find_trace(tmp_path) == trace
    summary = profile_summary.summarize(trace)
    assert summary.source == "/device:GPU:0 XLA Ops"
    assert summary.by_category == {
        "matmul": 600.0,
        "attention": 500.0,
        "fusion": 200.0,
        "collective": 100.0,
    }
    assert summary.op_microseconds == 1400.0
    assert summary.wall_microseconds == 2000.0 and summary.busy_microseconds == 1400.0
    assert summary.busy_fraction == pytest.approx(0.7)
    assert [op.name for op in summary.ops] == [
        "custom-call.3",
        "custom-call.7",
        "loop_add_fusion",
        "all-reduce-start.1",
    ]
    table = summary.markdown(top=2, steps=2)
    assert "busy 70.0%" in table and "1.0 ms a step" in table
    assert "| matmul | 0.60 | 42.9% |" in table
    assert "loop_add_fusion" not in table  # beyond --top


def test_a_folder_without_a_trace_says_how_to_write_one(tmp_path, capsys):
    assert profile_summary.main([str(tmp_path)]) == 2
    assert "--profile_dir" in capsys.readouterr().err


def test_benchmark_profile_of_the_tiny_model_on_cpu(tmp_path):
    """benchmark.py train --profile_dir writes a trace whose executed ops the summary finds."""
    profile = tmp_path / "profile"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # one device
    subprocess.run(
        [
            sys.executable,
            str(TOOLS / "benchmark.py"),
            "train",
            "--config=configs/tiny_clm.py",
            "--config.train.batch_size=2",
            "--config.train.seq_len=32",
            "--steps=1",
            "--warmup=0",
            "--json",
            f"--profile_dir={profile}",
            "--profile_steps=2",
        ],
        check=True,
        cwd=TOOLS.parent,
        env=env,
        capture_output=True,
        timeout=300,
    )
    summary = profile_summary.summarize(profile_summary.find_trace(profile))
    assert summary.source == "XLA CPU client threads"
    assert summary.by_category.get("matmul", 0) > 0
    assert 0 < summary.busy_fraction <= 1
    assert not any("::" in op.name or op.name.startswith("while") for op in summary.ops)
    printed = subprocess.run(
        [sys.executable, str(TOOLS / "profile_summary.py"), str(profile), "--steps=2"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "| category | ms | % of op time |" in printed and "| matmul |" in printed


def test_category_reads_the_op_not_its_operands():
    fed_by_a_dot = "%loop_fusion.2 = bf16[8,64] fusion(%dot.3, %all-gather-done.1), kind=kLoop"
    assert profile_summary.category("loop_fusion.2", fed_by_a_dot) == "fusion"
    gemm = '%custom-call.3 = bf16[8,64] custom-call(%a, %b), custom_call_target="__cublas$gemm"'
    assert profile_summary.category("custom-call.3", gemm) == "matmul"
    assert profile_summary.category("nccl_all_gather_kernel") == "collective"
