"""Where a profiled train step's time goes, from the trace `jax.profiler` writes.

    python tools/benchmark.py train --config=configs/clm_124m.py --profile_dir=/tmp/profile
    python tools/profile_summary.py /tmp/profile [--top=25] [--steps=3]

Reads the newest Chrome trace-event file under the folder (`*.trace.json.gz`, or the
`perfetto_trace.json.gz` of `create_perfetto_trace=True`) and prints, as Markdown: the time the
executed ops took by category (matmul, attention, elementwise fusion, collective, copy, other),
the busiest ops, and how much of the profiled wall time the device was busy at all (the rest is
the device waiting for the host: dispatch, input, Python).

Which events are executed ops:
- GPU/TPU: the first process named `/device:...` (one device). Of its threads, "XLA Ops" (one
  event per HLO op, all streams) when the trace has it, else the "Stream ..." threads (one event
  per kernel), else all of them, so an op is never counted twice.
- CPU (no device process): the XLA CPU client's and its Eigen pool's threads
  (`tf_XLAPjRtCpuClient...`, `tf_XLAEigen...`), which carry one event per executed thunk named
  after its HLO op, less the runtime's bookkeeping (C++-qualified names such as
  `ThunkExecutor::Execute`, and `end: ...` markers).
- Everywhere, control-flow ops (`while`, `conditional`, `call`) are left out: their events span
  the ops of their bodies, which are counted themselves.

Pure Python (json + gzip): it runs where the trace was taken, with nothing to install.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import gzip
import json
import pathlib
import re
import sys

# First match wins; tested against the op name and, where the trace has it, the HLO text.
CATEGORIES: tuple[tuple[str, re.Pattern], ...] = (
    (
        "collective",
        re.compile(
            r"all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute|nccl", re.I
        ),
    ),
    ("attention", re.compile(r"flash|fmha|cudnn|attention|splash", re.I)),
    (
        "matmul",
        re.compile(r"gemm|cublas|cutlass|nvjet|xmma|wgmma|dot|matmul|convolution|ynn", re.I),
    ),
    ("copy", re.compile(r"copy|memcpy|memset|transpose|dynamic-update-slice|dynamic-slice", re.I)),
    ("fusion", re.compile(r"fusion|loop_|input_|reduce|convert|broadcast|add|multiply", re.I)),
)
# Runtime bookkeeping on the CPU client's threads: C++-qualified names (ThunkExecutor::Execute,
# ThreadpoolListener::Record, ...), "end: ..." markers. HLO op names have neither.
_CPU_BOOKKEEPING = re.compile(r"::|^end: ")
# Control-flow ops span the ops of their bodies, which are events of their own.
_CONTAINER = re.compile(r"^(while|conditional|call)(\.\d+)?$")


# The parts of an op's HLO text (`long_name`) that say what it is (custom-call target, fusion
# kind, a backend_config kind such as "__triton_gemm"); its operands' names (a fusion fed by
# %dot.3) must not.
_HLO_KIND = re.compile(r'custom_call_target="[^"]*"|kind=k\w+|"kind":"__[^"]+"')


def category(name: str, hlo_text: str = "") -> str:
    """The coarse category of an op (see CATEGORIES) from its name and, where the trace has
    its HLO text, the custom-call target and fusion kind; 'other' when none matches."""
    kind = " ".join(_HLO_KIND.findall(hlo_text))
    for label, pattern in CATEGORIES:
        if pattern.search(name) or (kind and pattern.search(kind)):
            return label
    return "other"


@dataclasses.dataclass(frozen=True)
class OpTotal:
    name: str
    category: str
    count: int
    microseconds: float


@dataclasses.dataclass(frozen=True)
class ProfileSummary:
    """Executed-op time of one trace. `op_microseconds` sums every op (overlapping streams add
    up); `busy_microseconds` is the union of their intervals, `wall_microseconds` the span from
    the first op's start to the last op's end."""

    source: str  # which events were read, e.g. "/device:GPU:0 XLA Ops"
    ops: list[OpTotal]  # largest total first
    by_category: dict[str, float]  # microseconds, largest first
    op_microseconds: float
    busy_microseconds: float
    wall_microseconds: float

    @property
    def busy_fraction(self) -> float:
        return self.busy_microseconds / self.wall_microseconds if self.wall_microseconds else 0.0

    def markdown(self, top: int = 20, steps: int = 0) -> str:
        per_step = f", {self.wall_microseconds / steps / 1e3:.1f} ms a step" if steps else ""
        lines = [
            f"Profiled ops ({self.source}): {self.op_microseconds / 1e3:,.1f} ms of op time in "
            f"{self.wall_microseconds / 1e3:,.1f} ms of wall time{per_step}; the device was busy "
            f"{100 * self.busy_fraction:.1f}% of it (the rest waits for the host). Traced "
            "steps can run slower than timed ones (a GPU profiler turns CUDA graphs off): read "
            "shares here, speed from the timed run.",
            "",
            "| category | ms | % of op time |",
            "| --- | --- | --- |",
        ]
        for label, microseconds in self.by_category.items():
            share = 100 * microseconds / self.op_microseconds if self.op_microseconds else 0.0
            lines.append(f"| {label} | {microseconds / 1e3:,.2f} | {share:.1f}% |")
        lines += [
            "",
            "| op | category | count | ms | % of op time |",
            "| --- | --- | --- | --- | --- |",
        ]
        for op in self.ops[:top]:
            share = 100 * op.microseconds / self.op_microseconds if self.op_microseconds else 0.0
            name = op.name if len(op.name) <= 80 else op.name[:77] + "..."
            lines.append(
                f"| `{name}` | {op.category} | {op.count} | {op.microseconds / 1e3:,.2f} | "
                f"{share:.1f}% |"
            )
        return "\n".join(lines)


def find_trace(folder: str | pathlib.Path) -> pathlib.Path:
    """The newest trace-event file under `folder`; a clear error when there is none."""
    root = pathlib.Path(folder)
    candidates = sorted(
        [*root.rglob("*.trace.json.gz"), *root.rglob("perfetto_trace.json.gz")],
        key=lambda path: path.stat().st_mtime,
    )
    if not candidates:
        raise FileNotFoundError(
            f"no *.trace.json.gz or perfetto_trace.json.gz under {root}; write one with "
            "`tools/benchmark.py train --profile_dir=DIR` (jax.profiler.trace)."
        )
    return candidates[-1]


def _load_events(path: pathlib.Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as file:
        data = json.load(file)
    return data["traceEvents"] if isinstance(data, dict) else data


def _selected_ops(events: list[dict]) -> tuple[str, list[dict]]:
    processes, threads = {}, {}
    for event in events:
        if event.get("ph") != "M":
            continue
        if event.get("name") == "process_name":
            processes[event["pid"]] = event["args"]["name"]
        elif event.get("name") == "thread_name":
            threads[(event["pid"], event["tid"])] = event["args"]["name"]
    complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
    devices = sorted((name, pid) for pid, name in processes.items() if name.startswith("/device:"))
    if devices:
        # One device: summed over several, op time would count each device and busy time
        # would be "any device busy".
        name, pid = devices[0]
        names = {tid: thread for (p, tid), thread in threads.items() if p == pid}
        xla_ops = {tid for tid, thread in names.items() if thread == "XLA Ops"}
        streams = {tid for tid, thread in names.items() if thread.startswith("Stream")}
        tids, label = (xla_ops, "XLA Ops") if xla_ops else (streams, "streams")
        if not tids:
            tids, label = set(names) | {e["tid"] for e in complete if e["pid"] == pid}, "all"
        return f"{name} {label}", [e for e in complete if e["pid"] == pid and e["tid"] in tids]
    client_threads = {
        key
        for key, name in threads.items()
        if name.startswith(("tf_XLAPjRtCpuClient", "tf_XLAEigen"))
    }
    chosen = [
        e
        for e in complete
        if (e["pid"], e["tid"]) in client_threads and not _CPU_BOOKKEEPING.search(e["name"])
    ]
    return "XLA CPU client threads", chosen


def _union_length(intervals: list[tuple[float, float]]) -> float:
    total, current_start, current_end = 0.0, None, None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total


def summarize(trace_path: str | pathlib.Path) -> ProfileSummary:
    """Totals of the executed ops in one trace-event file (see the module docstring)."""
    path = pathlib.Path(trace_path)
    source, ops = _selected_ops(_load_events(path))
    ops = [event for event in ops if not _CONTAINER.match(event["name"])]
    if not ops:
        raise ValueError(
            f"{path} holds no executed-op events; profile steps that run (after compilation)."
        )
    totals: dict[str, list] = {}
    for event in ops:
        hlo_text = str(event.get("args", {}).get("long_name", ""))
        entry = totals.setdefault(event["name"], [category(event["name"], hlo_text), 0, 0.0])
        entry[1] += 1
        entry[2] += float(event["dur"])
    op_totals = sorted(
        (OpTotal(name, label, count, micros) for name, (label, count, micros) in totals.items()),
        key=lambda op: -op.microseconds,
    )
    by_category: collections.Counter[str] = collections.Counter()
    for op in op_totals:
        by_category[op.category] += op.microseconds
    intervals = [(float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in ops]
    return ProfileSummary(
        source=source,
        ops=op_totals,
        by_category=dict(by_category.most_common()),
        op_microseconds=sum(op.microseconds for op in op_totals),
        busy_microseconds=_union_length(intervals),
        wall_microseconds=max(end for _, end in intervals) - min(start for start, _ in intervals),
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="the --profile_dir a trace was written to")
    parser.add_argument("--top", type=int, default=20, help="busiest ops listed")
    parser.add_argument("--steps", type=int, default=0, help="steps profiled (for ms a step)")
    args = parser.parse_args(argv)
    try:
        summary = summarize(find_trace(args.folder))
    except (FileNotFoundError, ValueError) as error:
        print(f"profile_summary: {error}", file=sys.stderr)
        return 2
    print(summary.markdown(top=args.top, steps=args.steps))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
