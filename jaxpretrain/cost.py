"""What a training run will cost, before renting anything: FLOPs, time, device-hours, price,
memory per device and the smallest slice that holds it.

- FLOPs per trained token are `flops.train_flops_per_token`, PaLM's convention (appendix B):
  6N + 12·L·H·Dh·T, N the parameters taking part in a matmul per token (every layer's weights
  and the output projection; the embedding lookup is not a matmul), L layers, H query heads, Dh
  head dimension, T the sequence length. The attention term counts the whole T x T score matrix:
  causal masking would halve it, and it is NOT halved, as in PaLM and MaxText, so the MFU the
  trainer logs and the MFU assumed here mean the same thing.
- Time: FLOPs / (peak FLOP/s x MFU x devices); device-hours and price do not depend on the
  device count at a given MFU (in practice MFU falls a little as a run spreads out). Nothing is
  added for evaluation, checkpoints, restarts or queueing.
- Memory per device: `dry_run.hand_count` (parameters, gradients, Adam moments, batch and the
  activations the remat policy keeps) on the state layout `state.setup` builds for that many
  devices. Nothing is compiled or allocated; the devices are fake CPU devices
  (`XLA_FLAGS=--xla_force_host_platform_device_count=N`, which tools/estimate_cost.py sets), used
  only to lay out shardings; attention is counted for the implementation the target runs
  (`model.attention=auto`: cuDNN on GPUs, splash on TPUs, where the kernel's checks pass). The
  TPU compiler's total came out 0.77-1.21x the hand count in the dry runs of
  docs/parallelism.md: confirm a close fit with `--mode=dry_run`.

The smallest fit (`search_fit`): device counts are tried from the hardware's smallest slice
upward in powers of two (TPU v5e / v6e: 1, 4, 8, ...; v4 / v5p: 4 chips = v4-8 / v5p-8, ...;
GPUs: 1, 2, 4, ...; TPUs within one pod). On each, the config's own mesh is used, its -1 axis
filling the devices (`fsdp=-1` shards parameters and optimizer state over all of them; a mesh
without -1 only fits its own device count), with the config's `train.grad_accum_steps`, lowered
(to its largest divisor that works) only where the global batch no longer splits into micro-steps
x batch shards. The first count whose hand count fits the device's memory wins. More
micro-steps lower the activations further: pass `--config.train.grad_accum_steps` to explore.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Sequence

import jax
import ml_collections

from jaxpretrain import config as config_lib
from jaxpretrain import dry_run, flops, metrics_log
from jaxpretrain import state as state_lib
from jaxpretrain.hardware import GIB, Hardware

# No run of this codebase on an accelerator has been measured yet, so the default is an
# assumption from published large runs: PaLM 540B reached 0.462 on TPU v4 (PaLM paper, table
# 3), Llama 3 405B 0.38-0.43 on H100 (Llama 3 paper, table 4). Tuned small models do better and
# untuned ones worse; pass --mfu, or --mfu_from a run's workdir.
DEFAULT_MFU = 0.40
DEFAULT_MFU_SOURCE = "assumed: PaLM 540B reached 0.46 on TPU v4, Llama 3 405B 0.38-0.43 on H100"
# Within this share of a device's memory a fit is marginal: the runtime keeps some (hardware.py).
MARGINAL = 0.95


@dataclasses.dataclass(frozen=True)
class MemoryFit:
    """Per-device memory of a config on `devices` devices of one hardware kind."""

    devices: int
    mesh: dict[str, int]
    grad_accum_steps: int  # after the lowering rule (module docstring)
    rows_per_device: int  # sequences per device per micro-step
    hand_count: dict[str, int]  # bytes per device, by part (dry_run.hand_count)
    memory_bytes: int  # the device's
    largest_term: str
    attention: str  # the implementation counted: what the step runs on this hardware

    @property
    def total_bytes(self) -> int:
        return self.hand_count["total"]

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.memory_bytes

    def describe(self) -> str:
        """e.g. `31.20 GiB of 95 GiB (fits), mesh data=1 fsdp=64 ...`."""
        mesh = " ".join(f"{axis}={size}" for axis, size in self.mesh.items() if size > 1)
        verdict = "fits" if self.fits else f"does not fit; largest: {self.largest_term}"
        if self.fits and self.total_bytes > MARGINAL * self.memory_bytes:
            verdict = f"fits, marginally: over {MARGINAL:.0%}"
        return (
            f"{self.total_bytes / GIB:,.2f} GiB of {self.memory_bytes / GIB:g} GiB ({verdict}); "
            f"mesh {mesh or 'one device'}, grad_accum_steps {self.grad_accum_steps}, "
            f"{self.rows_per_device} rows per device per micro-step, {self.attention} attention"
        )


@dataclasses.dataclass(frozen=True)
class Estimate:
    """FLOPs, time, device-hours, price and memory of training a config on `tokens` tokens."""

    hardware: Hardware
    parameters: int  # all of them, embedding included
    matmul_parameters: int  # N of 6N
    tokens: float
    seq_len: int
    flops_per_token: float  # 6N + attention
    attention_flops_per_token: float  # 12·L·H·Dh·T, the whole score matrix
    mfu: float
    mfu_source: str
    price_per_hour: float  # USD per device-hour
    price_source: str
    devices: int | None  # the device count `hours` and `days` are for; None: none fits
    devices_source: str
    memory: MemoryFit | None  # on `devices`
    smallest_fit: MemoryFit | None
    tried: tuple[str, ...]  # the fit search's steps, "8: 146.30 GiB > 80 GiB"

    @property
    def total_flops(self) -> float:
        return self.tokens * self.flops_per_token

    @property
    def device_hours(self) -> float:
        return self.total_flops / (self.hardware.peak_flops * self.mfu) / 3600

    @property
    def hours(self) -> float | None:
        return self.device_hours / self.devices if self.devices else None

    @property
    def days(self) -> float | None:
        return self.hours / 24 if self.devices else None

    @property
    def cost(self) -> float:
        return self.device_hours * self.price_per_hour

    def text(self) -> str:
        """The estimate as a short report, each figure with how it was obtained."""
        hw = self.hardware
        six_n = 6 * self.matmul_parameters
        lines = [
            f"parameters     {self.parameters / 1e9:,.3f} B ({self.matmul_parameters / 1e9:,.3f} B "
            "in matmuls: the N of 6N)",
            f"tokens         {self.tokens:,.4g}",
            f"FLOPs / token  {self.flops_per_token:.4g} = 6N {six_n:.4g} + attention 12·L·H·Dh·T "
            f"{self.attention_flops_per_token:.4g} (T={self.seq_len}; PaLM's count: the whole "
            "score matrix, causal masking NOT halved)",
            f"FLOPs          {self.total_flops:.4g}",
            f"hardware       {hw.label}: {hw.peak_flops / 1e12:g} TFLOP/s dense bf16, "
            f"{hw.memory_bytes / GIB:g} GiB, ${self.price_per_hour:,.2f} per device-hour "
            f"({self.price_source})",
            f"MFU            {self.mfu:.3f} ({self.mfu_source})",
            f"device-hours   {self.device_hours:,.0f} = FLOPs / (peak x MFU) / 3600",
            f"cost           ${self.cost:,.0f} = device-hours x price",
        ]
        if self.devices:
            lines.append(
                f"time           {self.days:,.1f} days ({self.hours:,.1f} h) on "
                f"{hw.slice_name(self.devices)} ({self.devices_source})"
            )
        else:
            lines.append(f"time           no device count ({self.devices_source})")
        if self.memory:
            lines.append(f"memory         {self.memory.describe()} (dry_run.hand_count)")
        if self.smallest_fit and self.smallest_fit is not self.memory:
            lines.append(
                f"smallest fit   {hw.slice_name(self.smallest_fit.devices)}: "
                f"{self.smallest_fit.describe()}"
            )
        lines.append("fit search     " + "; ".join(self.tried))
        return "\n".join(lines)


def parameter_counts(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(all parameters, matmul parameters) of `config.model`, from abstract shapes."""
    model_cfg = _model_config(config)
    _, abstract_params, _ = state_lib.abstract_model(model_cfg)
    total = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(abstract_params))
    return total, flops.matmul_params(model_cfg)


def _model_config(config: ml_collections.ConfigDict):
    # FLOPs and parameters do not depend on the mesh: lay the model out unpipelined.
    single = {"data": 1, "fsdp": 1, "tensor": 1, "pipe": 1}
    return config_lib.model_config(config, single, config_lib.resolve_vocab_size(config, None))


def config_for_devices(
    config: ml_collections.ConfigDict, devices: int
) -> ml_collections.ConfigDict:
    """A copy of `config` for `devices` devices: grad_accum_steps lowered to its largest divisor
    with which the batch splits into micro-steps x microbatches x batch shards (data x fsdp).

    Raises:
      ConfigError: the mesh does not resolve on `devices`, or even one micro-step leaves the
        batch too small for the batch shards.
    """
    mesh = config_lib.resolve_mesh_shape(config.mesh, devices)
    microbatches = config.mesh.microbatches if mesh["pipe"] > 1 else 1
    unit = microbatches * mesh["data"] * mesh["fsdp"]
    accum = config.train.grad_accum_steps
    usable = [d for d in range(accum, 0, -1) if accum % d == 0]
    for steps in usable:
        if config.train.batch_size % (steps * unit) == 0:
            adapted = copy.deepcopy(config)
            adapted.train.grad_accum_steps = steps
            return adapted
    raise config_lib.ConfigError(
        f"config key train.batch_size={config.train.batch_size} does not split over "
        f"{devices} devices (mesh {mesh}, {microbatches} microbatches) even in one micro-step; "
        "raise the batch or use fewer devices."
    )


def memory_fit(
    config: ml_collections.ConfigDict,
    hardware: Hardware,
    devices: int,
    cpu_devices: Sequence[jax.Device] | None = None,
) -> MemoryFit:
    """Per-device memory of `config` on `devices` devices (the rule of `config_for_devices`).

    `cpu_devices` (default: this process's CPU devices) lay out the shardings; there must be at
    least `devices` of them.

    Raises:
      ConfigError: the config cannot run on `devices` devices (naming the key).
      ValueError: fewer CPU devices than `devices`.
    """
    available = list(cpu_devices or jax.devices("cpu"))
    if devices > len(available):
        raise ValueError(
            f"laying out {devices} devices needs {devices} CPU devices but JAX has "
            f"{len(available)}; start Python with "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={devices}."
        )
    adapted = config_for_devices(config, devices)
    setup = state_lib.setup(adapted, devices=available[:devices])
    # The CPU devices only lay out the shardings: attention is counted as the target runs it.
    attention = dry_run.attention_run(adapted, setup, platform=hardware.platform)
    batch = dry_run.abstract_batch(adapted, setup)
    hand = dry_run.hand_count(adapted, setup, batch, attention=attention)
    mesh = dict(setup.mesh.shape)
    accum = adapted.train.grad_accum_steps
    return MemoryFit(
        devices=devices,
        mesh=mesh,
        grad_accum_steps=accum,
        rows_per_device=adapted.train.batch_size // accum // (mesh["data"] * mesh["fsdp"]),
        hand_count=hand,
        memory_bytes=hardware.memory_bytes,
        largest_term=dry_run.largest_term(hand),
        attention=attention,
    )


def search_fit(
    config: ml_collections.ConfigDict,
    hardware: Hardware,
    max_devices: int,
    cpu_devices: Sequence[jax.Device] | None = None,
) -> tuple[MemoryFit | None, tuple[str, ...]]:
    """The smallest device count whose memory fits (module docstring), and what each count
    tried gave ("4: 146.30 GiB > 80 GiB", "8: train.batch_size ... does not split")."""
    available = len(cpu_devices or jax.devices("cpu"))
    sizes = {axis: int(config.mesh[axis]) for axis in ("data", "fsdp", "tensor", "pipe")}
    fixed = math.prod(size for size in sizes.values() if size != -1)
    counts = hardware.device_counts(max_devices)
    # Only multiples of the fixed axes' product resolve a mesh with a -1 axis; only the product
    # itself one without.
    usable = [n for n in counts if (n % fixed == 0 if -1 in sizes.values() else n == fixed)]
    tried = []
    if len(usable) < len(counts):
        mesh = " ".join(f"{axis}={size}" for axis, size in sizes.items() if size != 1)
        tried.append(f"mesh {mesh} skips {', '.join(str(n) for n in counts if n not in usable)}")
    for devices in usable:
        if devices > available:
            tried.append(f"stopped before {devices}: only {available} CPU devices to lay out on")
            break
        try:
            fit = memory_fit(config, hardware, devices, cpu_devices)
        except config_lib.ConfigError as error:
            tried.append(f"{devices}: {error}")
            continue
        if fit.fits:
            tried.append(f"{devices}: fits")
            return fit, tuple(tried)
        tried.append(
            f"{devices}: {fit.total_bytes / GIB:,.2f} GiB > {fit.memory_bytes / GIB:g} GiB"
        )
    if hardware.largest_slice and max_devices > hardware.largest_slice:
        tried.append(f"stopped at one pod ({hardware.largest_slice}; multislice not searched)")
    return None, tuple(tried)


def measured_mfu(workdir: str | os.PathLike) -> tuple[float, str]:
    """The median logged `mfu` of a run (over non-padding tokens; intervals holding only a
    compiling step log null and are skipped) and a note saying where it came from.

    Raises:
      ValueError: the run logged no MFU (null on devices without a known peak, e.g. CPU).
    """
    metrics = metrics_log.read(workdir)
    value = metrics.median("mfu")
    if value is None:
        raise ValueError(
            f"--mfu_from={os.fspath(workdir)!r}: its metrics.jsonl has no mfu values (null where "
            "the device's peak is unknown, e.g. CPU; set train.peak_tflops_per_device); pass --mfu."
        )
    count = len(metrics.series("mfu"))
    return value, f"median of {count} logged values in {os.fspath(workdir)}"


def estimate(
    config: ml_collections.ConfigDict,
    tokens: float,
    hardware: Hardware,
    *,
    mfu: float = DEFAULT_MFU,
    mfu_source: str = DEFAULT_MFU_SOURCE,
    price_per_hour: float | None = None,
    devices: int = 0,
    max_devices: int = 4096,
    cpu_devices: Sequence[jax.Device] | None = None,
) -> Estimate:
    """Estimates training `config` on `tokens` tokens on `hardware`.

    Args:
      mfu: model FLOPs utilisation in (0, 1].
      price_per_hour: USD per device-hour; None: the hardware's list price.
      devices: the device count for the time; 0: the smallest that fits (`search_fit`).
      max_devices: where the fit search stops.

    Raises:
      ValueError: a value out of range (naming it), or too few CPU devices for `devices`.
      ConfigError: the config cannot run on `devices` devices.
    """
    if not 0 < mfu <= 1:
        raise ValueError(f"--mfu={mfu} must be in (0, 1]: a fraction of the peak FLOP/s.")
    if tokens <= 0:
        raise ValueError(f"--tokens={tokens:g} must be positive.")
    parameters, matmul = parameter_counts(config)
    model_cfg = _model_config(config)
    seq_len = config.train.seq_len
    smallest, tried = search_fit(config, hardware, max_devices, cpu_devices)
    if devices:
        chosen, source = devices, "as asked"
        memory = memory_fit(config, hardware, devices, cpu_devices)
    elif smallest:
        chosen, source, memory = smallest.devices, "the smallest that fits", smallest
    else:
        limit = min(max_devices, hardware.largest_slice or max_devices)
        chosen, source, memory = None, f"nothing fits on up to {limit} devices", None
    if price_per_hour is None:
        price, price_source = (
            hardware.price_per_hour,
            "on-demand list price, jaxpretrain/hardware.py",
        )
    else:
        price, price_source = price_per_hour, "as given"
    return Estimate(
        hardware=hardware,
        parameters=parameters,
        matmul_parameters=matmul,
        tokens=float(tokens),
        seq_len=seq_len,
        flops_per_token=flops.train_flops_per_token(model_cfg, seq_len),
        attention_flops_per_token=flops.attention_flops_per_token(model_cfg, seq_len),
        mfu=mfu,
        mfu_source=mfu_source,
        price_per_hour=price,
        price_source=price_source,
        devices=chosen,
        devices_source=source,
        memory=memory,
        smallest_fit=smallest,
        tried=tried,
    )
