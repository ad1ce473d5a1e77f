"""Trains one model under several objectives on the same data and compute, and compares them.

    python tools/compare_objectives.py --objectives=causal_lm,mlm,prefix_lm,span_corruption,ul2 \
        --config=configs/tiny_clm.py --tokens=2000000 --output=runs/compare

The data is prepared once in OUTPUT/data (or `--config.data.dir`, when set) as the main job
prepares it; each objective then trains the config's model in its own ordinary workdir
OUTPUT/<objective> for ceil(tokens / (batch_size x seq_len)) steps. "Trained tokens" are row
positions processed, padding included: the same compute for every objective, whatever share of
them carries loss. Rerunning the command resumes: finished runs are not retrained, interrupted
ones continue from their last checkpoint.

Written to OUTPUT: comparison.json, comparison.md (a Markdown table) and comparison.png (loss
curves). Per objective: final training loss and validation loss (each on its own task, so not
comparable across objectives), tokens/s, the shares of positions that carry loss and hold a
token, and the one comparable number: bits per byte of the same held-out text, scored left to
right as causal LM rows — except for `mlm`, which never predicts a next token and is scored by
pseudo-log-likelihood (each token masked in turn) on the first --pll_rows held-out rows.
Any config key can be overridden with --config.KEY=VALUE. One host (any number of devices).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from jaxpretrain import checkpoint, cli, objectives, steps, train
from jaxpretrain import config as config_lib
from jaxpretrain.curate import prepare
from jaxpretrain.data import pipeline

# Flags live in their own FlagValues, so importing this module (tests, a notebook) defines
# nothing in absl's global FLAGS, where jaxpretrain.main's --config would clash with ours.
_FLAGS = flags.FlagValues()
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Model config file (configs/*.py).", flag_values=_FLAGS
)
_OBJECTIVES = flags.DEFINE_list(
    "objectives", None, "Objective names, comma-separated (default: all).", flag_values=_FLAGS
)
_TOKENS = flags.DEFINE_integer("tokens", None, "Trained tokens per objective.", flag_values=_FLAGS)
_OUTPUT = flags.DEFINE_string("output", None, "Directory of the comparison.", flag_values=_FLAGS)
_PLL_ROWS = flags.DEFINE_integer(
    "pll_rows", 8, "Held-out rows scored by pseudo-log-likelihood (mlm).", flag_values=_FLAGS
)
flags.mark_flags_as_required(["config", "tokens", "output"], flag_values=_FLAGS)

# Objectives that predict masked tokens of their own input rather than the next token: scored
# by pseudo-log-likelihood, since a causal score would ask them for a prediction never trained.
PSEUDO_LIKELIHOOD_OBJECTIVES = frozenset({"mlm"})

# Why each held-out number is (or is not) comparable, per objective; others get _CAUSAL_NOTE.
_CAUSAL_NOTE = "causal score: left to right, loss on every next token"
NOTES = {
    "causal_lm": "causal score: the task it trained on",
    "prefix_lm": (
        "causal score: it trained left to right only on each window's target part, after a "
        "bidirectional prefix that causal rows lack"
    ),
    "span_corruption": (
        "causal score on a task it never trained for (it predicts sentinel-marked spans after "
        "a bidirectional prefix): the same measure, but of transfer"
    ),
    "ul2": (
        "causal score: only its S-denoiser (prefix LM) trained left to right, after an [S2S] "
        "token and a bidirectional prefix that causal rows lack"
    ),
    "mlm": (
        "pseudo-log-likelihood (each token masked in turn, context on both sides): not a "
        "normalised likelihood and it sees the right-hand context, so NOT comparable with the "
        "causal scores"
    ),
}


def objective_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """A copy of `config` training objective `name`."""
    copy = config.copy_and_resolve_references()
    copy.objective.name = name
    return copy


def check_same_run(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Raises ValueError when `workdir` holds a run of another config (another --tokens, ...)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        previous = _flat(json.load(f))
    current = _flat(json.loads(json.dumps(config.to_dict(), default=str)))
    # The data directory may move with the comparison; its contents are what matter.
    changed = sorted(
        k
        for k in previous.keys() | current.keys()
        if k != "data.dir" and previous.get(k) != current.get(k)
    )
    if changed:
        raise ValueError(
            f"{workdir} holds a run whose config differs in {', '.join(changed[:4])}; rerun "
            "with the flags it was started with, or choose a new --output."
        )


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def train_objective(
    config: ml_collections.ConfigDict, workdir: str, devices: Sequence[jax.Device] | None
) -> None:
    """Trains `config` in `workdir` unless its checkpoint at train.steps exists (finished).

    An unfinished run resumes from its latest checkpoint, as any workdir does.
    """
    os.makedirs(workdir, exist_ok=True)
    check_same_run(config, workdir)
    exp = train.build_experiment(config, workdir, devices)
    checkpointer = exp.checkpointer(workdir, read_only=True)
    finished = config.train.steps in checkpointer.all_steps()
    checkpointer.close()
    if finished:
        logging.info("%s is finished (step %d); not retraining", workdir, config.train.steps)
        return
    logging.info(
        "training %s in %s for %d steps", config.objective.name, workdir, config.train.steps
    )
    train.run_training(exp, workdir)


def read_metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def summarize_metrics(records: list[dict]) -> dict[str, float | None]:
    """Final losses, throughput and token shares of one run's metrics.jsonl records.

    Each logged record covers the steps since the previous one; shares are averaged weighted by
    those step counts, and tokens/s is total tokens over total time (intervals holding only the
    compilation step log null and are left out).
    """

    def logged(key: str) -> tuple[np.ndarray, np.ndarray]:
        pairs = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        steps, values = (np.array(column, float) for column in zip(*pairs, strict=True))
        return np.diff(steps, prepend=0.0), values

    widths, fractions = logged("loss_token_fraction")
    packing_widths, packing = logged("packing_efficiency")
    rate_widths, rates = logged("tokens_per_second")
    timed = rates > 0
    eval_losses = [r["eval/loss"] for r in records if r.get("eval/loss") is not None]
    return {
        "final_train_loss": [r["loss"] for r in records if r.get("loss") is not None][-1],
        "validation_loss": eval_losses[-1] if eval_losses else None,
        "tokens_per_second": float(
            rate_widths[timed].sum() / (rate_widths[timed] / rates[timed]).sum()
        )
        if timed.any()
        else None,
        "loss_token_fraction": float(np.average(fractions, weights=widths)),
        "packing_efficiency": float(np.average(packing, weights=packing_widths)),
    }


def restore_params(exp: train.Experiment, workdir: str, step: int):
    """The parameters of `workdir`'s checkpoint at `step`, laid out as `exp` lays them."""
    checkpointer = exp.checkpointer(workdir, read_only=True)
    restored = checkpointer.restore(checkpoint.params_only(exp.layout.abstract_state))
    checkpointer.close()
    if restored is None or restored.step != step:
        raise FileNotFoundError(f"{workdir} has no checkpoint at step {step}; rerun to train it.")
    return restored.state["params"]


def pll_batches(
    rows: dict[str, np.ndarray],
    *,
    mask_id: int,
    pad_id: int,
    token_bytes: np.ndarray,
    batch_size: int,
) -> list[dict[str, np.ndarray]]:
    """Batches that score each text token of `rows` once, masked, with bidirectional context.

    `rows` are packed causal rows ([R, L] BATCH_FEATURES); their `inputs` are the text. Every
    position whose token has bytes (not bos/eos/pad) gets one row of its own: that token
    replaced by `mask_id`, target the original token, loss weight 1 there only, every token of
    the row bidirectional within its segment. The last batch is completed with padding rows.
    """
    features = {key: [] for key in pipeline.BATCH_FEATURES}
    for inputs_L, segment_ids_L, positions_L in zip(
        rows["inputs"], rows["segment_ids"], rows["positions"], strict=True
    ):
        scored_N = np.flatnonzero((segment_ids_L > 0) & (token_bytes[inputs_L] > 0))
        n = np.arange(len(scored_N))
        masked_NL = np.repeat(inputs_L[None], len(n), axis=0)
        masked_NL[n, scored_N] = mask_id
        weights_NL = np.zeros(masked_NL.shape, np.float32)
        weights_NL[n, scored_N] = 1.0
        features["inputs"].append(masked_NL)
        features["targets"].append(np.repeat(inputs_L[None], len(n), axis=0))
        features["loss_weights"].append(weights_NL)
        features["segment_ids"].append(np.repeat(segment_ids_L[None], len(n), axis=0))
        features["positions"].append(np.repeat(positions_L[None], len(n), axis=0))
        features["bidirectional"].append(
            np.repeat((segment_ids_L[None] > 0).astype(np.int32), len(n), axis=0)
        )
    padding = -sum(len(part) for part in features["inputs"]) % batch_size
    for key, parts in features.items():
        fill = pad_id if key in ("inputs", "targets") else 0
        parts.append(np.full((padding, rows[key].shape[1]), fill, rows[key].dtype))
    arrays = {key: np.concatenate(parts) for key, parts in features.items()}
    return [
        {key: values[start : start + batch_size] for key, values in arrays.items()}
        for start in range(0, len(arrays["inputs"]), batch_size)
    ]


def held_out_score(exp: train.Experiment, eval_step, params, pll_rows: int | None) -> dict:
    """Bits per byte of `params` on the held-out rows of `exp` (a causal_lm experiment).

    With `pll_rows`, the pseudo-log-likelihood of the first `pll_rows` rows instead.
    """
    batches = exp.eval_batches()
    if pll_rows is not None:
        batches = pll_batches(
            _first_rows(batches, pll_rows),
            mask_id=exp.manifest.special_ids.mask,
            pad_id=exp.manifest.special_ids.pad,
            token_bytes=exp.tokenizer.token_byte_lengths(),
            batch_size=exp.batch_size_per_process,
        )
    metrics = steps.evaluate(
        eval_step,
        params,
        batches,
        exp.token_bytes(),
        exp.batch_sharding,
        exp.config.train.batch_size,
    )
    return {
        "method": "causal" if pll_rows is None else "pseudo_log_likelihood",
        "loss": metrics["eval/loss"],
        "bits_per_byte": metrics["eval/bits_per_byte"],
    }


def _first_rows(batches, count: int) -> dict[str, np.ndarray]:
    """The first `count` rows of `batches` (fewer if they hold fewer), as one batch."""
    taken = []
    for batch in batches:
        taken.append(batch)
        if sum(len(b["inputs"]) for b in taken) >= count:
            break
    return {key: np.concatenate([b[key] for b in taken])[:count] for key in taken[0]}


def compare(
    config: ml_collections.ConfigDict,
    names: Sequence[str],
    tokens: int,
    output: str,
    *,
    pll_rows: int = 8,
    devices: Sequence[jax.Device] | None = None,
    command: str = "",
) -> dict:
    """Trains (or resumes) every objective, scores them, writes the three files; returns the JSON.

    Raises KeyError / ValueError / ConfigError naming the objective, flag or config key at fault
    before anything is trained.
    """
    for name in names:
        objectives.get(name)
    if tokens <= 0 or pll_rows <= 0:
        raise ValueError(f"--tokens={tokens} and --pll_rows={pll_rows} must both be positive.")
    output = os.path.abspath(output)
    base = config.copy_and_resolve_references()
    tokens_per_step = base.train.batch_size * base.train.seq_len
    base.train.steps = math.ceil(tokens / tokens_per_step)
    base.data.dir = base.data.dir or os.path.join(output, "data")
    configs = {name: objective_config(base, name) for name in names}
    for run_config in configs.values():  # every config checked before the first one trains
        config_lib.validate(run_config, len(devices or jax.devices()))

    os.makedirs(output, exist_ok=True)
    prepare.ensure_prepared_data(base, output)
    for name, run_config in configs.items():
        train_objective(run_config, os.path.join(output, name), devices)

    scorer = train.build_experiment(objective_config(base, "causal_lm"), output, devices)
    eval_step = steps.make_eval_step(
        scorer.layout,
        scorer.objective,
        scorer.batch_sharding,
        micro_steps=base.train.grad_accum_steps,
    )
    results = []
    for name in names:
        workdir = os.path.join(output, name)
        params = restore_params(scorer, workdir, base.train.steps)
        pll = pll_rows if name in PSEUDO_LIKELIHOOD_OBJECTIVES else None
        results.append(
            {
                "objective": name,
                "workdir": workdir,
                **summarize_metrics(read_metrics(workdir)),
                "held_out": held_out_score(scorer, eval_step, params, pll),
                "note": NOTES.get(name, _CAUSAL_NOTE),
            }
        )
    params_count = sum(x.size for x in jax.tree.leaves(scorer.layout.abstract_state["params"]))
    comparison = {
        "command": command,
        "parameters": int(params_count),
        "steps": base.train.steps,
        "tokens_per_step": tokens_per_step,
        "trained_tokens": base.train.steps * tokens_per_step,
        "held_out_text": held_out_text(base, pll_rows, PSEUDO_LIKELIHOOD_OBJECTIVES & {*names}),
        "objectives": results,
    }
    with open(os.path.join(output, "comparison.json"), "w") as f:
        json.dump(comparison, f, indent=2)
        f.write("\n")
    with open(os.path.join(output, "comparison.md"), "w") as f:
        f.write(markdown_table(comparison))
    plot_curves(comparison, os.path.join(output, "comparison.png"))
    return comparison


def held_out_text(config: ml_collections.ConfigDict, pll_rows: int, pll_names: set) -> str:
    """Which held-out rows the bits-per-byte column scores, in words."""
    batches = "all" if config.eval.steps == -1 else f"the first {config.eval.steps}"
    text = (
        f"{batches} packed validation batches of {config.data.dir} "
        f"({config.train.batch_size} rows of {config.train.seq_len} positions, causal_lm rows)"
    )
    if pll_names:
        text += f"; {', '.join(sorted(pll_names))}: their first {pll_rows} rows"
    return text


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def markdown_table(comparison: dict) -> str:
    """comparison.md: what was run, the table, and what each column means."""
    lines = [
        "# Objective comparison",
        "",
        f"`{comparison['command']}`" if comparison["command"] else "",
        "",
        f"Every objective trained the same {comparison['parameters'] / 1e6:.1f}M-parameter model "
        f"for {comparison['steps']} steps x {comparison['tokens_per_step']:,} row positions = "
        f"**{comparison['trained_tokens']:,} trained tokens** (positions processed, padding "
        "included: the same compute for each; the share carrying loss differs).",
        "",
        "| objective | train loss | val loss (own task) | tokens/s | loss tokens | packing "
        "| held-out bits/byte | notes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in comparison["objectives"]:
        lines.append(
            f"| {row['objective']} | {_number(row['final_train_loss'])} | "
            f"{_number(row['validation_loss'])} | {_number(row['tokens_per_second'], 0)} | "
            f"{100 * row['loss_token_fraction']:.1f}% | {100 * row['packing_efficiency']:.1f}% | "
            f"{_number(row['held_out']['bits_per_byte'])} | {row['note']} |"
        )
    lines += [
        "",
        "- train loss: mean loss (nats per loss-carrying token) of the last logging interval; "
        "val loss: `eval/loss` at the last step, on the objective's own held-out examples. Each "
        "is the objective's own task, so neither is comparable across rows.",
        "- tokens/s: trained tokens per second of the training loop, compilation excluded.",
        "- loss tokens: share of trained positions that carry loss; packing: share holding a "
        "token (not padding).",
        f"- held-out bits/byte: the one comparable column, on {comparison['held_out_text']}; "
        "the notes say how each model was scored.",
        "",
    ]
    return "\n".join(lines)


def plot_curves(comparison: dict, path: str) -> None:
    """comparison.png: training and validation loss against trained tokens, per objective."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, (train_axis, eval_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    for row in comparison["objectives"]:
        records = read_metrics(row["workdir"])
        for axis, key in ((train_axis, "loss"), (eval_axis, "eval/loss")):
            points = [
                (r["step"] * comparison["tokens_per_step"], r[key])
                for r in records
                if r.get(key) is not None
            ]
            if points:
                axis.plot(
                    *zip(*points, strict=True),
                    marker="." if key != "loss" else None,
                    label=row["objective"],
                )
    train_axis.set_title("training loss (each objective's own task)")
    eval_axis.set_title("validation loss (own task; not comparable across objectives)")
    for axis in (train_axis, eval_axis):
        axis.set_xlabel("trained tokens")
        axis.set_ylabel("nats per loss token")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; settings go in --config.KEY=VALUE.")
    try:
        comparison = compare(
            _CONFIG.value,
            _OBJECTIVES.value or objectives.names(),
            _TOKENS.value,
            _OUTPUT.value,
            pll_rows=_PLL_ROWS.value,
            command=" ".join(["python tools/compare_objectives.py", *sys.argv[1:]]),
        )
    except (config_lib.ConfigError, FileNotFoundError, KeyError, ValueError) as error:
        sys.exit(f"error: {error.args[0] if error.args else error}")
    print(markdown_table(comparison))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.tool_flags_parser(_FLAGS, __doc__))
