"""Perplexity filter: scores documents with a small jaxpretrain language model (CCNet-style).

Train the scorer on reference text (e.g. Wikipedia) with `python -m jaxpretrain.main`, then keep
web documents the scorer finds likely:

    f = filters.get("perplexity", workdir="runs/wiki_scorer", max_perplexity=1_000.0)
    f.score(doc)   # {"perplexity": 312.5, "nll_per_byte": 1.21, "tokens": 512.0}

The workdir is a training run directory: `config.json`, `checkpoints/<step>/` and the prepared
data whose `manifest.json` names the tokenizer. The newest readable checkpoint is used. The
model is loaded lazily, once per process and setting (so filters pickled to worker processes
load it there), and scores `batch_size` documents per call of one compiled forward pass of fixed
shape [batch_size, max_tokens], so no document length causes a recompile.

Heavy imports (jax, flax, orbax) happen only when the model is loaded: importing the filters
package stays cheap for curation workers that do not use this filter.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from jaxpretrain.curate.document import Document
from jaxpretrain.curate.filters.base import Filter, Scores, register

# Largest mean NLL turned into a perplexity; exp(700) is near float64's limit.
_MAX_NLL = 700.0


@dataclasses.dataclass(frozen=True)
class LanguageModelScorer:
    """A restored causal LM and its tokenizer, ready to score token windows.

    Attributes:
      tokenizer: the run's `jaxpretrain.tokenizer.Tokenizer`.
      max_tokens: tokens scored per document (its first ones); the batch's fixed length.
      batch_size: rows per forward pass.
      step: the checkpoint step the parameters come from.
      token_bytes_V: UTF-8 bytes each token id adds to decoded text (for nll_per_byte).
      nll_fn: jitted (inputs_BL, targets_BL, weights_BL) -> summed NLL per row [B] (nats).
    """

    tokenizer: Any
    max_tokens: int
    batch_size: int
    step: int
    token_bytes_V: np.ndarray
    nll_fn: Callable[..., Any]

    def score_texts(self, texts: Sequence[str]) -> list[Scores]:
        """Per text: perplexity (exp of mean token NLL), nll_per_byte (nats), tokens scored.

        Each text is scored as `[bos] + its first max_tokens tokens`, predicting those tokens.
        A text with no tokens scores {"perplexity": 0, "nll_per_byte": 0, "tokens": 0}.
        """
        bos = self.tokenizer.special_ids.bos
        pad = self.tokenizer.special_ids.pad
        token_lists = [ids[: self.max_tokens] for ids in self.tokenizer.encode_batch(list(texts))]
        scores: list[Scores] = []
        for start in range(0, len(token_lists), self.batch_size):
            chunk = token_lists[start : start + self.batch_size]
            targets_BL = np.full((self.batch_size, self.max_tokens), pad, np.int32)
            weights_BL = np.zeros((self.batch_size, self.max_tokens), np.float32)
            for row, ids in enumerate(chunk):
                targets_BL[row, : len(ids)] = ids
                weights_BL[row, : len(ids)] = 1.0
            # Inputs are the targets shifted right behind BOS: position t predicts token t.
            inputs_BL = np.concatenate(
                [np.full((self.batch_size, 1), bos, np.int32), targets_BL[:, :-1]], axis=1
            )
            nll_B = np.asarray(self.nll_fn(inputs_BL, targets_BL, weights_BL), np.float64)
            for row, ids in enumerate(chunk):
                scores.append(self._row_scores(ids, float(nll_B[row])))
        return scores

    def _row_scores(self, ids: Sequence[int], nll_sum: float) -> Scores:
        if not ids:
            return {"perplexity": 0.0, "nll_per_byte": 0.0, "tokens": 0.0}
        num_bytes = float(self.token_bytes_V[np.asarray(ids)].sum())
        return {
            "perplexity": math.exp(min(nll_sum / len(ids), _MAX_NLL)),
            "nll_per_byte": nll_sum / max(num_bytes, 1.0),
            "tokens": float(len(ids)),
        }


def load_scorer(workdir: str, max_tokens: int, batch_size: int) -> LanguageModelScorer:
    """Restores the newest checkpoint of the run in `workdir` onto one device for scoring.

    `max_tokens` of 0 means the run's `train.seq_len`. Raises FileNotFoundError naming the
    missing path (workdir, config.json, prepared data or checkpoints) and ValueError when
    `max_tokens` exceeds the model's `max_seq_len`.
    """
    return _load_scorer_cached(os.path.abspath(os.path.expanduser(workdir)), max_tokens, batch_size)


@functools.lru_cache(maxsize=4)
def _load_scorer_cached(workdir: str, max_tokens: int, batch_size: int) -> LanguageModelScorer:
    import jax
    import jax.numpy as jnp
    import ml_collections
    from flax import nnx

    from jaxpretrain import checkpoint
    from jaxpretrain import config as config_lib
    from jaxpretrain import state as state_lib
    from jaxpretrain.data import manifest as manifest_lib
    from jaxpretrain.tokenizer import Tokenizer

    config_path = os.path.join(workdir, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f"Perplexity filter workdir {workdir} has no config.json; train a scorer there first "
            "(python -m jaxpretrain.main --config=... --workdir=...)."
        )
    with open(config_path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    if config.objective.name != "causal_lm":
        # Perplexity is a causal LM's score of the text; other objectives predict other things.
        raise ValueError(
            f"Perplexity filter workdir {workdir} holds a {config.objective.name!r} run "
            f"({config_path}); train the scorer with objective.name='causal_lm'."
        )
    manifest = manifest_lib.read_manifest(config_lib.data_dir(config, workdir))
    tokenizer = Tokenizer.load(manifest.tokenizer_path)
    # The checkpoint holds the full train state; restore it on one device and keep the params
    # (their layout does not depend on the mesh the scorer was trained on).
    config.mesh.update(data=1, fsdp=1, tensor=1, pipe=1, microbatches=1, pipeline_repeats=1)
    config.train.grad_accum_steps = 1
    setup = state_lib.setup(config, tokenizer_vocab=manifest.vocab_size, devices=jax.devices()[:1])
    model_cfg = setup.model_config
    max_tokens = max_tokens or int(config.train.seq_len)
    if max_tokens > model_cfg.max_seq_len:
        raise ValueError(
            f"Perplexity filter max_tokens={max_tokens} exceeds the scorer's max_seq_len "
            f"{model_cfg.max_seq_len} ({config_path}); use max_tokens <= {model_cfg.max_seq_len}."
        )

    layout = setup.layout
    checkpoint_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(checkpoint_dir):
        raise FileNotFoundError(
            f"Perplexity filter workdir {workdir} has no checkpoints directory {checkpoint_dir}; "
            "train the scorer until it saves a checkpoint."
        )
    checkpointer = checkpoint.Checkpointer(
        checkpoint_dir, max_to_keep=1, use_async=False, read_only=True
    )
    try:
        restored = checkpointer.restore(checkpoint.params_only(layout.abstract_state))
    finally:
        checkpointer.close()
    if restored is None:
        raise FileNotFoundError(
            f"Perplexity filter found no readable checkpoint in {checkpoint_dir}; "
            "train the scorer until it saves one."
        )
    params = restored.state["params"]
    graphdef = layout.graphdef

    def nll_sum_B(params, inputs_BL, targets_BL, weights_BL):
        model = nnx.merge(graphdef, params)
        length = inputs_BL.shape[1]
        positions_BL = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), inputs_BL.shape)
        # Padding rows still get segment 1 (their loss weight is 0): no all-masked attention.
        segment_ids_BL = jnp.ones_like(inputs_BL)
        logits_BLV = model(inputs_BL, segment_ids_BL, positions_BL, jnp.zeros_like(inputs_BL))
        log_probs_BLV = jax.nn.log_softmax(logits_BLV.astype(jnp.float32), axis=-1)
        target_log_probs_BL = jnp.take_along_axis(log_probs_BLV, targets_BL[..., None], -1)[..., 0]
        return -jnp.sum(target_log_probs_BL * weights_BL, axis=-1)

    # Parameters are an argument, not a closure: closed-over arrays become compiled constants.
    nll_fn = functools.partial(jax.jit(nll_sum_B), params)
    lengths_V = tokenizer.token_byte_lengths().astype(np.float64)
    return LanguageModelScorer(
        tokenizer=tokenizer,
        max_tokens=max_tokens,
        batch_size=batch_size,
        step=int(restored.step),
        token_bytes_V=lengths_V,
        nll_fn=nll_fn,
    )


@register
@dataclasses.dataclass(frozen=True)
class PerplexityFilter(Filter):
    """Keeps documents whose perplexity under the scorer LM is at most `max_perplexity`.

    Settings:
      workdir: the scorer's training run directory (required).
      max_perplexity: keep when perplexity <= this; None keeps everything (score only).
      max_tokens: score the document's first N tokens; 0 = the run's train.seq_len.
      batch_size: documents per forward pass in `score_batch`.
    """

    name: ClassVar[str] = "perplexity"
    workdir: str = ""
    max_perplexity: float | None = None
    max_tokens: int = 0
    batch_size: int = 8

    def __post_init__(self) -> None:
        if not self.workdir:
            raise ValueError(
                "Perplexity filter has workdir=''; set it to the scorer's training run directory."
            )
        if self.max_tokens < 0 or self.batch_size < 1:
            raise ValueError(
                f"Perplexity filter has max_tokens={self.max_tokens}, "
                f"batch_size={self.batch_size}; use max_tokens >= 0 and batch_size >= 1."
            )

    def scorer(self) -> LanguageModelScorer:
        """The loaded model (loaded on first use, then cached for this process)."""
        return load_scorer(self.workdir, self.max_tokens, self.batch_size)

    def score(self, doc: Document) -> Scores:
        return self.score_batch([doc])[0]

    def score_batch(self, docs: Sequence[Document]) -> list[Scores]:
        """Scores of `docs` in order, `batch_size` documents per forward pass."""
        return self.scorer().score_texts([doc.text for doc in docs])

    def keep(self, scores: Mapping[str, float]) -> tuple[bool, str | None]:
        return self._first_failure(
            [
                ("no_tokens", scores["tokens"] == 0),
                (
                    "too_perplexing",
                    self.max_perplexity is not None and scores["perplexity"] > self.max_perplexity,
                ),
            ]
        )
