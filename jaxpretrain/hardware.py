"""The one table of accelerator facts: peak FLOP/s, memory, list price, slice sizes.

MFU (`flops.py`), the dry run's fits / does-not-fit verdicts (`dry_run.py`) and cost estimates
(`cost.py`) all read `HARDWARE`, so a new chip or a corrected figure is one entry here.

Sources (each figure is per device = one JAX device: a TPU chip, megacore on v4 / v5p; a GPU):
- Peak: dense (no sparsity) bfloat16 FLOP/s from the vendors' spec pages: Cloud TPU "System
  architecture" pages (v4 275 T, v5e 197 T, v5p 459 T, v6e Trillium 918 T); NVIDIA A100
  datasheet (312 T), H100 SXM and H200 datasheets (989 T; the 1,979 T printed there is with 2:4
  sparsity).
- Memory: the same pages (v4 32 GiB, v5e 16 GiB, v5p 95 GiB, v6e 32 GiB; A100 40 / 80 GB, H100
  SXM 80 GB, H200 141 GB). GB are taken at face value as GiB; the runtime keeps some of it (XLA's
  reserve, NCCL buffers), so a total within ~5% of a capacity is marginal.
- Price: on-demand list price in USD per device-hour, read in 2025 (prices change; pass
  `--price_per_hour` to `tools/estimate_cost.py` for a quote or a committed-use rate). TPUs:
  cloud.google.com/tpu/pricing, per chip-hour (v4 us-central2, v5e us-central1, v5p us-east5,
  v6e us-east1). GPUs: Google Compute Engine's whole 8-GPU VM (vCPUs and RAM included) divided
  by 8, us-central1: a2-highgpu-8g (A100 40 GB) $29.39/h, a2-ultragpu-8g (A100 80 GB) $40.55/h,
  a3-highgpu-8g (H100) $88.49/h, a3-ultragpu-8g (H200) about $115/h. The H200 figure comes from
  a third-party summary of that price list, not from the page itself: the least certain entry.
"""

from __future__ import annotations

import dataclasses

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Hardware:
    """One accelerator kind, per device (a TPU chip or a GPU)."""

    name: str  # what users type: --hardware=v5p
    label: str  # what reports print, e.g. "TPU v5p", "A100-80GB"
    # Substrings of `jax.Device.device_kind` that identify it ("TPU v5 lite", "NVIDIA H100 80GB
    # HBM3"); the longest matching substring wins (see `by_device_kind`).
    device_kinds: tuple[str, ...]
    peak_flops: float  # dense bfloat16 FLOP/s
    memory_bytes: int  # HBM
    price_per_hour: float  # USD per device-hour, on-demand list price (module docstring)
    # TPU slices: the smallest slice's chips and the largest single slice (a pod); Cloud TPU
    # names v4 / v5p slices by TensorCores (2 a chip: v5p-128 is 64 chips), v5e / v6e by chips.
    # GPUs: 1 device up, 8 to a node, no upper bound of their own (0).
    tpu: bool = False
    smallest_slice: int = 1
    largest_slice: int = 0
    cores_per_chip: int = 1

    @property
    def platform(self) -> str:
        """JAX's platform name for these devices: "tpu" or "gpu"."""
        return "tpu" if self.tpu else "gpu"

    def slice_name(self, devices: int) -> str:
        """How the vendor names `devices` of these: `v5p-128` (64 chips), `16 GPUs (2 nodes)`."""
        if self.tpu:
            return f"{self.name}-{devices * self.cores_per_chip}"
        nodes = -(-devices // 8)
        return f"{devices} GPU{'s' if devices > 1 else ''} ({nodes} node{'s' if nodes > 1 else ''})"

    def device_counts(self, up_to: int) -> list[int]:
        """Device counts a run can rent, ascending, up to `up_to`: powers of two from the smallest
        slice (TPU v5e / v6e slices jump from 1 chip to 4), within one TPU pod."""
        limit = min(up_to, self.largest_slice) if self.largest_slice else up_to
        counts, n = [], self.smallest_slice
        while n <= limit:
            counts.append(n)
            n = 4 if (self.tpu and n == 1) else n * 2
        return counts


HARDWARE: dict[str, Hardware] = {
    hardware.name: hardware
    for hardware in (
        Hardware(
            name="v4",
            label="TPU v4",
            device_kinds=("TPU v4",),
            peak_flops=275e12,
            memory_bytes=32 * GIB,
            price_per_hour=3.22,
            tpu=True,
            smallest_slice=4,  # v4-8
            largest_slice=4096,
            cores_per_chip=2,
        ),
        Hardware(
            name="v5e",
            label="TPU v5e",
            device_kinds=("TPU v5 lite", "TPU v5e"),
            peak_flops=197e12,
            memory_bytes=16 * GIB,
            price_per_hour=1.20,
            tpu=True,
            smallest_slice=1,
            largest_slice=256,
        ),
        Hardware(
            name="v5p",
            label="TPU v5p",
            # v5p chips report "TPU v5"; v5e chips "TPU v5 lite", the longer match.
            device_kinds=("TPU v5p", "TPU v5"),
            peak_flops=459e12,
            memory_bytes=95 * GIB,
            price_per_hour=4.20,
            tpu=True,
            smallest_slice=4,  # v5p-8
            largest_slice=8960,
            cores_per_chip=2,
        ),
        Hardware(
            name="v6e",
            label="TPU v6e",
            device_kinds=("TPU v6 lite", "TPU v6e"),
            peak_flops=918e12,
            memory_bytes=32 * GIB,
            price_per_hour=2.70,
            tpu=True,
            smallest_slice=1,
            largest_slice=256,
        ),
        Hardware(
            name="a100-40",
            label="A100-40GB",
            # "A100" alone is the 40 GB part; the 80 GB part names its size in its kind.
            device_kinds=("A100",),
            peak_flops=312e12,
            memory_bytes=40 * GIB,
            price_per_hour=29.39 / 8,
        ),
        Hardware(
            name="a100-80",
            label="A100-80GB",
            device_kinds=("A100-SXM4-80GB", "A100 80GB", "A100-80GB"),
            peak_flops=312e12,
            memory_bytes=80 * GIB,
            price_per_hour=40.55 / 8,
        ),
        Hardware(
            name="h100",
            label="H100",
            device_kinds=("H100",),
            peak_flops=989e12,
            memory_bytes=80 * GIB,
            price_per_hour=88.49 / 8,
        ),
        Hardware(
            name="h200",
            label="H200",
            device_kinds=("H200",),
            peak_flops=989e12,
            memory_bytes=141 * GIB,
            price_per_hour=115.0 / 8,
        ),
    )
}


def get(name: str, key: str = "--hardware") -> Hardware:
    """The entry called `name` (v5p, h100, ...); a ValueError listing the choices otherwise."""
    if name not in HARDWARE:
        raise ValueError(f"{key}={name!r} is unknown; use one of {', '.join(HARDWARE)}.")
    return HARDWARE[name]


def by_device_kind(device_kind: str) -> Hardware | None:
    """The entry whose substring of `device_kind` is longest (so "TPU v5 lite" is a v5e, not a
    v5p's "TPU v5"); None for a device not in the table (a CPU)."""
    kind = device_kind.lower()
    matches = [
        (len(pattern), hardware)
        for hardware in HARDWARE.values()
        for pattern in hardware.device_kinds
        if pattern.lower() in kind
    ]
    return max(matches, key=lambda match: match[0])[1] if matches else None
