"""jaxpretrain/cost.py and tools/estimate_cost.py against arithmetic done by hand, the fit search
on the 8 fake CPU devices of conftest, the hardware table, and the command line."""

import json
import pathlib
import subprocess
import sys
import types

import pytest

from jaxpretrain import config as config_lib
from jaxpretrain import cost, dry_run, flops, hardware

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_TOOL = _ROOT / "tools" / "estimate_cost.py"
GIB = 2**30


def load_config(name: str):
    return config_lib.load_config_file(_ROOT / "configs" / f"{name}.py")


# configs/clm_125m.py by hand: V=32000, L=12, d=768, H=kv=12, Dh=64, f=2048, T=1024, tied.
V, L, D, H, DH, F, T = 32000, 12, 768, 12, 64, 2048, 1024
PER_LAYER_MATMULS = 2 * D * H * DH + 2 * D * H * DH + 3 * D * F  # q, o; k, v; gate, up, down
PARAMETERS = V * D + L * (PER_LAYER_MATMULS + 2 * D) + D  # + 2 RMSNorm scales a layer, final
N = L * PER_LAYER_MATMULS + D * V  # the output projection is a matmul; the lookup is not
ATTENTION = 12 * L * H * DH * T
FLOPS_PER_TOKEN = 6 * N + ATTENTION


def test_parameters_and_flops_of_clm_125m_by_hand():
    assert (PARAMETERS, N) == (109_529_856, 109_510_656)
    assert FLOPS_PER_TOKEN == 770_310_144
    assert cost.parameter_counts(load_config("clm_125m")) == (PARAMETERS, N)


def test_clm_7b_has_llama_2_7b_parameter_count():
    assert cost.parameter_counts(load_config("clm_7b"))[0] == 6_738_415_616  # Llama 2's 7B


def test_time_device_hours_and_price_by_hand():
    tokens, mfu = 1e10, 0.4
    estimate = cost.estimate(
        load_config("clm_125m"), tokens, hardware.get("v5p"), mfu=mfu, devices=8, max_devices=8
    )
    total = tokens * FLOPS_PER_TOKEN  # 7.703e18
    device_hours = total / (459e12 * mfu) / 3600  # v5p: 459 TFLOP/s dense bf16
    assert estimate.flops_per_token == FLOPS_PER_TOKEN
    assert estimate.attention_flops_per_token == ATTENTION
    assert estimate.total_flops == pytest.approx(total)
    assert estimate.device_hours == pytest.approx(device_hours)
    assert device_hours == pytest.approx(11.6544, abs=1e-4)
    assert estimate.hours == pytest.approx(device_hours / 8)
    assert estimate.days == pytest.approx(device_hours / 8 / 24)
    assert estimate.cost == pytest.approx(device_hours * 4.20)  # v5p list price per chip-hour

    quoted = cost.estimate(
        load_config("clm_125m"),
        tokens,
        hardware.get("v5p"),
        mfu=mfu,
        price_per_hour=2.0,
        devices=8,
        max_devices=8,
    )
    assert quoted.cost == pytest.approx(device_hours * 2.0)
    with pytest.raises(ValueError, match="mfu=1.5"):
        cost.estimate(load_config("clm_125m"), tokens, hardware.get("v5p"), mfu=1.5)


def test_memory_of_clm_125m_on_8_devices_is_the_dry_runs_hand_count():
    fit = cost.memory_fit(load_config("clm_125m"), hardware.get("h100"), 8)
    # docs/parallelism.md: clm_125m on data=8, 1 micro-step, 64 rows: hand count 36.70 GiB.
    assert fit.mesh == {"data": 8, "fsdp": 1, "tensor": 1, "pipe": 1}
    assert (fit.grad_accum_steps, fit.rows_per_device) == (1, 64)
    assert round(fit.total_bytes / GIB, 2) == 36.70
    # Its largest part: float32 logits, their softmax and gradient, 64 rows x 1024 x 32000.
    assert fit.hand_count["logits"] == 3 * 64 * 1024 * 32000 * 4
    assert fit.fits and fit.memory_bytes == 80 * GIB


def test_memory_counts_the_attention_the_target_hardware_runs():
    """The CPU devices only lay out shardings: a GPU estimate counts cuDNN's statistics and
    bfloat16 mask, a TPU one splash's, not the XLA path's float32 scores this CPU would run."""
    config = load_config("clm_125m")  # bfloat16 compute, attention auto, 1024 tokens
    rows, heads, seq = 64, 12, 1024  # per device on 8, as above
    on_gpu = cost.memory_fit(config, hardware.get("h100"), 8)
    assert on_gpu.attention == "cudnn" and "cudnn attention" in on_gpu.describe()
    assert on_gpu.hand_count["attention_scores"] == rows * (heads * seq * 4 + seq * seq * 2)
    on_tpu = cost.memory_fit(config, hardware.get("v5p"), 8)
    assert on_tpu.attention == "splash"
    assert on_tpu.hand_count["attention_scores"] == rows * 2 * 2 * heads * seq * 4
    # Where the kernel cannot run, the XLA path's scores are counted, as the step would run.
    config.model.dtype = "float32"
    on_gpu = cost.memory_fit(config, hardware.get("h100"), 8)
    assert on_gpu.attention == "xla"
    assert on_gpu.hand_count["attention_scores"] == rows * (4 * heads * seq * seq * 4 + seq * seq)


def test_layer_terms_count_a_microbatch_and_logits_a_chunk():
    """Pipeline stages run their layers a microbatch at a time; chunked logits a chunk of
    positions at a time, and a chunk as long as the rows or longer is the whole rows."""
    config = load_config("clm_125m")  # 64 rows of 1024 per device on 8, 12 heads, vocab 32000
    config.mesh.update(data=2, pipe=4, microbatches=4)  # 512 / 2 = 256 rows, 64 a microbatch
    fit = cost.memory_fit(config, hardware.get("v5p"), 8)
    assert fit.hand_count["attention_scores"] == 64 * 2 * 2 * 12 * 1024 * 4  # splash, 64 rows
    assert fit.hand_count["logits"] == 3 * 256 * 1024 * 32000 * 4
    config = load_config("clm_125m")
    for chunk, positions in ((256, 256), (1024, 1024), (4096, 1024)):
        config.model.logits_chunk_length = chunk
        hand = cost.memory_fit(config, hardware.get("h100"), 8).hand_count
        assert hand["logits"] == 3 * 64 * positions * 32000 * 4, chunk


def test_the_largest_term_is_one_the_total_counts():
    gib = 2**30
    hand = {"params": 1, "attention_scores": 2, "layer_backward": 10, "logits": 11}
    hand = {key: value * gib for key, value in hand.items()}
    hand.update(state=gib, total=13 * gib)  # params + scores + layer_backward: logits are not in
    assert dry_run.largest_term(hand).startswith("layer_backward (10.00 GiB of 13.00)")
    hand.update(layer_backward=5 * gib, total=12 * gib)  # params + logits
    assert dry_run.largest_term(hand).startswith("logits (11.00 GiB of 12.00)")


def test_a_kernel_s_layer_backward_is_counted():
    """clm_7b with splash on 8 v5p chips: libtpu's program needs 124.66 GiB a chip
    (docs/parallelism.md). Counting only the kernel's softmax statistics for the layer being
    differentiated said 94.58 GiB, a fit."""
    fit = cost.memory_fit(load_config("clm_7b"), hardware.get("v5p"), 8)
    assert fit.attention == "splash" and not fit.fits
    assert 0.77 < 124.66 / (fit.total_bytes / GIB) < 1.21


def test_smallest_fit_is_the_first_device_count_whose_memory_fits():
    config = load_config("clm_125m")  # data=-1: rows per device = 512 / devices
    fit, tried = cost.search_fit(config, hardware.get("h100"), max_devices=8)
    assert fit.devices == 4 and fit.rows_per_device == 128
    # Twice the rows of 8 devices: every per-row part doubles, the replicated state does not.
    on_8 = cost.memory_fit(config, hardware.get("h100"), 8).hand_count
    for part in ("batch", "saved_activations", "attention_scores", "logits"):
        assert fit.hand_count[part] == 2 * on_8[part], part
    assert fit.hand_count["state"] == on_8["state"]
    assert [entry.split(":")[0] for entry in tried] == ["1", "2", "4"]
    assert tried[-1] == "4: fits"

    # v5p slices start at 4 chips (v5p-8); 95 GiB holds the same 4-device layout.
    fit, tried = cost.search_fit(config, hardware.get("v5p"), max_devices=8)
    assert (fit.devices, hardware.get("v5p").slice_name(fit.devices)) == (4, "v5p-8")

    # 16 GiB v5e chips need more devices than the test process has: the search says so.
    fit, tried = cost.search_fit(config, hardware.get("v5e"), max_devices=64)
    assert fit is None
    assert tried[-1] == "stopped before 16: only 8 CPU devices to lay out on"


def test_grad_accum_steps_is_lowered_only_where_the_batch_no_longer_splits():
    config = load_config("clm_7b")  # batch 1024, 4 micro-steps, fsdp=-1
    accum = {n: cost.config_for_devices(config, n).train.grad_accum_steps for n in (64, 256, 512)}
    assert accum == {64: 4, 256: 4, 512: 2}  # 1024 / (4 x 512) is not whole; 1024 / (2 x 512) is
    assert cost.config_for_devices(config, 1024).train.grad_accum_steps == 1
    with pytest.raises(config_lib.ConfigError, match="train.batch_size=1024"):
        cost.config_for_devices(config, 2048)
    assert config.train.grad_accum_steps == 4  # the caller's config is left alone


def test_measured_mfu_is_the_median_of_logged_values(tmp_path):
    records = [
        {"step": 10, "loss": 5.0, "mfu": None},
        {"step": 20, "loss": 4.0, "mfu": 0.30},
        {"step": 20, "event": "anomaly", "mfu": 0.99},  # events are not metric records
        {"step": 30, "loss": 3.0, "mfu": 0.50},
        {"step": 40, "loss": 3.0, "mfu": 0.45},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    value, source = cost.measured_mfu(str(tmp_path))
    assert value == 0.45 and source.startswith("median of 3 logged values")

    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "mfu": None}) + "\n")
    with pytest.raises(ValueError, match="has no mfu values"):
        cost.measured_mfu(str(tmp_path))


def test_one_hardware_table_serves_flops_and_the_dry_run():
    kinds = {
        "TPU v4": "v4",
        "TPU v5 lite": "v5e",
        "TPU v5": "v5p",
        "TPU v5p": "v5p",
        "TPU v6 lite": "v6e",
        "NVIDIA A100-SXM4-40GB": "a100-40",
        "NVIDIA A100-SXM4-80GB": "a100-80",
        "NVIDIA A100 80GB PCIe": "a100-80",
        "NVIDIA H100 80GB HBM3": "h100",
        "NVIDIA H200": "h200",
    }
    for kind, name in kinds.items():
        assert hardware.by_device_kind(kind).name == name, kind
        device = types.SimpleNamespace(device_kind=kind)
        assert flops.peak_flops_per_device(device) == hardware.HARDWARE[name].peak_flops
    assert hardware.by_device_kind("cpu") is None
    assert flops.peak_flops_per_device(types.SimpleNamespace(device_kind="cpu")) is None
    assert dry_run.DEVICE_MEMORY_BYTES == {
        "TPU v4": 32 * GIB,
        "TPU v5e": 16 * GIB,
        "TPU v5p": 95 * GIB,
        "TPU v6e": 32 * GIB,
        "A100-40GB": 40 * GIB,
        "A100-80GB": 80 * GIB,
        "H100": 80 * GIB,
        "H200": 141 * GIB,
    }
    assert hardware.get("v5e").device_counts(256) == [1, 4, 8, 16, 32, 64, 128, 256]
    assert hardware.get("v5e").device_counts(4096)[-1] == 256  # one pod
    assert hardware.get("v5p").device_counts(16) == [4, 8, 16]
    assert hardware.get("h100").device_counts(16) == [1, 2, 4, 8, 16]
    assert hardware.get("v5p").slice_name(64) == "v5p-128"
    assert hardware.get("h100").slice_name(16) == "16 GPUs (2 nodes)"
    with pytest.raises(ValueError, match="use one of v4, v5e, v5p, v6e, a100-40"):
        hardware.get("tpu")


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(_TOOL), *args], capture_output=True, text=True, cwd=_ROOT
    )


def report_value(stdout: str, name: str) -> str:
    (line,) = [line for line in stdout.splitlines() if line.startswith(name)]
    return line[len(name) :].strip()


def test_command_line_prints_the_hand_computed_figures(tmp_path):
    done = run_tool(
        "--config=configs/clm_125m.py", "--tokens=1e10", "--hardware=v5p", "--max_devices=16"
    )
    assert done.returncode == 0, done.stderr
    device_hours = 1e10 * FLOPS_PER_TOKEN / (459e12 * 0.4) / 3600
    assert report_value(done.stdout, "device-hours").startswith(f"{device_hours:,.0f} =")
    assert report_value(done.stdout, "cost").startswith(f"${device_hours * 4.20:,.0f} =")
    assert "causal masking NOT halved" in done.stdout
    assert report_value(done.stdout, "MFU").startswith("0.400 (assumed")
    # The smallest fit (v5p-8, 4 chips) sets the time.
    time_line = report_value(done.stdout, "time")
    assert time_line.startswith(f"{device_hours / 4 / 24:,.1f} days") and "v5p-8" in time_line

    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "mfu": m}) + "\n" for s, m in ((1, 0.2), (2, 0.5), (3, 0.6)))
    )
    measured = run_tool(
        "--config=configs/clm_125m.py",
        "--tokens=1e10",
        "--hardware=v5p",
        "--max_devices=16",
        f"--mfu_from={tmp_path}",
        "--price_per_hour=1",
        "--config.train.seq_len=512",
    )
    assert measured.returncode == 0, measured.stderr
    flops_512 = 6 * N + 12 * L * H * DH * 512  # the override reaches the attention term
    device_hours = 1e10 * flops_512 / (459e12 * 0.5) / 3600
    assert report_value(measured.stdout, "device-hours").startswith(f"{device_hours:,.0f} =")
    assert report_value(measured.stdout, "cost").startswith(f"${device_hours:,.0f} =")
    assert "median of 3 logged values" in measured.stdout


def test_command_line_errors_are_one_line():
    bad = run_tool("--config=configs/clm_125m.py", "--tokens=1e9", "--hardware=tpu9")
    assert bad.returncode == 1
    names = ", ".join(hardware.HARDWARE)
    assert bad.stderr == f"error: --hardware='tpu9' is unknown; use one of {names}.\n"
    no_tokens = run_tool("--config=configs/clm_125m.py", "--hardware=h100")
    assert no_tokens.returncode == 1 and no_tokens.stderr.count("\n") == 1
    assert "--tokens" in no_tokens.stderr
