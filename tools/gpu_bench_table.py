"""The tables of tools/gpu_bench.sh, from what it measured.

    python tools/gpu_bench_table.py MATMUL_JSON RESULTS_JSONL
    python tools/gpu_bench_table.py gpu_bench.jsonl     # the file a device run brings back

RESULTS_JSONL holds one row per run: {"model", "side": "jaxpretrain" | "torch" | "variant",
"result": the JSON line of `benchmark.py train` or `torch_baseline.py`, plus "attention" for ours
and "variant" for variants, each compared with its model's own row}. The brought-back
gpu_bench.jsonl is the matmul line followed by the rows. A side that failed is n/a in its row
rather than the end of the table.
"""

from __future__ import annotations

import json
import sys


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def gib(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.1f} GiB"


def tokens(result: dict | None) -> str:
    return "n/a" if result is None else f"{result['tokens_per_second']:,.0f}"


def step(result: dict | None) -> str:
    if result is None:
        return "n/a"
    return (
        f"{result['step_ms_median']:.1f} ms ({result['step_ms_min']:.1f}-"
        f"{result['step_ms_max']:.1f})"
    )


def tables(matmul: dict, rows: list[dict]) -> str:
    spec = matmul.get("spec_tflops")
    reached = matmul.get("tflops")
    lines = [
        f"{matmul.get('device_kind', 'unknown')}: bf16 matmul {matmul.get('size')}^3 reaches "
        f"{'n/a' if reached is None else f'{reached:.3g}'} TFLOP/s (spec sheet: "
        f"{'unknown' if spec is None else f'{spec:.0f}'}); MFU below is against the spec "
        "sheet's dense bf16 peak",
        "| model | ours attention | ours tok/s | ours MFU | torch tok/s | torch MFU | ours / torch "
        "(median steps) | ours step (median, min-max) | ours mem | torch mem | ours compile |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    by_model: dict[str, dict[str, dict]] = {}
    attention: dict[str, str] = {}
    variants = [row for row in rows if row["side"] == "variant"]
    for row in rows:
        if row["side"] == "variant":
            continue
        by_model.setdefault(row["model"], {})[row["side"]] = row["result"]
        if row["side"] == "jaxpretrain":
            attention[row["model"]] = row.get("attention", "auto")
    for model, sides in by_model.items():
        ours, torch = sides.get("jaxpretrain"), sides.get("torch")
        ratio = "n/a"
        if ours is not None and torch is not None:
            # Like with like: both sides' median of steps timed one at a time with a device sync
            # (our tok/s column is back to back, as training runs; the baseline has no such figure).
            ratio = f"{torch['step_time_median_s'] * 1e3 / ours['step_ms_median']:.2f}x"
        lines.append(
            f"| {model} | {attention.get(model, 'failed')} | {tokens(ours)} | "
            f"{percent(ours and ours['mfu'])} | {tokens(torch)} | "
            f"{percent(torch and torch.get('mfu'))} | {ratio} | {step(ours)} | "
            f"{gib(ours and ours['peak_memory_gib'])} | "
            f"{gib(torch and torch.get('peak_memory_gib'))} | "
            f"{'n/a' if ours is None else format(ours['compile_s'], '.0f') + ' s'} |"
        )
    if variants:
        lines += [
            "",
            "Variants, one flag each, against their model's row above ('repeat' runs it again):",
            "| model | variant | tok/s | MFU | vs default | step (median, min-max) | mem "
            "| compile |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in variants:
            result = row["result"]
            default = by_model.get(row["model"], {}).get("jaxpretrain")
            versus = "n/a"
            if default is not None:
                versus = f"{result['tokens_per_second'] / default['tokens_per_second']:.3f}x"
            lines.append(
                f"| {row['model']} | {row['variant']} | {tokens(result)} | "
                f"{percent(result['mfu'])} | {versus} | {step(result)} | "
                f"{gib(result['peak_memory_gib'])} | {result['compile_s']:.0f} s |"
            )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) == 1:  # gpu_bench.jsonl: the matmul line, then the rows
        with open(argv[0]) as file:
            lines = [json.loads(line) for line in file if line.strip()]
        matmul, rows = lines[0], lines[1:]
    elif len(argv) == 2:
        with open(argv[0]) as file:
            matmul = json.loads(file.read())
        with open(argv[1]) as file:
            rows = [json.loads(line) for line in file if line.strip()]
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(tables(matmul, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
