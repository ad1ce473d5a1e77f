"""A gs:// workdir end to end, against a local GCS emulator: the main job reads prepared data
from gs://, trains, checkpoints, resumes, evaluates and dry-runs with every file on the object
store and nothing on local disk.

The emulator (tests/gcs_emulator.py) serves GCS's JSON API on localhost. It is reached by the
three clients a real gs:// run uses: epath through gcsfs (metadata, metrics, manifest,
tokenizer), TensorStore's GCS driver (Orbax's arrays) and google-cloud-cpp (ArrayRecord shards).
"""

import ast
import json
import os
import random
import string

import gcs_emulator  # pytest puts tests/ on sys.path
import gcsfs
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath
from test_main import TINY_CONFIG, run_main

from jaxpretrain import checkpoint, paths

BUCKET = "bucket"


@pytest.fixture(scope="module")
def gcs():
    """A GCS emulator on localhost; this process and the jobs it starts talk to it."""
    with gcs_emulator.serving(BUCKET) as environment:
        yield environment


def storage():
    """A gcsfs client with no listing cache: this process must see what the jobs wrote."""
    return gcsfs.GCSFileSystem(skip_instance_cache=True, use_listings_cache=False)


def read_records(path: str) -> list[dict]:
    return [json.loads(line) for line in storage().cat_file(path).decode().splitlines()]


def names(path: str) -> list[str]:
    return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in storage().ls(path))


def test_the_main_job_runs_resumes_and_evaluates_in_a_gs_workdir(gcs, data_dir, tmp_path):
    (tmp_path / "tiny.py").write_text(TINY_CONFIG)
    remote_data = f"gs://{BUCKET}/data/stdlib"
    storage().put(f"{data_dir}/", remote_data, recursive=True)
    workdir = f"gs://{BUCKET}/runs/tiny"
    args = ["--config=tiny.py", f"--workdir={workdir}", f"--config.data.dir={remote_data}"]
    first = run_main(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "sample: " in first.stdout
    config = json.loads(storage().cat_file(f"{workdir}/config.json"))
    assert config["train"]["steps"] == 4
    assert [r["step"] for r in read_records(f"{workdir}/metrics.jsonl")] == [0, 2, 4]
    assert any(name.startswith("events.out.tfevents") for name in names(workdir))
    assert names(f"{workdir}/checkpoints") == ["2", "4"]
    assert "files.json" in names(f"{workdir}/checkpoints/4")
    # Nothing went to local disk under the URL's name (`./gs:/bucket/...`).
    assert sorted(os.listdir(tmp_path)) == ["tiny.py"]

    second = run_main(*args, "--config.train.steps=6", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from checkpoint at step 4" in second.stderr
    records = read_records(f"{workdir}/metrics.jsonl")
    assert [r["step"] for r in records if "event" not in r] == [0, 2, 4, 6]
    assert [r["event"] for r in records if "event" in r] == ["resume"]
    assert names(f"{workdir}/checkpoints") == ["2", "4", "6"]

    evaluated = run_main(*args, "--mode=eval", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = ast.literal_eval(evaluated.stdout.strip().splitlines()[-1])
    assert metrics["eval/loss"] == pytest.approx(records[-1]["eval/loss"], rel=1e-5)

    dry = run_main(*args, "--mode=dry_run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert json.loads(storage().cat_file(f"{workdir}/dry_run.json"))["parameters"] > 0
    assert sorted(os.listdir(tmp_path)) == ["tiny.py"]


def test_a_remote_data_dir_without_prepared_data_is_prepared_there(gcs, tmp_path):
    """Curation writes to gs:// too: the main job prepares its data into the bucket (the
    curation work goes to local scratch and is deleted), then trains on it."""
    (tmp_path / "tiny.py").write_text(TINY_CONFIG)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = random.Random(0)
    for index in range(12):
        words = ("".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 8)))
                 for _ in range(400))  # fmt: skip
        (corpus / f"doc{index}.txt").write_text(" ".join(words))
    workdir = f"gs://{BUCKET}/runs/prepares"
    result = run_main("--config=tiny.py", f"--workdir={workdir}", "--config.data.source=corpus",
                      cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads(storage().cat_file(f"{workdir}/data/manifest.json"))
    assert sum(shard["documents"] for shard in manifest["splits"]["train"]["shards"]) > 0
    assert "tokenizer.model" in names(f"{workdir}/data")
    assert names(f"{workdir}/checkpoints") == ["2", "4"]
    assert sorted(os.listdir(tmp_path)) == ["corpus", "tiny.py"]


def test_a_corrupt_newest_gs_checkpoint_is_set_aside(gcs):
    directory = f"gs://{BUCKET}/corrupt_case/checkpoints"
    state = {"weights": jnp.full((64, 64), 1.0, jnp.float32)}
    checkpointer = checkpoint.Checkpointer(directory, max_to_keep=5)
    for step in (1, 2):
        checkpointer.save(step, {"weights": state["weights"] * step}, {"position": step}, {})
    checkpointer.close()
    step_dir = paths.resolve(directory) / "2"
    recorded = json.loads((step_dir / "files.json").read_text())
    largest = max(recorded, key=recorded.get)
    (step_dir / largest).write_bytes((step_dir / largest).read_bytes()[:-10])  # a torn upload

    checkpointer = checkpoint.Checkpointer(directory, max_to_keep=5)
    abstract = {"weights": jnp.zeros((64, 64), jnp.float32)}
    try:
        restored = checkpointer.restore(abstract)
    finally:
        checkpointer.close()
    assert restored.step == 1
    np.testing.assert_array_equal(restored.state["weights"], np.ones((64, 64)))
    set_aside = list(epath.Path(f"gs://{BUCKET}/corrupt_case/checkpoints_corrupt").iterdir())
    assert [path.name.split("-")[0] for path in set_aside] == ["2"]
    assert sorted(name for name, _ in paths.files_under(set_aside[0])) == sorted(
        [*recorded, "files.json"]
    )
    assert not step_dir.exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--workdir=s3://bucket/run", "--workdir='s3://bucket/run': only local paths and gs://"),
        ("--config.data.dir=s3://bucket/data", "data.dir='s3://bucket/data': only local paths"),
    ],
)
def test_an_unsupported_object_store_is_refused_before_anything_is_written(
    tmp_path, override, message
):
    (tmp_path / "tiny.py").write_text(TINY_CONFIG)
    workdir = override if override.startswith("--workdir") else "--workdir=run"
    result = run_main("--config=tiny.py", workdir, override, cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]
    assert sorted(os.listdir(tmp_path)) == ["tiny.py"]
