"""tools/compare_objectives.py: its outputs against metrics.jsonl and train.evaluate, resume
without retraining, and the pseudo-log-likelihood scorer against a numpy computation."""

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from jaxpretrain import config as config_lib
from jaxpretrain import steps, train

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_TOOL = _ROOT / "tools" / "compare_objectives.py"
# configs/tiny_clm.py shrunk to seconds: 2 layers, d=64, seq 64, 60 documents, 4 steps.
TINY = {
    "model.num_layers": 2,
    "model.embed_dim": 64,
    "model.num_heads": 4,
    "model.num_kv_heads": 2,
    "model.head_dim": 16,
    "model.mlp_dim": 128,
    "model.max_seq_len": 64,
    "train.seq_len": 64,
    "train.batch_size": 8,
    "train.log_every": 2,
    "train.warmup_steps": 1,
    "eval.steps": 2,
    "data.max_documents": 60,
    "data.vocab_size": 512,
    "data.shard_bytes": 1 << 30,
}
TOKENS = 2000  # 4 steps of 8 x 64 positions: ceil(2000 / 512)


def load_tool():
    spec = importlib.util.spec_from_file_location("compare_objectives", _TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(output, *extra: str) -> subprocess.CompletedProcess:
    """The tool as a user runs it: one CPU device (no XLA_FLAGS)."""
    env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
    return subprocess.run(
        [
            sys.executable,
            str(_TOOL),
            "--config=configs/tiny_clm.py",
            "--objectives=causal_lm",
            f"--output={output}",
            *(f"--config.{key}={value}" for key, value in TINY.items()),
            *extra,
        ],
        capture_output=True,
        text=True,
        cwd=_ROOT,
        env=env,
        timeout=600,
    )


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    output = tmp_path_factory.mktemp("compare")
    result = run_tool(output, f"--tokens={TOKENS}")
    assert result.returncode == 0, result.stderr[-3000:]
    return output


@pytest.mark.slow
def test_outputs_agree_with_metrics_and_the_reference_score(compared):
    comparison = json.loads((compared / "comparison.json").read_text())
    assert comparison["steps"] == 4
    assert comparison["trained_tokens"] == 4 * 8 * 64
    [row] = comparison["objectives"]
    records = read_jsonl(compared / "causal_lm" / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 2, 4]
    last = records[-1]
    assert row["final_train_loss"] == last["loss"]
    assert row["validation_loss"] == last["eval/loss"]
    assert row["loss_token_fraction"] == pytest.approx(
        (records[1]["loss_token_fraction"] + last["loss_token_fraction"]) / 2
    )
    # Reference: the training loop's train.evaluate of the step-4 parameters on the same held-out
    # batches. The tool restores them from the checkpoint and scores them as causal_lm rows.
    assert row["held_out"]["method"] == "causal"
    assert row["held_out"]["bits_per_byte"] == pytest.approx(last["eval/bits_per_byte"], rel=1e-6)

    table = (compared / "comparison.md").read_text()
    assert "**2,048 trained tokens**" in table
    assert (
        f"| causal_lm | {last['loss']:.3f} | {last['eval/loss']:.3f} | "
        f"{row['tokens_per_second']:,.0f} | 100.0% | 100.0% | "
        f"{last['eval/bits_per_byte']:.3f} |"
    ) in table
    png = (compared / "comparison.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


@pytest.mark.slow
def test_rerun_does_not_retrain_and_other_settings_are_refused(compared):
    workdir = compared / "causal_lm"

    def snapshot():
        return {
            str(path.relative_to(workdir)): (path.stat().st_mtime_ns, path.stat().st_size)
            for path in workdir.rglob("*")
        }

    before, metrics = snapshot(), (workdir / "metrics.jsonl").read_bytes()
    first = json.loads((compared / "comparison.json").read_text())["objectives"]
    rerun = run_tool(compared, f"--tokens={TOKENS}")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "not retraining" in rerun.stderr
    assert snapshot() == before
    assert (workdir / "metrics.jsonl").read_bytes() == metrics
    assert json.loads((compared / "comparison.json").read_text())["objectives"] == first

    # More tokens into the same directory would silently continue finished runs: refused.
    longer = run_tool(compared, f"--tokens={2 * TOKENS}")
    assert longer.returncode != 0
    assert "Traceback" not in longer.stderr
    last_line = longer.stderr.strip().splitlines()[-1]
    assert "differs in train.steps" in last_line and "new --output" in last_line
    assert snapshot() == before


@pytest.mark.slow
def test_pseudo_log_likelihood_equals_numpy_sum_of_masked_log_probabilities(compared):
    tool = load_tool()
    config = config_lib.load_config_file(_ROOT / "configs" / "tiny_clm.py")
    config.update_from_flattened_dict(TINY)
    config.data.dir = str(compared / "data")
    exp = train.build_experiment(config, str(compared), devices=jax.devices()[:1])
    trained = tool.restore_params(exp, str(compared / "causal_lm"), 4)
    # Spread the logits so that scoring the wrong position or an unmasked token shows.
    keys = iter(jax.random.split(jax.random.PRNGKey(0), len(jax.tree.leaves(trained))))
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(next(keys), p.shape), trained)
    eval_step = steps.make_eval_step(exp.layout, exp.objective, exp.batch_sharding)
    score = tool.held_out_score(exp, eval_step, params, pll_rows=3)

    model = nnx.merge(exp.layout.graphdef, params)
    rows = next(iter(exp.eval_batches()))
    token_bytes = exp.tokenizer.token_byte_lengths()
    log_prob_sum, scored, scored_bytes = 0.0, 0, 0
    for r in range(3):
        inputs_L, segments_L = rows["inputs"][r], rows["segment_ids"][r]
        positions_N = np.flatnonzero((segments_L > 0) & (token_bytes[inputs_L] > 0))
        n = len(positions_N)
        masked_NL = np.tile(inputs_L, (n, 1))
        masked_NL[np.arange(n), positions_N] = exp.manifest.special_ids.mask
        logits_NLV = model(
            masked_NL,
            np.tile(segments_L, (n, 1)),
            np.tile(rows["positions"][r], (n, 1)),
            np.tile(segments_L > 0, (n, 1)).astype(np.int32),
        )
        logits_NV = np.asarray(logits_NLV, np.float64)[np.arange(n), positions_N]
        log_probs_NV = logits_NV - logits_NV.max(axis=1, keepdims=True)
        log_probs_NV -= np.log(np.exp(log_probs_NV).sum(axis=1, keepdims=True))
        log_prob_sum += log_probs_NV[np.arange(n), inputs_L[positions_N]].sum()
        scored += n
        scored_bytes += token_bytes[inputs_L[positions_N]].sum()
    assert scored > 100
    assert score["method"] == "pseudo_log_likelihood"
    assert score["loss"] == pytest.approx(-log_prob_sum / scored, rel=1e-5)
    assert score["bits_per_byte"] == pytest.approx(
        -log_prob_sum / (math.log(2) * scored_bytes), rel=1e-5
    )


def test_throughput_and_token_shares_are_weighted_by_the_steps_each_record_covers():
    tool = load_tool()
    records = [
        {"step": 0, "eval/loss": 6.0},
        # The first interval holds only the compilation step: its throughput is logged as 0.
        {"step": 1, "loss": 5.0, "tokens_per_second": 0.0, "loss_token_fraction": 0.2,
         "packing_efficiency": 0.9},
        {"step": 4, "loss": 4.0, "tokens_per_second": 300.0, "loss_token_fraction": 0.4,
         "packing_efficiency": 1.0},
        {"step": 5, "loss": 3.0, "tokens_per_second": 100.0, "loss_token_fraction": 0.1,
         "packing_efficiency": 0.5, "eval/loss": 3.5},
    ]  # fmt: skip
    summary = tool.summarize_metrics(records)
    assert summary["final_train_loss"] == 3.0
    assert summary["validation_loss"] == 3.5
    assert summary["loss_token_fraction"] == pytest.approx((0.2 + 3 * 0.4 + 0.1) / 5)
    assert summary["packing_efficiency"] == pytest.approx((0.9 + 3 * 1.0 + 0.5) / 5)
    # 3 steps at 300 tokens/s and 1 at 100: 4 steps' tokens over 3/300 + 1/100 s.
    assert summary["tokens_per_second"] == pytest.approx(4 / (3 / 300 + 1 / 100))


def test_unknown_objective_is_refused_before_anything_is_written(tmp_path):
    tool = load_tool()
    config = config_lib.load_config_file(_ROOT / "configs" / "tiny_clm.py")
    with pytest.raises(KeyError, match="objective.name='nope' is unknown"):
        tool.compare(config, ["causal_lm", "nope"], TOKENS, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_every_inputs_to_targets_objective_goes_through_training_restore_and_scoring(tmp_path):
    result = run_tool(
        tmp_path, "--objectives=prefix_lm,span_corruption,ul2", "--tokens=1024", "--pll_rows=2"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    comparison = json.loads((tmp_path / "comparison.json").read_text())
    assert [row["objective"] for row in comparison["objectives"]] == [
        "prefix_lm",
        "span_corruption",
        "ul2",
    ]
    for row in comparison["objectives"]:
        last = read_jsonl(tmp_path / row["objective"] / "metrics.jsonl")[-1]
        assert last["step"] == 2 and row["validation_loss"] == last["eval/loss"]
        assert row["held_out"]["method"] == "causal"
        assert 0 < row["held_out"]["bits_per_byte"] < 20
        assert 0 < row["loss_token_fraction"] < row["packing_efficiency"] <= 1
