"""Measures training throughput of a config on this machine's devices.

    python tools/benchmark.py train --config=configs/tiny_clm.py --steps=20
    python tools/benchmark.py train --config=configs/clm_125m.py --config.train.batch_size=16

Times jitted train steps on synthetic full-length batches (the input pipeline is measured apart),
after compilation and warm-up steps, and prints one Markdown row for docs/performance.md with the
date, the device and the command. Timings are never asserted in tests.
"""

from __future__ import annotations

import datetime
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from jaxpretrain import config as config_lib
from jaxpretrain import flops, objectives, optim, train
from jaxpretrain import mesh as mesh_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")


def synthetic_batch(batch_size: int, seq_len: int, vocab_size: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab_size, (batch_size, seq_len + 1), dtype=np.int32)
    positions = np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch_size, seq_len))
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "loss_weights": np.ones((batch_size, seq_len), np.float32),
        "segment_ids": np.ones((batch_size, seq_len), np.int32),
        "positions": positions.copy(),
        "bidirectional": np.zeros((batch_size, seq_len), np.int32),
    }


def benchmark_train(config) -> dict[str, float]:
    mesh_shape = config_lib.validate(config, jax.device_count(), jax.process_count())
    mesh = mesh_lib.make_mesh(mesh_shape)
    rules = tuple(tuple(rule) for rule in config.mesh.rules)
    vocab_size = config.model.vocab_size if config.model.vocab_size > 0 else config.data.vocab_size
    model_cfg = train.model_config(config, vocab_size)
    tx = optim.make_optimizer(config.train)
    layout = train.state_layout(model_cfg, tx, mesh, rules)
    batch_sharding = mesh_lib.batch_sharding(mesh, rules)
    step_fn = train.make_train_step(
        layout,
        objectives.get(config.objective.name),
        tx,
        optim.learning_rate_schedule(config.train),
        batch_sharding,
    )
    state = train.init_state(model_cfg, tx, layout, config.train.seed)
    batch = synthetic_batch(config.train.batch_size, config.train.seq_len, vocab_size, 0)
    batch = {k: jax.device_put(v, batch_sharding) for k, v in batch.items()}

    compile_start = time.perf_counter()
    state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    compile_seconds = time.perf_counter() - compile_start
    for _ in range(_WARMUP.value):
        state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(_STEPS.value):
        state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    seconds_per_step = (time.perf_counter() - start) / _STEPS.value

    tokens_per_second = config.train.batch_size * config.train.seq_len / seconds_per_step
    peak = flops.peak_flops_per_device(jax.devices()[0], config.train.peak_tflops_per_device)
    flops_per_token = flops.train_flops_per_token(model_cfg, config.train.seq_len)
    memory = jax.devices()[0].memory_stats() or {}
    return {
        "params_m": sum(x.size for x in jax.tree.leaves(state["params"])) / 1e6,
        "compile_s": compile_seconds,
        "step_ms": seconds_per_step * 1e3,
        "tokens_per_second": tokens_per_second,
        "mfu": flops.mfu(tokens_per_second, flops_per_token, peak, mesh.size),
        "peak_memory_gib": memory.get("peak_bytes_in_use", float("nan")) / 2**30,
        "loss": float(jnp.asarray(metrics["loss"])),
    }


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] != "train":
        raise app.UsageError("usage: benchmark.py train --config=CONFIG [--steps=N]")
    result = benchmark_train(_CONFIG.value)
    device = f"{jax.device_count()}x {jax.devices()[0].device_kind} ({platform.machine()})"
    mfu = "n/a" if result["mfu"] is None else f"{100 * result['mfu']:.1f}%"
    command = " ".join(["python tools/benchmark.py", *sys.argv[1:]])
    print(
        "| date | device | command | params | step | tokens/s | MFU | compile | peak mem |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
        f"| {datetime.date.today()} | {device} | `{command}` | {result['params_m']:.1f}M | "
        f"{result['step_ms']:.0f} ms | {result['tokens_per_second']:,.0f} | {mfu} | "
        f"{result['compile_s']:.1f} s | {result['peak_memory_gib']:.2f} GiB |"
    )


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
