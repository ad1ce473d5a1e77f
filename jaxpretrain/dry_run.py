"""Ahead-of-time dry run: compile the real train step for a config's mesh and size its memory.

`dry_run(config, workdir)` builds the state layout with `state.setup` (the one setup path), makes
the train step exactly as `train.run_training` does, and lowers and compiles it on
`jax.ShapeDtypeStruct`s that carry the layout's shardings, so nothing is allocated. XLA's
analysis of the compiled per-device program gives the memory; a hand count (parameters,
gradients, Adam moments, batch and activations under the remat policy) stands beside it, and
each named accelerator is judged fits / does not fit. The report goes to WORKDIR/dry_run.json
and, as a short table, to stdout.

By default the program is compiled for fake CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=N`). The CPU compiler fuses and lays out
buffers differently from the TPU and GPU compilers, so its bytes approximate an accelerator's;
`docs/parallelism.md` compares them with the hand count for a few configs. With
`config.dry_run.topology` set (e.g. `v5p-128`, `v5e-256`, `v6e-8`) and libtpu installed (the
`tpu` extra) it is compiled by the TPU compiler for that slice's chips instead, on this machine,
no TPU needed (compile-only devices from `jax.experimental.topologies`, as MaxText's
`train_compile` does).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import json
import math
import os
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxpretrain import config as config_lib
from jaxpretrain import flops, hardware, objectives, paths, steps
from jaxpretrain import mesh as mesh_lib
from jaxpretrain import state as state_lib
from jaxpretrain.data import pipeline
from jaxpretrain.model import attention_impls

GIB = 2**30

# The accelerators the dry run judges, by label ("TPU v5p", "A100-80GB"): memory per device in
# bytes, from the one hardware table (`hardware.py`, with the sources).
DEVICE_MEMORY_BYTES = {entry.label: entry.memory_bytes for entry in hardware.HARDWARE.values()}

# Cloud TPU slice names (`v5p-128`) to libtpu topologies. Key: `hardware.HARDWARE` name (which
# holds the memory and TensorCores per chip: v4 and v5p slice names count cores, 2 a chip, one
# JAX device: megacore). Value: (libtpu's generation name, TPU_ACCELERATOR_TYPE prefix,
# chip_config_name, mesh dimensions).
TPU_GENERATIONS = {
    "v4": ("v4", "v4", "megacore", 3),
    "v5p": ("v5p", "v5p", "megacore", 3),
    "v5e": ("v5e", "v5litepod", "default", 2),
    "v6e": ("v6e", "v6e", "default", 2),
}

# Collective ops as they appear in compiled HLO text. The async forms are counted at their
# "-done" half, whose shape is exactly the result (a "-start" shape also holds the operands).
_COLLECTIVE_RE = re.compile(
    r"= (?P<shape>.+?) (?P<kind>all-gather|all-reduce|reduce-scatter|all-to-all|"
    r"collective-permute)(?P<phase>-start|-done)?\("
)
# Computation headers ("%name (params) -> type {", "ENTRY %name ..."), the computations a line
# calls, a while loop's body and its trip count (compiled HLO text).
_COMPUTATION_RE = re.compile(r"^(?P<entry>ENTRY )?%(?P<name>[^\s(]+) .*\{\s*$")
_CALLS_RE = re.compile(
    r"\b(?:calls|to_apply|body|condition|true_computation|false_computation|"
    r"branch_computations|called_computations)=(\{[^}]*\}|%[\w.\-]+)"
)
_WHILE_RE = re.compile(r" while\(.*\bcondition=%(?P<condition>[\w.\-]+), body=%(?P<body>[\w.\-]+)")
_TRIP_COUNT_RE = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
# A loop condition `counter < N` (how jax lowers scan and fori_loop, counting from 0).
_INT_CONSTANT_RE = re.compile(r"%([\w.\-]+) = s32\[\]\S* constant\((\d+)\)")
_LESS_THAN_RE = re.compile(
    r"ROOT .* compare\((?:\S+ )?%[\w.\-]+, (?:\S+ )?%([\w.\-]+)\), direction=LT"
)
# Array types: pred, bf16, s32, u8, f32, c64, f8e4m3fn, f8e5m2fnuz, ...
_ARRAY_RE = re.compile(
    r"\b(?P<dtype>pred|bf16|[subfc]\d+(?:e\d+m\d+(?:b\d+)?(?:fnuz|fnu|fn)?)?)"
    r"\[(?P<dims>[\d,]*)\]"
)
_CUSTOM_CALL_RE = re.compile(r'custom_call_target="([^"]+)"')
# What each attention kernel's custom-call target contains in a compiled program.
_KERNEL_CALLS = {"splash": "tpu_custom_call", "cudnn": "cudnn"}

CPU_CAVEAT = (
    "memory compiled for CPU devices approximates an accelerator's: the TPU/GPU compilers fuse "
    "and lay out buffers differently"
)


@dataclasses.dataclass(frozen=True)
class DryRunReport:
    """What one compile of the train step says about a config on its mesh.

    Bytes are per device. `compiled` holds XLA's memory analysis of the per-device program:
    `arguments` (state + batch shards), `outputs` (new state + metrics), `aliased` (outputs
    written into donated arguments: the state), `temporaries` (activations, gradients and every
    other buffer live inside the step) and `generated_code`; its `total` is what is live at the
    step's peak as far as the analysis tells, `arguments + outputs - aliased + temporaries +
    generated_code` (a donated state counts once; XLA reports temporaries as one buffer
    allocation, already the peak of its reuse). `hand_count` is the same total counted by hand
    from the shapes (see `hand_count`). `fits` maps each of `DEVICE_MEMORY_BYTES` to whether
    `compiled["total"]` fits in it; `largest_term` names the hand count's largest part.
    """

    mesh: dict[str, int]
    platform: str  # "cpu", or "tpu" with `topology` naming the slice
    num_devices: int
    parameters: int
    tokens_per_step: int
    flops_per_step: float  # forward + backward, all devices: tokens x flops.train_flops_per_token
    # XLA's cost analysis of the per-device program. It counts a while loop's body once (the
    # scanned layers, the micro-steps), so it is far below flops_per_step / devices: kept for
    # reference, not used.
    compiled_flops_per_device: float | None
    compiled: dict[str, int]
    hand_count: dict[str, int]
    fits: dict[str, bool]
    largest_term: str
    compile_seconds: float
    caveat: str
    # `config.dry_run.topology` as compiled for, e.g. "v5p-128 (v5p:4x4x4, TPU v5, 95 GiB a
    # chip)"; "" for CPU devices.
    topology: str = ""
    # Result bytes of the collectives per device, by "kind dtype" (`collective_bytes`).
    collectives: dict[str, int] = dataclasses.field(default_factory=dict)
    # The attention the step runs (`attention_run`: `model.attention` resolved for `platform`,
    # then the kernel's checks), and the compiled program's custom calls by target
    # (`custom_calls`): a kernel shows up there, e.g. splash attention as "tpu_custom_call".
    attention: str = ""
    custom_calls: dict[str, int] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "device_memory_bytes": DEVICE_MEMORY_BYTES}

    def table(self) -> str:
        """A short human-readable summary: sizes, memory, and the per-device verdicts."""
        c, h = self.compiled, self.hand_count
        where = f"{self.platform} devices" + (f" of {self.topology}" if self.topology else "")
        lines = [
            f"mesh {self.mesh} on {self.num_devices} {where}, compiled in "
            f"{self.compile_seconds:.0f} s",
            f"parameters       {self.parameters / 1e6:14,.1f} M",
            f"FLOPs per step   {self.flops_per_step:14.3e}  (6N + attention, all devices)",
            f"attention        {self.attention}"
            + "".join(f", {target} x{count}" for target, count in self.custom_calls.items()),
            "per device                compiled      hand count",
        ]
        rows = [
            ("arguments", c["arguments"], h["state"] + h["batch"]),
            ("outputs", c["outputs"], None),
            ("aliased", c["aliased"], None),
            ("temporaries", c["temporaries"], h["total"] - h["state"] - h["batch"]),
            ("total", c["total"], h["total"]),
        ]
        for name, compiled, hand in rows:
            hand_text = "" if hand is None else f"{hand / GIB:12,.2f} GiB"
            lines.append(f"  {name:<14}{compiled / GIB:12,.2f} GiB  {hand_text}")
        results = ", ".join(
            f"{key} {value / 2**20:,.2f} MiB"
            for key, value in self.collectives.items()
            if value >= 2**10  # scalars (loss sums, counts) are noise here
        )
        if results:
            lines.append(f"collective results per step: {results}")
        verdicts = [f"{name} {'fits' if ok else 'NO'}" for name, ok in self.fits.items()]
        lines.append("fits: " + ", ".join(verdicts))
        if not all(self.fits.values()):
            lines.append(f"largest term: {self.largest_term}")
        if self.platform == "cpu":
            lines.append(
                f"note: {self.caveat}. Another device count: --jax_num_cpu_devices=N, or start "
                "Python with XLA_FLAGS=--xla_force_host_platform_device_count=N."
            )
        return "\n".join(lines)


def dry_run(config: ml_collections.ConfigDict, workdir: str) -> DryRunReport:
    """Compiles `config`'s train step for its mesh, writes WORKDIR/dry_run.json, returns the report.

    Uses `config.dry_run.num_devices` devices (0: all of this process's). On CPU those are fake
    devices that must exist before JAX starts. With `config.dry_run.topology` set, the devices
    are that TPU slice's chips (all of them) and libtpu compiles.

    Raises:
      ConfigError: a config value that cannot work, fewer devices than the mesh needs, an
        unknown topology or libtpu missing, or a program the TPU compiler refuses as too big.
    """
    topology = str(config.dry_run.topology or "")
    if topology:
        devices, topology_text = tpu_topology_devices(topology)
    else:
        devices, topology_text = _devices(config), ""
    setup = state_lib.setup(config, devices=devices)
    train_step = steps.make_configured_train_step(
        setup, objectives.get(config.objective.name), config.train
    )
    batch = abstract_batch(config, setup)
    start = time.perf_counter()
    # make_train_step wraps its jit in the axis rules (functools.wraps keeps the jit as
    # __wrapped__); trace inside the same rules so the activation constraints apply.
    with mesh_lib.axis_rules(setup.mesh, setup.layout.rules):
        lowered = train_step.__wrapped__.lower(setup.layout.abstract_state, batch)
    try:
        compiled = lowered.compile()
    except Exception as error:  # libtpu refuses a program bigger than a chip's HBM
        if topology and "RESOURCE_EXHAUSTED" in str(error):
            first = str(error).strip().splitlines()[0]
            raise config_lib.ConfigError(
                f"does not fit {topology_text}: the TPU compiler refused the train step ({first}); "
                "raise train.grad_accum_steps or use more chips."
            ) from error
        raise
    compile_seconds = time.perf_counter() - start

    analysis = compiled.memory_analysis()
    memory = {
        "arguments": int(analysis.argument_size_in_bytes),
        "outputs": int(analysis.output_size_in_bytes),
        "aliased": int(analysis.alias_size_in_bytes),
        "temporaries": int(analysis.temp_size_in_bytes),
        "generated_code": int(analysis.generated_code_size_in_bytes),
    }
    memory["total"] = (
        memory["arguments"]
        + memory["outputs"]
        - memory["aliased"]
        + memory["temporaries"]
        + memory["generated_code"]
    )
    platform = setup.mesh.devices.flat[0].platform
    compiled_text = compiled.as_text()
    calls = custom_calls(compiled_text)
    attention = attention_run(config, setup)
    # A kernel that refused the shapes while tracing (cuDNN checks them there) left no call.
    if attention != "xla" and not any(_KERNEL_CALLS[attention] in target for target in calls):
        attention = "xla"
    hand = hand_count(config, setup, batch, attention=attention)
    model_cfg = setup.model_config
    tokens = config.train.batch_size * config.train.seq_len
    report = DryRunReport(
        mesh=dict(setup.mesh.shape),
        platform=platform,
        num_devices=setup.mesh.size,
        parameters=_count(setup.layout.abstract_state["params"]),
        tokens_per_step=tokens,
        flops_per_step=tokens * flops.train_flops_per_token(model_cfg, config.train.seq_len),
        compiled_flops_per_device=_compiled_flops(compiled),
        compiled=memory,
        hand_count=hand,
        fits={name: memory["total"] <= size for name, size in DEVICE_MEMORY_BYTES.items()},
        largest_term=largest_term(hand),
        compile_seconds=compile_seconds,
        caveat=CPU_CAVEAT if platform == "cpu" else "",
        topology=topology_text,
        collectives=collective_bytes(compiled_text),
        attention=attention,
        custom_calls=calls,
    )
    output = paths.resolve(workdir)
    output.mkdir(parents=True, exist_ok=True)
    paths.write_text_atomic(output / "dry_run.json", json.dumps(report.to_json(), indent=2) + "\n")
    return report


def collective_bytes(hlo_text: str) -> dict[str, int]:
    """Bytes of the results of a compiled program's collectives in one run of it (one train
    step), summed by "kind dtype", largest first (e.g. {"all-gather bf16": ..., ...}).

    The size of each result, not the traffic on the wire (an all-reduce sends about twice its
    result): what answers which dtype FSDP gathers weights and reduces gradients in. Combined
    collectives (one op over a tuple of arrays) count every array under its own dtype. A
    collective inside a loop body (the scanned layers, the micro-steps) counts once per
    iteration: the trip count the compiler annotates (`known_trip_count`, CPU and GPU programs),
    else the bound N of a loop condition `counter < N` (TPU programs; jax's scans and fori_loops
    count from 0 by 1), else once. Of a conditional's branches (an attention kernel's variants)
    only the heaviest counts, once per run. The CPU compiler widens bfloat16 collectives to
    float32 after partitioning, so on CPU devices every float collective reads f32; the TPU
    compiler keeps bfloat16 (tests/test_dry_run.py), and `tools/gpu_bench.sh` asks the GPU
    compiler.
    """
    own: dict[str | None, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    # Per computation: (callees, times) for calls and loops, (branches, None) for conditionals.
    calls: dict[str | None, list[tuple[list[str], int | str | None]]] = collections.defaultdict(
        list
    )
    constants: dict[str, int] = {}
    bounds: dict[str, int] = {}  # condition computation -> N of its `counter < N`
    entry, computation = None, None
    for line in hlo_text.splitlines():
        header = _COMPUTATION_RE.match(line)
        if header:
            computation = header["name"]
            entry = computation if header["entry"] else entry
            continue
        if constant := _INT_CONSTANT_RE.search(line):
            constants[constant[1]] = int(constant[2])
        if (less_than := _LESS_THAN_RE.search(line)) and less_than[1] in constants:
            bounds[computation] = constants[less_than[1]]
        if (match := _COLLECTIVE_RE.search(line)) and match["phase"] != "-start":
            for array in _ARRAY_RE.finditer(match["shape"]):
                elements = math.prod(int(d) for d in array["dims"].split(",") if d)
                dtype = array["dtype"]
                own[computation][f"{match['kind']} {dtype}"] += -(
                    -elements * _dtype_bits(dtype) // 8
                )
        called = [re.findall(r"%([\w.\-]+)", group) for group in _CALLS_RE.findall(line)]
        if not called:
            continue
        if " conditional(" in line:
            calls[computation].append(([name for group in called for name in group], None))
            continue
        loop, trip = _WHILE_RE.search(line), _TRIP_COUNT_RE.search(line)
        for callee in itertools.chain.from_iterable(called):
            times: int | str = 1
            if loop and callee == loop["body"]:
                # Conditions may come later in the text than the loops calling them.
                times = int(trip[1]) if trip else loop["condition"]
            calls[computation].append(([callee], times))

    @functools.cache
    def total(name: str | None) -> collections.Counter[str]:  # HLO call graphs are acyclic
        bytes_by_kind = collections.Counter(own.get(name, {}))
        for callees, times in calls.get(name, ()):
            if times is None:  # a conditional: one branch runs
                heaviest = max((total(branch) for branch in callees), key=lambda c: c.total())
                bytes_by_kind.update(heaviest)
                continue
            factor = bounds.get(times, 1) if isinstance(times, str) else times
            for kind, size in total(callees[0]).items():
                bytes_by_kind[kind] += factor * size
        return bytes_by_kind

    # A fragment without an entry computation (tests) counts every line once.
    return dict((total(entry) if entry else total(None)).most_common())


def custom_calls(hlo_text: str) -> dict[str, int]:
    """How many custom calls of each target a compiled program has, most first (a kernel
    called inside the layer loop counts once: the loop body is one text)."""
    return dict(collections.Counter(_CUSTOM_CALL_RE.findall(hlo_text)).most_common())


def _dtype_bits(dtype: str) -> int:
    """Bits per element of an HLO array type: pred 8, bf16 16, f8e4m3fn 8, s4 4, c64 64."""
    if dtype == "pred":
        return 8
    return int(re.match(r"[a-z]+(\d+)", dtype)[1])


def abstract_batch(
    config: ml_collections.ConfigDict, setup: state_lib.Setup
) -> dict[str, jax.ShapeDtypeStruct]:
    """One global batch as abstract arrays on the setup's batch sharding (nothing allocated)."""
    return {
        key: jax.ShapeDtypeStruct(
            (config.train.batch_size, config.train.seq_len),
            jnp.float32 if key == "loss_weights" else jnp.int32,
            sharding=setup.batch_sharding,
        )
        for key in pipeline.BATCH_FEATURES
    }


def largest_term(hand: dict[str, int]) -> str:
    """The largest part of a `hand_count` total, e.g. "saved_activations (12.00 GiB of 20.50)"."""
    parts = {key: value for key, value in hand.items() if key not in ("state", "total")}
    for key in _transient_parts(parts):  # not in the total
        del parts[key]
    largest = max(parts, key=parts.get)
    return f"{largest} ({parts[largest] / GIB:,.2f} GiB of {hand['total'] / GIB:,.2f})"


def _transient_parts(parts: dict[str, int]) -> tuple[str, ...]:
    """The `hand_count` parts its total leaves out: the smaller of the layer being
    differentiated (`attention_scores` + `layer_backward`) and the `logits`, which are freed
    before the layers' backward pass starts."""
    layer = parts["attention_scores"] + parts["layer_backward"]
    return ("attention_scores", "layer_backward") if layer <= parts["logits"] else ("logits",)


def _devices(config: ml_collections.ConfigDict) -> list[jax.Device]:
    """The devices to compile for (`dry_run.num_devices`, else the mesh's own count, else all);
    a config needing more than exist fails in one sentence."""
    fixed = math.prod(int(config.mesh[axis]) for axis in ("data", "fsdp", "tensor", "pipe"))
    # A mesh without a -1 axis names its device count; one with a -1 axis (a negative product)
    # takes every device, at least |product|.
    wanted = config.dry_run.num_devices or (fixed if fixed > 0 else jax.device_count())
    needed = max(wanted, abs(fixed))
    if needed > jax.device_count():
        raise config_lib.ConfigError(
            f"the dry run needs {needed} devices (config keys dry_run.num_devices / mesh.*) but "
            f"JAX has {jax.device_count()}; on CPU pass --jax_num_cpu_devices={needed} (or start "
            f"Python with XLA_FLAGS=--xla_force_host_platform_device_count={needed}), on one GPU "
            f"--jax_mock_gpu_topology=1x{needed}x1 (compiles for {needed} mocked GPUs)."
        )
    return jax.devices()[:wanted]


def tpu_topology_devices(name: str) -> tuple[list[jax.Device], str]:
    """Compile-only devices of a TPU slice (`v5p-128`, or libtpu's `v5p:4x4x4`) and a description.

    Needs libtpu (`pip install -e '.[tpu]'`); no TPU: the devices only compile. The TPU runtime
    reads its environment once, when libtpu first initialises, so the variables that stop it
    looking for a TPU VM's metadata server (and its one-process lock) are set here, only when a
    topology is asked for.
    """
    generation, _, size = name.partition("-")
    libtpu_name = name
    if ":" not in name:
        if generation not in TPU_GENERATIONS or not size.isdigit():
            raise config_lib.ConfigError(
                f"config key dry_run.topology={name!r} is not a TPU slice; use e.g. v5p-128, "
                f"v5e-256, v6e-8 ({', '.join(TPU_GENERATIONS)}) or libtpu's v5p:4x4x4."
            )
        libtpu_name = f"{TPU_GENERATIONS[generation][0]}:{_chip_grid(name, generation, int(size))}"
    generation = libtpu_name.split(":")[0]
    if generation not in TPU_GENERATIONS:
        raise config_lib.ConfigError(
            f"config key dry_run.topology={name!r}: unknown TPU generation {generation!r}; "
            f"use one of {', '.join(TPU_GENERATIONS)}."
        )
    _, accelerator, chip_config, _ = TPU_GENERATIONS[generation]
    cores = hardware.HARDWARE[generation].cores_per_chip
    try:
        import libtpu  # noqa: F401  # the TPU compiler, from PyPI
    except ImportError as error:
        raise config_lib.ConfigError(
            f"config key dry_run.topology={name!r} compiles with libtpu, which is not installed; "
            "pip install -e '.[tpu]'."
        ) from error
    chips = math.prod(int(x) for x in libtpu_name.split(":")[1].split("x"))
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{accelerator}-{chips * cores}")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    # libtpu locks /tmp/libtpu_lockfile for one process per machine; compiling touches no chip,
    # so dry runs side by side (or beside a job) may share it.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    try:
        devices = list(
            topologies.get_topology_desc(libtpu_name, "tpu", chip_config_name=chip_config).devices
        )
    except Exception as error:  # libtpu's own message names what is wrong  # noqa: BLE001
        raise config_lib.ConfigError(
            f"config key dry_run.topology={name!r}: libtpu cannot make topology "
            f"{libtpu_name!r}: {str(error).splitlines()[0]}"
        ) from error
    memory = hardware.HARDWARE[generation].memory_bytes / GIB
    text = f"{name} ({libtpu_name}, {devices[0].device_kind}, {memory:g} GiB a chip)"
    return devices, text


def _chip_grid(name: str, generation: str, size: int) -> str:
    """The chip grid of a standard slice: v5p-128 = 64 chips = 4x4x4, v5e-256 = 16x16.

    Powers of two only, grown the way Cloud TPU grows slices (v5p: 2x2x1, 2x2x2, 2x2x4, 2x4x4,
    4x4x4, ...; v5e: 1x1, 1x2, 2x2, 2x4, 4x4, ...): double the smallest side, the last on a tie.
    """
    dims = TPU_GENERATIONS[generation][3]
    cores = hardware.HARDWARE[generation].cores_per_chip
    chips = size // cores
    grid = [2, 2, 1] if dims == 3 else [1, 1]
    if size % cores or chips < math.prod(grid) or chips & (chips - 1):
        raise config_lib.ConfigError(
            f"config key dry_run.topology={name!r}: give the chip grid instead "
            f"(libtpu's form, e.g. {generation}:4x4x12 or {generation}:2x4); the "
            f"{generation}-N form covers powers of two from {math.prod(grid) * cores}."
        )
    while math.prod(grid) < chips:
        smallest = min(grid)
        grid[max(i for i, side in enumerate(grid) if side == smallest)] *= 2
    return "x".join(map(str, grid))


def _count(tree: Any) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def shard_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs carrying shardings (largest shard)."""
    return sum(
        math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
        for leaf in jax.tree.leaves(tree)
    )


def attention_run(
    config: ml_collections.ConfigDict, setup: state_lib.Setup, platform: str | None = None
) -> str:
    """The attention the compiled step runs: `model.attention` resolved for `platform` (default:
    the mesh's), then the kernel's own checks (length, dtype, sharding) as it makes them while
    tracing. Cost estimates pass the platform of the hardware they estimate for."""
    model_cfg = setup.model_config
    with mesh_lib.axis_rules(setup.mesh, setup.layout.rules):  # as while tracing the step
        platform = platform or attention_impls.current_platform()
        resolved = attention_impls.resolve(model_cfg.attention, platform)
        problem = attention_impls.kernel_problem(
            resolved, config.train.seq_len, model_cfg.compute_dtype
        )
    return "xla" if problem else resolved


def _compiled_flops(compiled: Any) -> float | None:
    try:
        costs = compiled.cost_analysis()
    except Exception:  # not every backend implements it  # noqa: BLE001
        return None
    if isinstance(costs, list):  # older jax: one dict per program
        costs = costs[0] if costs else {}
    value = (costs or {}).get("flops")
    return float(value) if value is not None else None


def hand_count(
    config: ml_collections.ConfigDict,
    setup: state_lib.Setup,
    batch: dict[str, Any],
    *,
    attention: str | None = None,
) -> dict[str, int]:
    """Per-device bytes of one train step counted from the shapes, by part.

    `attention` is the implementation the step runs (default: `attention_run`'s answer).
    `params`, `optimizer` (Adam moments and counters) and `batch` are the shards of the abstract
    state and batch; `state` is the whole state (params + optimizer + scalars). `gradients` is
    one parameter-sized buffer (two with gradient accumulation: the float32 sum and a
    micro-step's). Activations are per micro-step, for `b` rows per device (batch /
    grad_accum_steps / (data x fsdp)), `seq` = seq_len, layers held `L / pipe`, and heads, kv
    heads, MLP width and vocabulary divided by `tensor`:
    - `saved_activations`: what the backward pass keeps per layer under the remat policy
      (full: the layer input; dots_no_batch: + the projections q, k, v, attention output, gate,
      up; dots: + the attention scores; none: + the float32 attention probabilities, norms and
      MLP hidden; a fused kernel keeps its log-sum-exp instead of scores and probabilities),
      times the layers held;
    - `attention_scores`: under the XLA path the layer being differentiated holds float32
      [b, heads, seq, seq] scores, probabilities and both their gradients (4 copies: XLA's
      attention is not fused) and the [b, seq, seq] mask; the fused kernels keep float32
      softmax statistics per query and head instead (splash: the log-sum-exp and the backward
      pass's row sums, for each of the two calls prefix rows take; cuDNN: its statistics plus
      the dense [b, seq, seq] mask as a bias in the compute dtype), for the attention the step
      runs (`attention_run`);
    - `layer_backward`: under a fused kernel, what else the layer being differentiated holds:
      its intermediates (what `none` saves: input, norms, q, k, v, attention output, the
      kernel's log-sum-exp, MLP gate, up and hidden) and a gradient of each, less what
      `saved_activations` holds for the layer beyond its input, counted twice over as the TPU
      compiler's float32 elementwise work measured (docs/parallelism.md: `clm_7b`, remat
      `full`, with splash on v5p-16 needs 77.0 GiB besides state, gradients, batch and saved
      layer inputs at 32 rows per device, 15.2 at 4). Under the XLA path the four score
      copies cover it (measured: 0.77-1.21x with it left out) and it is 0;
    - `logits`: float32 [b, seq, vocab] logits, their softmax and their gradient (3 copies),
      for `model.logits_chunk_length` positions at a time when it is set.
    The logits are freed before the layers' backward pass starts, so `total` counts the larger
    of `attention_scores` + `layer_backward` and `logits`, not both. Under a pipeline
    `attention_scores` and `layer_backward` are for a microbatch's rows (b / `mesh.microbatches`);
    pipeline buffers, and the residuals the bubble's iterations keep, are not counted.
    """
    model_cfg, mesh = setup.model_config, dict(setup.mesh.shape)
    state = setup.layout.abstract_state
    params = shard_bytes(state["params"])
    optimizer = shard_bytes(state["opt_state"])
    whole_state = shard_bytes(state)

    b = config.train.batch_size // config.train.grad_accum_steps // (mesh["data"] * mesh["fsdp"])
    seq, t = config.train.seq_len, mesh["tensor"]
    c = jnp.dtype(model_cfg.compute_dtype).itemsize
    d, f = model_cfg.embed_dim, model_cfg.mlp_dim // t
    q, kv = model_cfg.num_heads // t, model_cfg.num_kv_heads // t
    hd, vocab = model_cfg.head_dim, model_cfg.vocab_size // t
    layers = model_cfg.num_layers // mesh["pipe"]

    attention = attention or attention_run(config, setup)
    fused = attention != "xla"
    per_token = {"full": d * c}  # saved per layer per token, bytes
    per_token["dots_no_batch"] = per_token["full"] + ((q + 2 * kv) * hd + d + 2 * f) * c
    # XLA's float32 score row is a dot's output; a kernel's output is no dot.
    score_row = 0 if fused else q * seq * 4
    per_token["dots"] = per_token["dots_no_batch"] + score_row + q * hd * c
    # Everything saved: XLA's probabilities, or the kernel's float32 log-sum-exp.
    probabilities = q * 4 if fused else q * seq * 4
    per_token["none"] = per_token["dots"] + probabilities + (2 * d) * 4 + f * c
    # Per pipeline stage the layers see one microbatch at a time.
    layer_rows = b // model_cfg.pipeline_microbatches
    if fused:
        # The layer's intermediates (as `none` keeps them) and a gradient of each, less what
        # `saved_activations` holds for it already, in float32 (hence 2x; docstring).
        saved = per_token[model_cfg.remat_policy] - per_token["full"]
        layer_backward = 2 * layer_rows * seq * (2 * per_token["none"] - saved)
    else:
        layer_backward = 0
    scores = {
        "xla": layer_rows * (4 * q * seq * seq * 4 + seq * seq),
        # Two calls for rows with a bidirectional prefix, each with its statistics.
        "splash": layer_rows * 2 * 2 * q * seq * 4,
        "cudnn": layer_rows * (q * seq * 4 + seq * seq * c),
    }[attention]
    grads = params * (2 if config.train.grad_accum_steps > 1 else 1)
    parts = {
        "params": params,
        "optimizer": optimizer,
        "gradients": grads,
        "batch": shard_bytes(batch),
        "saved_activations": layers * b * seq * per_token[model_cfg.remat_policy],
        "attention_scores": scores,
        "layer_backward": layer_backward,
        "logits": 3 * b * min(model_cfg.logits_chunk_length or seq, seq) * vocab * 4,
    }
    scalars = whole_state - params - optimizer  # step, rng, anomaly state
    transient = sum(parts[key] for key in _transient_parts(parts))
    return {**parts, "state": whole_state, "total": sum(parts.values()) - transient + scalars}
