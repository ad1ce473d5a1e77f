"""What a run logs about itself: throughput over training time in real tokens, and validation
of every source of a data mixture."""

import itertools
import json
import math
import pathlib
import random
import shutil
import string
import struct
import time

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
from test_train import tiny_config  # pytest puts tests/ on sys.path

from jaxpretrain import checkpoint, steps, train

PAUSE_SECONDS = 4.0


def read_metrics(workdir) -> list[dict]:
    with open(workdir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if "event" not in line]


@pytest.fixture(scope="module")
def short_documents_dir(tmp_path_factory):
    """Prepared data of short documents, so that packed rows end in padding."""
    from jaxpretrain.curate import prepare

    corpus = tmp_path_factory.mktemp("short_corpus")
    rng = random.Random(0)
    for index in range(300):
        words = (
            "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 8))) for _ in range(60)
        )
        (corpus / f"doc{index}.txt").write_text(
            " ".join(itertools.islice(words, rng.randint(3, 25)))
        )
    path = tmp_path_factory.mktemp("short_data")
    prepare.prepare(
        str(path),
        str(corpus),
        vocab_size=512,
        shard_bytes=1 << 30,
        validation_fraction=0.3,
        progress=False,
    )
    return str(path)


@pytest.mark.slow
def test_throughput_leaves_out_eval_and_saves_and_counts_real_tokens(
    short_documents_dir, tmp_path, monkeypatch
):
    """Evaluation and checkpoint saves that take seconds must not show in tokens/s."""
    evaluation_sums, save = steps.evaluation_sums, checkpoint.Checkpointer.save

    def slow_evaluation_sums(*args, **kwargs):
        time.sleep(PAUSE_SECONDS)
        return evaluation_sums(*args, **kwargs)

    def slow_save(self, *args, **kwargs):
        time.sleep(PAUSE_SECONDS)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(steps, "evaluation_sums", slow_evaluation_sums)
    monkeypatch.setattr(checkpoint.Checkpointer, "save", slow_save)
    config = tiny_config(short_documents_dir, steps=6, log_every=1)
    config.eval.update(every=2, steps=1)
    config.checkpoint.update(every=3)
    train.train_and_evaluate(config, str(tmp_path))

    records = {r["step"]: r for r in read_metrics(tmp_path) if "loss" in r}
    assert sorted(records) == [1, 2, 3, 4, 5, 6]
    # Step 1 is the compiling step, which is not timed: its rates are unknown, not 0.
    assert records[1]["tokens_per_second"] is None
    assert records[1]["padded_tokens_per_second"] is None
    tokens_per_step = config.train.batch_size * config.train.seq_len
    for step in range(2, 7):
        record = records[step]
        # Each interval is one step; with a pause inside, it would take > PAUSE_SECONDS.
        seconds = tokens_per_step / record["padded_tokens_per_second"]
        assert seconds < PAUSE_SECONDS / 2, (step, seconds)
        # Non-pad tokens over the same time: the ratio is the batch's share of real tokens.
        ratio = record["tokens_per_second"] / record["padded_tokens_per_second"]
        assert ratio == pytest.approx(record["packing_efficiency"], rel=1e-6)
    assert min(records[step]["packing_efficiency"] for step in range(2, 7)) < 0.99


@pytest.fixture(scope="module")
def mixture_dirs(short_documents_dir, tmp_path_factory):
    """The short documents as a two-source mixture (each split's first half of documents is
    `code`, the rest `docs`), and a directory holding only `docs`: the same documents, as a
    single source."""
    source = pathlib.Path(short_documents_dir)
    manifest = json.loads((source / "manifest.json").read_text())
    root = tmp_path_factory.mktemp("mixture")
    mixture, docs_only = root / "mixture", root / "docs_only"
    for directory in (mixture, docs_only):
        directory.mkdir()
        shutil.copy(source / manifest["tokenizer"], directory / manifest["tokenizer"])
    splits = {}
    for split, info in manifest["splits"].items():
        (shard,) = info["shards"]
        reader = ArrayRecordReader(str(source / shard["file"]))
        records = reader.read_all()
        reader.close()
        halves = {"code": records[: len(records) // 2], "docs": records[len(records) // 2 :]}
        splits[split] = []
        for name, documents in halves.items():
            file = f"{name}/{split}-00000-of-00001.array_record"
            for directory in (mixture, docs_only):
                (directory / name).mkdir(exist_ok=True)
                writer = ArrayRecordWriter(str(directory / file), "group_size:1")
                for document in documents:
                    writer.write(document)
                writer.close()
            tokens = sum(len(document) // 4 for document in documents)
            splits[split].append(
                {"file": file, "source": name, "documents": len(documents), "tokens": tokens}
            )
    sources = [{"name": "code", "weight": 0.75}, {"name": "docs", "weight": 0.25}]
    mixed = {**manifest, "sources": sources, "splits": {}}
    mixed["splits"] = {split: {"shards": shards} for split, shards in splits.items()}
    (mixture / "manifest.json").write_text(json.dumps(mixed))
    alone = {**mixed, "sources": [{"name": "docs", "weight": 1.0}]}
    alone["splits"] = {
        split: {"shards": [s for s in shards if s["source"] == "docs"]}
        for split, shards in splits.items()
    }
    (docs_only / "manifest.json").write_text(json.dumps(alone))
    return mixture, docs_only, mixed


@pytest.mark.slow
def test_every_source_of_a_mixture_is_validated(mixture_dirs, tmp_path):
    mixture, docs_only, manifest = mixture_dirs
    config = tiny_config(str(mixture), steps=2)
    config.eval.update(every=2, steps=-1)
    result = train.train_and_evaluate(config, str(tmp_path / "run"))
    final = result.history[-1]
    for source in ("code", "docs"):
        for metric in ("loss", "perplexity", "bits_per_byte"):
            assert math.isfinite(final[f"eval/{source}/{metric}"])

    # A source's figures are those of its documents alone: evaluate the same parameters on
    # a prepared directory holding only `docs`.
    alone_config = tiny_config(str(docs_only), steps=2)
    alone_config.eval.steps = -1
    exp = train.build_experiment(alone_config, str(tmp_path / "x"))
    eval_step = steps.make_eval_step(exp.layout, exp.objective, exp.batch_sharding)
    alone = exp.evaluate(eval_step, result.state["params"], exp.token_bytes())
    assert final["eval/docs/loss"] == pytest.approx(alone["eval/loss"], rel=1e-5)
    assert final["eval/docs/bits_per_byte"] == pytest.approx(alone["eval/bits_per_byte"], rel=1e-5)

    # Overall: the sources weighed by their share of the training tokens.
    train_shards = manifest["splits"]["train"]["shards"]
    weights = {"code": 0.75, "docs": 0.25}
    mean_length = {s["source"]: s["tokens"] / s["documents"] for s in train_shards}
    raw = {name: weights[name] * mean_length[name] for name in weights}
    share = {name: value / sum(raw.values()) for name, value in raw.items()}
    expected = sum(share[name] * final[f"eval/{name}/loss"] for name in share)
    assert final["eval/loss"] == pytest.approx(expected, rel=1e-6)
    assert final["eval/perplexity"] == pytest.approx(math.exp(expected), rel=1e-6)
    assert not np.isclose(share["code"], 0.75)  # token shares are not the document weights


def wandb_history(run_file: pathlib.Path) -> list[dict]:
    """The `history` records of a W&B run file (`run-<id>.wandb`): a 7-byte header, then
    LevelDB-log framed records (32 KiB blocks; 7-byte chunk headers: crc32, length, type) of
    protobuf `Record`s."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    block, position, pending, rows = 32768, 7, b"", []
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        length, kind = struct.unpack_from("<HB", data, position + 4)
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {
                        item.key or "/".join(item.nested_key): json.loads(item.value_json)
                        for item in record.history.item
                    }
                )
    return rows


@pytest.mark.slow
def test_wandb_gets_the_metrics_and_events_and_a_resume_continues_its_run(
    data_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = tiny_config(data_dir, steps=4, log_every=2)
    config.monitor.wandb.update(enabled=True, mode="offline", project="tests", tags="a,b")
    workdir = tmp_path / "run"
    train.train_and_evaluate(config, str(workdir))
    config.train.steps = 6
    train.train_and_evaluate(config, str(workdir))

    runs = sorted((workdir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 2
    assert len({run.name for run in runs}) == 1  # the same run id: the resume continues it
    logged = [row for run in runs for row in wandb_history(run)]
    records = read_metrics(workdir)
    losses = {row["step"]: row["loss"] for row in logged if "loss" in row}
    assert losses == {r["step"]: r["loss"] for r in records if "loss" in r}
    assert sorted(losses) == [2, 3, 4, 6]  # every 2 steps, and at the save of step 3
    resumes = [row["step"] for row in logged if "events/resume" in row]
    assert resumes == [4]


def test_wandb_enabled_without_the_package_is_one_clear_error(data_dir, monkeypatch):
    import importlib.util

    from jaxpretrain import config as config_lib

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "wandb" else find_spec(name)
    )
    config = tiny_config(data_dir)
    config.monitor.wandb.enabled = True
    with pytest.raises(config_lib.ConfigError, match="pip install wandb"):
        config_lib.validate(config, 8)
