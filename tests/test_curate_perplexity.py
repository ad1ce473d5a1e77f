"""Perplexity filter: a tiny scorer trained here prefers text like its training data."""

import json
import random
import string

import pytest

from jaxpretrain import config as config_lib
from jaxpretrain import train
from jaxpretrain.curate import filters
from jaxpretrain.curate import prepare as prepare_lib
from jaxpretrain.curate.document import Document

_SENTENCES = [
    "The river flows through the old town and past the market square.",
    "People walk along the river in the evening when the air is cool.",
    "The market sells bread, fish and fresh fruit every morning.",
    "In the old town the streets are narrow and the houses are small.",
]


@pytest.fixture(scope="module")
def scorer_workdir(tmp_path_factory):
    """A run directory with config.json, prepared data and a checkpoint after 30 steps."""
    corpus = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    for index in range(40):
        lines = [rng.choice(_SENTENCES) for _ in range(12)]
        (corpus / f"page_{index:02d}.txt").write_text(" ".join(lines) + "\n")
    workdir = tmp_path_factory.mktemp("scorer")
    data_dir = workdir / "data"
    prepare_lib.prepare(str(data_dir), str(corpus), vocab_size=512, shard_bytes=1 << 30)

    config = config_lib.default_config()
    config.model.update(
        num_layers=1,
        embed_dim=32,
        num_heads=2,
        num_kv_heads=1,
        head_dim=16,
        mlp_dim=64,
        max_seq_len=64,
        dtype="float32",
    )
    config.train.update(steps=30, batch_size=8, seq_len=64, lr=1e-2, warmup_steps=3, log_every=10)
    config.checkpoint.update(every=30, max_to_keep=1)
    config.eval.update(every=0, steps=1)
    config.data.dir = str(data_dir)
    config.mesh.update(data=1, fsdp=1)
    config_lib.write_config_json(config, str(workdir))
    train.train_and_evaluate(config, str(workdir), devices=__import__("jax").devices()[:1])
    return str(workdir)


def _doc(text, doc_id="d"):
    return Document(doc_id, text)


def test_text_like_the_training_data_scores_lower_than_character_soup(scorer_workdir):
    scorer = filters.get("perplexity", workdir=scorer_workdir, max_tokens=48, batch_size=4)
    rng = random.Random(1)
    soup = "".join(rng.choice(string.ascii_letters + string.punctuation + " ") for _ in range(300))
    familiar = " ".join(_SENTENCES[::-1])
    scores = scorer.score_batch([_doc(familiar), _doc(soup), _doc(_SENTENCES[0])])
    familiar_scores, soup_scores, short_scores = scores
    assert familiar_scores["tokens"] == 48.0  # truncated to max_tokens
    assert 0 < short_scores["tokens"] < 48
    assert familiar_scores["perplexity"] * 5 < soup_scores["perplexity"]
    assert familiar_scores["nll_per_byte"] < soup_scores["nll_per_byte"]
    # One document at a time gives the same numbers as a batch (padding rows do not leak).
    assert scorer.score(_doc(soup)) == pytest.approx(soup_scores, rel=1e-5)
    json.dumps(familiar_scores)  # plain floats, storable next to the curated data


def test_threshold_decides_both_sides(scorer_workdir):
    scorer = filters.get("perplexity", workdir=scorer_workdir, max_tokens=48)
    familiar = scorer.score(_doc(" ".join(_SENTENCES)))["perplexity"]
    between = filters.get(
        "perplexity", workdir=scorer_workdir, max_tokens=48, max_perplexity=familiar * 2
    )
    assert between.keep({"perplexity": familiar, "tokens": 10.0}) == (True, None)
    assert between.keep({"perplexity": familiar * 3, "tokens": 10.0}) == (
        False,
        "perplexity:too_perplexing",
    )
    assert between.keep({"perplexity": 0.0, "tokens": 0.0}) == (False, "perplexity:no_tokens")
    result = filters.apply_filters(_doc(" ".join(_SENTENCES)), [between])
    assert result.kept and result.scores["perplexity.perplexity"] == pytest.approx(familiar)


def test_missing_workdir_or_checkpoint_is_one_clear_error(tmp_path, scorer_workdir):
    missing = tmp_path / "no_run"
    with pytest.raises(FileNotFoundError, match=f"{missing}.*has no config.json"):
        filters.get("perplexity", workdir=str(missing)).score(_doc("text"))

    no_checkpoint = tmp_path / "untrained"
    no_checkpoint.mkdir()
    with open(f"{scorer_workdir}/config.json") as f:
        (no_checkpoint / "config.json").write_text(f.read())
    with pytest.raises(FileNotFoundError, match=f"{no_checkpoint}.*checkpoints"):
        filters.get("perplexity", workdir=str(no_checkpoint)).score(_doc("text"))
    with pytest.raises(ValueError, match="workdir=''"):
        filters.get("perplexity")


def test_a_run_of_another_objective_is_refused_as_scorer(tmp_path, scorer_workdir):
    with open(f"{scorer_workdir}/config.json") as f:
        config = json.load(f)
    config["objective"]["name"] = "mlm"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="holds a 'mlm' run"):
        filters.get("perplexity", workdir=str(tmp_path)).score(_doc("text"))
