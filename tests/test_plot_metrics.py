"""tools/plot_metrics.py on metrics.jsonl files written by hand: the PNG it writes, which panels
appear when, the event marks, and how a step logged twice (a rollback) is drawn."""

import importlib.util
import json
import math
import pathlib
import subprocess
import sys

import gcs_emulator  # pytest puts tests/ on sys.path
import pytest

from jaxpretrain import metrics_log

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_TOOL = _ROOT / "tools" / "plot_metrics.py"
SOURCES = ("code", "web")


def load_tool():
    spec = importlib.util.spec_from_file_location("plot_metrics", _TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


tool = load_tool()


def train_record(step: int, loss: float, mfu: float | None) -> dict:
    return {
        "step": step,
        "loss": loss,
        "learning_rate": 1e-3 * min(1.0, step / 50),
        "grad_norm": 2.0 / math.sqrt(step),
        "tokens_per_second": 5000.0 + step,
        "mfu": mfu,
        "packing_efficiency": 0.98,
    }


def eval_record(step: int, loss: float, per_source: bool) -> dict:
    record = {
        "step": step,
        "eval/loss": loss,
        "eval/perplexity": math.exp(loss),
        "eval/bits_per_byte": loss / math.log(2) / 4,
    }
    if per_source:
        for offset, source in enumerate(SOURCES):
            record[f"eval/{source}/loss"] = loss + offset
            record[f"eval/{source}/perplexity"] = math.exp(loss + offset)
            record[f"eval/{source}/bits_per_byte"] = (loss + offset) / math.log(2) / 4
    return record


def write_run(path: pathlib.Path, records: list[dict]) -> str:
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture
def runs(tmp_path):
    """Run `spiky`: a null mfu throughout, per-source eval, an anomaly at step 130, a rollback to
    step 100 (steps 110-140 logged twice), then a preemption and a resume at 160. Run `steady`:
    a measured mfu, overall eval only, one resume event."""
    spiky = [train_record(step, 5.0 - step / 100, None) for step in range(10, 150, 10)]
    spiky.insert(5, eval_record(50, 4.6, per_source=True))
    spiky.insert(11, eval_record(100, 4.1, per_source=True))
    spiky.append({"step": 130, "event": "anomaly", "kinds": ["loss_spike"], "update": "applied"})
    spiky.append({"step": 140, "event": "rollback", "to_step": 100})
    spiky += [train_record(step, 4.0 - step / 200, None) for step in range(110, 170, 10)]
    spiky.append({"step": 160, "event": "preempted"})
    spiky.append({"step": 160, "event": "resume", "processes": 1, "devices": 8})
    spiky += [train_record(step, 3.2, None) for step in (170, 180)]
    steady = [train_record(step, 5.0 - step / 80, 0.41) for step in range(10, 200, 10)]
    steady.append(eval_record(100, 4.0, per_source=False))
    steady.insert(3, {"step": 30, "event": "resume", "processes": 1, "devices": 8})
    return write_run(tmp_path / "spiky", spiky), write_run(tmp_path / "steady", steady)


def png_size(path: pathlib.Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def axis_titled(figure, title: str):
    (axis,) = [axis for axis in figure.axes if axis.get_title() == title]
    return axis


def event_marks(axis) -> list:
    """The vertical lines of an axis: axvline draws in data x and axes y (0 to 1)."""
    return [line for line in axis.get_lines() if line.get_transform() == axis.get_xaxis_transform()]


OVERALL = [
    "loss",
    "learning rate",
    "gradient norm",
    "throughput",
    "MFU",
    "validation loss",
    "validation perplexity",
    "validation bits per byte",
]
PER_SOURCE = [
    "validation loss per source",
    "validation perplexity per source",
    "validation bits per byte per source",
]


def test_function_writes_a_png_with_every_panel(runs, tmp_path):
    output = tmp_path / "out" / "both.png"
    titles = tool.plot_metrics(list(runs), str(output))
    assert titles == OVERALL + PER_SOURCE
    width, height = png_size(output)
    # 2 columns of 7 in, 3.2 in a row at 100 dpi; 11 panels -> 6 rows.
    assert (width, height) == (1400, 6 * 320)


def test_panels_appear_only_with_their_metrics(runs):
    spiky, steady = runs
    # steady has no per-source keys; spiky's mfu is null throughout.
    assert tool.plot_metrics([steady]) == OVERALL
    assert tool.plot_metrics([spiky]) == [t for t in OVERALL if t != "MFU"] + PER_SOURCE
    assert png_size(pathlib.Path(steady) / "training_metrics.png") == (1400, 4 * 320)


def test_event_marks_one_per_event_with_a_style_per_kind(runs):
    figure = tool.figure_for([metrics_log.read(workdir) for workdir in runs])
    for title in ("loss", "validation loss per source"):  # every panel carries the marks
        marks = event_marks(axis_titled(figure, title))
        # spiky: anomaly 130, rollback 140, preempted 160, resume 160; steady: resume 30.
        assert sorted((line.get_xdata()[0], line.get_color()) for line in marks) == [
            (30, "C1"),
            (130, "C0"),
            (140, "C0"),
            (160, "C0"),
            (160, "C0"),
        ]
        styles = {(line.get_linestyle(), line.get_linewidth()) for line in marks}
        assert len(styles) == 4  # anomaly, rollback, preempted, resume: four distinct styles
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert legend == ["spiky", "steady", "anomaly", "rollback", "preempted", "resume"]


def test_rollback_breaks_the_line_and_fades_the_abandoned_steps(runs):
    spiky, _ = runs
    figure = tool.figure_for([metrics_log.read(spiky)])
    lines = [line for line in axis_titled(figure, "loss").get_lines() if line not in event_marks(
        axis_titled(figure, "loss"))]  # fmt: skip
    steps = [list(line.get_xdata()) for line in lines]
    # Kept 10-100; the abandoned 110-140 faded (joined to 100); the redone 110-180.
    assert steps == [
        list(range(10, 110, 10)),
        [100, 110, 120, 130, 140],
        list(range(110, 190, 10)),
    ]
    assert [line.get_alpha() for line in lines] == [1.0, 0.35, 1.0]


def test_segments_of_a_series_logged_twice():
    points = [(10, 1.0), (20, 2.0), (30, 3.0), (20, 4.0), (30, 5.0)]
    assert tool.segments(points) == [
        ([(10, 1.0)], False),
        ([(10, 1.0), (20, 2.0), (30, 3.0)], True),
        ([(20, 4.0), (30, 5.0)], False),
    ]


def test_command_line(runs, tmp_path):
    output = tmp_path / "cli.png"
    done = subprocess.run(
        [sys.executable, str(_TOOL), *runs, f"--output={output}"],
        capture_output=True,
        text=True,
        cwd=_ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(output)
    assert png_size(output) == (1400, 6 * 320)

    missing = subprocess.run(
        [sys.executable, str(_TOOL), str(tmp_path / "nowhere")], capture_output=True, text=True
    )
    assert missing.returncode == 1
    assert missing.stderr.strip().count("\n") == 0
    assert "metrics.jsonl: no such file" in missing.stderr


def test_a_gs_workdir_is_read_and_written_through_the_path_library(runs):
    import gcsfs

    # serving() also drops gcsfs's cached instances, epath's among them, which would point at
    # another test's emulator.
    with gcs_emulator.serving("bucket"):
        storage = gcsfs.GCSFileSystem(skip_instance_cache=True, use_listings_cache=False)
        spiky, _ = runs
        storage.pipe_file(
            "bucket/spiky/metrics.jsonl", (pathlib.Path(spiky) / "metrics.jsonl").read_bytes()
        )
        titles = tool.plot_metrics(["gs://bucket/spiky"])
        assert "validation loss per source" in titles
        png = storage.cat_file("bucket/spiky/training_metrics.png")
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert int.from_bytes(png[16:20], "big") == 1400
