"""Plots runs' metrics.jsonl: training, validation (overall and per data source), throughput,
MFU, with the runs' events marked.

    python tools/plot_metrics.py runs/tiny_clm          # writes runs/tiny_clm/training_metrics.png
    python tools/plot_metrics.py gs://bucket/run1 gs://bucket/run2 --output=/tmp/compare.png

Several workdirs are overlaid, one colour per run, labelled by the workdir's folder name. A panel
appears when some run logged its metric (`mfu` is null where the device's peak is unknown, e.g.
CPU, and then has no panel); the per-source validation panels hold every `eval/<source>/...` key
found. Events (`anomaly`, `rollback`, `rollback_unavailable`, `resume`, `preempted`) are vertical
lines in the run's colour on every panel, one line style per kind, named in the legend.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import re
import sys
from collections.abc import Sequence

from absl import app, flags

from jaxpretrain import cli, metrics_log, paths

_FLAGS = flags.FlagValues()
_OUTPUT = flags.DEFINE_string(
    "output",
    None,
    "The PNG to write (default: FIRST_DIR/training_metrics.png).",
    flag_values=_FLAGS,
)

OUTPUT_NAME = "training_metrics.png"
# eval/<source>/<metric>: a mixture component's validation metrics (`steps.py`).
_PER_SOURCE = re.compile(r"^eval/(?P<source>.+)/(?P<metric>loss|perplexity|bits_per_byte)$")
# (line style, width) of each kind of event mark (the colour is the run's); a kind not listed
# here gets OTHER_EVENT. Named styles only, so a legend swatch reads as the line it stands for.
EVENT_STYLES = {
    "anomaly": (":", 1.5),
    "rollback": ("--", 1.5),
    "rollback_unavailable": ("-.", 1.5),
    "resume": ("-", 0.8),
    "preempted": ("-", 2.5),
}
OTHER_EVENT = ("--", 0.6)
_SOURCE_STYLES = ("-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1)))


@dataclasses.dataclass(frozen=True)
class Panel:
    """One plot: its title, the metric keys drawn (with a label suffix each) and its y scale."""

    title: str
    keys: tuple[tuple[str, str], ...]  # (metric key, label suffix: "" or the data source)
    log: bool = False
    ylabel: str = ""
    markers: bool = False  # sparse series (validation) show their points


_FIXED_PANELS = (
    Panel("loss", (("loss", ""),), log=True, ylabel="nats per loss token"),
    Panel("learning rate", (("learning_rate", ""),)),
    Panel("gradient norm", (("grad_norm", ""),), log=True),
    Panel("throughput", (("tokens_per_second", ""),), ylabel="tokens / s"),
    Panel("MFU", (("mfu", ""),), ylabel="model FLOPs / peak"),
    Panel("validation loss", (("eval/loss", ""),), markers=True, ylabel="nats per loss token"),
    Panel("validation perplexity", (("eval/perplexity", ""),), log=True, markers=True),
    Panel("validation bits per byte", (("eval/bits_per_byte", ""),), markers=True),
)
_METRIC_NAMES = {"loss": "loss", "perplexity": "perplexity", "bits_per_byte": "bits per byte"}


def panels_for(runs: Sequence[metrics_log.RunMetrics]) -> list[Panel]:
    """The panels with data in at least one run: the fixed ones, then one per-source panel per
    validation metric holding every source any run logged."""
    keys = set().union(*(run.keys() for run in runs))
    panels = [panel for panel in _FIXED_PANELS if panel.keys[0][0] in keys]
    sources: dict[str, set[str]] = {}
    for key in keys:
        match = _PER_SOURCE.match(key)
        if match:
            sources.setdefault(match["metric"], set()).add(match["source"])
    for metric, name in _METRIC_NAMES.items():
        if metric in sources:
            series = tuple((f"eval/{s}/{metric}", s) for s in sorted(sources[metric]))
            panels.append(
                Panel(
                    f"validation {name} per source",
                    series,
                    log=metric == "perplexity",
                    markers=True,
                )
            )
    return panels


def segments(points: Sequence[tuple[int, float]]) -> list[tuple[list[tuple[int, float]], bool]]:
    """Splits a series (file order) into lines: (points, abandoned).

    After a rollback a run redoes steps it had logged, so a step can appear twice. Both passes
    are drawn, in file order, with the line broken where the step goes backwards: keeping only
    the last record per step would hide the spike that caused the rollback, which is what one
    looks for in the plot. A point is abandoned when a later point has a step at or before its
    own (the run went back and redid it); abandoned stretches are drawn faded.
    """
    abandoned, later_min = [], math.inf
    for step, _ in reversed(points):
        abandoned.append(step >= later_min)
        later_min = min(later_min, step)
    abandoned.reverse()
    lines: list[tuple[list[tuple[int, float]], bool]] = []
    for point, faded in zip(points, abandoned, strict=True):
        if lines:
            current, current_faded = lines[-1]
            if point[0] > current[-1][0] and faded == current_faded:
                current.append(point)
                continue
            if point[0] > current[-1][0]:  # same pass, kept -> abandoned: join the two lines
                lines.append(([current[-1], point], faded))
                continue
        lines.append(([point], faded))
    return lines


def run_labels(runs: Sequence[metrics_log.RunMetrics]) -> list[str]:
    """The workdirs' folder names; the workdirs as given where two names clash."""
    names = [run.name for run in runs]
    if len(set(names)) < len(names):
        return [run.workdir for run in runs]
    return names


def _pyplot():
    """pyplot on the Agg backend: files only, no display needed (pods, CI, ssh sessions)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def figure_for(runs: Sequence[metrics_log.RunMetrics]):
    """A matplotlib Figure of `runs`: one axis per `panels_for` panel, titled with the panel's
    title, in order."""
    from matplotlib import ticker
    from matplotlib.lines import Line2D

    plt = _pyplot()

    panels = panels_for(runs)
    if not panels:
        raise ValueError("no metric records to plot in " + ", ".join(r.workdir for r in runs))
    columns = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(7 * columns, 3.2 * rows), sharex=True, squeeze=False
    )
    labels = run_labels(runs)
    event_kinds: list[str] = []
    for axis, panel in zip(axes.flat, panels, strict=False):
        values = []
        for index, run in enumerate(runs):
            for series, (key, source) in enumerate(panel.keys):
                label = f"{labels[index]}: {source}" if source else labels[index]
                style = _SOURCE_STYLES[series % len(_SOURCE_STYLES)]
                points = run.series(key)
                values.extend(value for _, value in points)
                for number, (line, faded) in enumerate(segments(points)):
                    axis.plot(
                        *zip(*line, strict=True),
                        color=f"C{index}",
                        linestyle=style,
                        marker="." if panel.markers else None,
                        alpha=0.35 if faded else 1.0,
                        label=label if number == 0 and len(panel.keys) > 1 else None,
                    )
            for event in run.events:
                kind = str(event["event"])
                if kind not in event_kinds:
                    event_kinds.append(kind)
                linestyle, linewidth = EVENT_STYLES.get(kind, OTHER_EVENT)
                axis.axvline(
                    event["step"],
                    color=f"C{index}",
                    linestyle=linestyle,
                    linewidth=linewidth,
                    alpha=0.7,
                )
        if panel.log and values and min(values) > 0:
            axis.set_yscale("log")
            # Plain numbers: a loss axis spans less than a decade, where matplotlib's default
            # labels read "4x10^0".
            plain = ticker.FuncFormatter(lambda value, _: f"{value:g}")
            axis.yaxis.set_major_formatter(plain)
            axis.yaxis.set_minor_formatter(plain)
        axis.set_title(panel.title)
        axis.set_ylabel(panel.ylabel)
        axis.grid(alpha=0.3)
        if len(panel.keys) > 1:
            axis.legend(fontsize="small")
    for axis in axes.flat[len(panels) :]:
        axis.set_visible(False)
    for column in range(columns):  # the lowest panel of each column shows the steps
        lowest = [axis for axis in axes[:, column] if axis.get_visible()][-1]
        lowest.tick_params(labelbottom=True)
        lowest.set_xlabel("step")
    handles = [Line2D([], [], color=f"C{i}", label=label) for i, label in enumerate(labels)]
    for kind in event_kinds:
        linestyle, linewidth = EVENT_STYLES.get(kind, OTHER_EVENT)
        handles.append(
            Line2D([], [], color="black", linestyle=linestyle, linewidth=linewidth, label=kind)
        )
    figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False)
    figure.tight_layout(rect=(0, 0.04 + 0.01 * (len(handles) // 6), 1, 1))
    return figure


def plot_metrics(workdirs: Sequence[str], output: str | None = None) -> list[str]:
    """Writes the PNG of `workdirs` (default output: FIRST/training_metrics.png) and returns the
    panel titles, in order.

    Raises:
      FileNotFoundError: a workdir without metrics.jsonl.
      ValueError: a damaged metrics.jsonl, or nothing to plot.
    """
    if not workdirs:
        raise ValueError("give at least one workdir.")
    runs = [metrics_log.read(workdir) for workdir in workdirs]
    figure = figure_for(runs)
    titles = [axis.get_title() for axis in figure.axes if axis.get_visible()]
    # Written through epath from memory: a gs:// output is one upload, a local one a plain file.
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    _pyplot().close(figure)
    target = paths.resolve(output) if output else paths.resolve(workdirs[0]) / OUTPUT_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(buffer.getvalue())
    return titles


def main(argv: list[str]) -> None:
    workdirs = argv[1:]
    try:
        plot_metrics(workdirs, _OUTPUT.value)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
    print(_OUTPUT.value or os.path.join(workdirs[0], OUTPUT_NAME))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.tool_flags_parser(_FLAGS, __doc__))
