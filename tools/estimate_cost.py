"""What training a config will cost, before renting: FLOPs, days, device-hours, price, memory.

    python tools/estimate_cost.py --config=configs/clm_7b.py --tokens=2e12 --hardware=v5p
    python tools/estimate_cost.py --config=configs/clm_7b.py --tokens_per_parameter=20 \
        --hardware=h100,v5p --mfu=0.5 --price_per_hour=2.5 --config.train.grad_accum_steps=8
    python tools/estimate_cost.py --config=configs/clm_125m.py --tokens=1e10 --hardware=v5e \
        --mfu_from=gs://bucket/run1          # the median MFU a real run logged
    python tools/estimate_cost.py --table --hardware=v5p,h100   # the table of docs/operations.md

FLOPs are PaLM's 6N + 12·L·H·Dh·T per token (attention counted whole: causal masking is not
halved); time is FLOPs / (peak x MFU x devices), MFU 0.40 unless given; price is device-hours x
the on-demand list price of `jaxpretrain/hardware.py` unless given. Memory per device is the dry
run's hand count on the config's mesh (nothing compiled), and the device count for the time is
the smallest that fits unless --devices is given: `jaxpretrain/cost.py` says how that is searched.
Every figure is printed with how it was obtained.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from jaxpretrain import cli

_FLAGS = flags.FlagValues()
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Model config file (configs/*.py).", flag_values=_FLAGS
)
_TOKENS = flags.DEFINE_float("tokens", None, "Trained tokens, e.g. 2e12.", flag_values=_FLAGS)
_TOKENS_PER_PARAMETER = flags.DEFINE_float(
    "tokens_per_parameter",
    None,
    "Or trained tokens per parameter (Chinchilla: 20).",
    flag_values=_FLAGS,
)
_HARDWARE = flags.DEFINE_list(
    "hardware", None, "Accelerators, comma-separated (jaxpretrain/hardware.py).", flag_values=_FLAGS
)
_MFU = flags.DEFINE_float(
    "mfu", None, "Model FLOPs utilisation (default 0.40).", flag_values=_FLAGS
)
_MFU_FROM = flags.DEFINE_string(
    "mfu_from",
    None,
    "A run's workdir: use the median mfu of its metrics.jsonl.",
    flag_values=_FLAGS,
)
_PRICE = flags.DEFINE_float(
    "price_per_hour", None, "USD per device-hour (default: list price).", flag_values=_FLAGS
)
_DEVICES = flags.DEFINE_integer(
    "devices", 0, "Devices the time is for (0: the smallest count that fits).", flag_values=_FLAGS
)
_MAX_DEVICES = flags.DEFINE_integer(
    "max_devices", 4096, "Where the search for a fitting device count stops.", flag_values=_FLAGS
)
_TABLE = flags.DEFINE_bool(
    "table",
    False,
    "Print the docs/operations.md table (uses --hardware, --mfu, --price_per_hour).",
    flag_values=_FLAGS,
)

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The docs/operations.md table: (name, config file, overrides, devices for the days column).
# 125M, 7B and 70B are our configs; 13B is Llama-2-13B's shape on the 7B config and 175B
# GPT-3's widths (96 layers, d=12288, 96 heads; a SwiGLU MLP of 32768 has GPT-3's 4d GELU MLP's
# parameter count) on the 70B config (8-way tensor parallelism x FSDP). The device counts are
# common cluster sizes for each scale, not minimums: the smallest fit has its own column.
TABLE_MODELS = (
    ("125M", "configs/clm_125m.py", {}, 8),
    ("7B", "configs/clm_7b.py", {}, 256),
    ("13B", "configs/clm_7b.py", {"num_layers": 40, "embed_dim": 5120, "num_heads": 40,
                                  "num_kv_heads": 40, "mlp_dim": 13824}, 512),
    ("70B", "configs/clm_70b.py", {}, 1024),
    ("175B", "configs/clm_70b.py", {"num_layers": 96, "embed_dim": 12288, "num_heads": 96,
                                    "num_kv_heads": 96, "mlp_dim": 32768}, 2048),
)  # fmt: skip
# Token counts of the table: Chinchilla's compute-optimal 20 per parameter (Hoffmann et al.
# 2022), and Llama 2's 2T.
CHINCHILLA_TOKENS_PER_PARAMETER = 20
TABLE_TOKENS = 2e12


def use_fake_cpu_devices(count: int) -> None:
    """Lays shardings out on `count` fake CPU devices; runs before JAX starts its backends (at
    the first device query, not at import), and keeps any accelerator on this machine idle."""
    import jax

    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={count}"
    ).strip()
    jax.config.update("jax_platforms", "cpu")


def single_estimates(config, hardware_names: list[str]) -> str:
    """One report per hardware for --config."""
    from jaxpretrain import cost, hardware

    if (_TOKENS.value is None) == (_TOKENS_PER_PARAMETER.value is None):
        raise ValueError("give one of --tokens=N or --tokens_per_parameter=R.")
    if _MFU.value is not None and _MFU_FROM.value:
        raise ValueError("give --mfu or --mfu_from, not both.")
    mfu, mfu_source = cost.DEFAULT_MFU, cost.DEFAULT_MFU_SOURCE
    if _MFU.value is not None:
        mfu, mfu_source = _MFU.value, "as given"
    elif _MFU_FROM.value:
        mfu, mfu_source = cost.measured_mfu(_MFU_FROM.value)
    tokens = _TOKENS.value
    if tokens is None:
        tokens = _TOKENS_PER_PARAMETER.value * cost.parameter_counts(config)[0]
    reports = []
    for name in hardware_names:
        estimate = cost.estimate(
            config,
            tokens,
            hardware.get(name),
            mfu=mfu,
            mfu_source=mfu_source,
            price_per_hour=_PRICE.value,
            devices=_DEVICES.value,
            max_devices=_MAX_DEVICES.value,
        )
        reports.append(estimate.text())
    return "\n\n".join(reports)


def table(hardware_names: list[str]) -> str:
    """The Markdown table of docs/operations.md: TABLE_MODELS x (Chinchilla tokens, 2T) x
    hardware."""
    from jaxpretrain import config as config_lib
    from jaxpretrain import cost, hardware

    mfu = cost.DEFAULT_MFU if _MFU.value is None else _MFU.value
    lines = [
        "| model | parameters | tokens | hardware | devices | memory per device | days "
        "| device-hours | cost (list price) | smallest fit |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, path, overrides, devices in TABLE_MODELS:
        config = config_lib.load_config_file(os.path.join(_ROOT, path))
        config.model.update(overrides)
        chinchilla = CHINCHILLA_TOKENS_PER_PARAMETER * cost.parameter_counts(config)[0]
        rows = []
        for hardware_name in hardware_names:
            estimate = cost.estimate(
                config,
                chinchilla,
                hardware.get(hardware_name),
                mfu=mfu,
                price_per_hour=_PRICE.value,
                devices=devices,
                max_devices=_MAX_DEVICES.value,
            )
            # Memory and the fit do not depend on the token count: one search serves both rows.
            rows.append((chinchilla, estimate))
            rows.append((TABLE_TOKENS, dataclasses.replace(estimate, tokens=TABLE_TOKENS)))
        rows.sort(key=lambda row: row[0])
        lines.extend(table_row(name, estimate, devices) for _, estimate in rows)
    return "\n".join(lines)


def table_row(name: str, estimate, devices: int) -> str:
    """One Markdown row of `table`."""
    from jaxpretrain.hardware import GIB

    hw, memory, smallest = estimate.hardware, estimate.memory, estimate.smallest_fit
    cells = [
        name,
        f"{estimate.parameters / 1e9:,.2f} B",
        f"{estimate.tokens / 1e12:.3g} T"
        if estimate.tokens >= 1e12
        else f"{estimate.tokens / 1e9:.3g} B",
        hw.label,
        hw.slice_name(devices),
        f"{memory.total_bytes / GIB:,.1f} GiB" + ("" if memory.fits else " (does not fit)"),
        f"{estimate.days:,.1f}" if estimate.days >= 1 else f"{estimate.days:.2f}",
        f"{estimate.device_hours:,.0f}",
        f"${estimate.cost:,.0f}",
        hw.slice_name(smallest.devices) if smallest else "none",
    ]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; settings go in --config.KEY=VALUE.")
    from jaxpretrain import config as config_lib
    from jaxpretrain import hardware

    try:
        names = _HARDWARE.value or []
        if not names:
            raise ValueError(f"give --hardware, one or more of {', '.join(hardware.HARDWARE)}.")
        for name in names:
            hardware.get(name)  # an unknown name fails here, before any work
        needed = max(_MAX_DEVICES.value, _DEVICES.value)
        if _TABLE.value:
            needed = max(needed, *(devices for *_, devices in TABLE_MODELS))
        use_fake_cpu_devices(needed)
        if _TABLE.value:
            print(table(names))
        elif _CONFIG.value is None:
            raise ValueError("give --config=configs/X.py (or --table).")
        else:
            print(single_estimates(_CONFIG.value, names))
    except (config_lib.ConfigError, FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error.args[0] if error.args else error}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.tool_flags_parser(_FLAGS, __doc__))
