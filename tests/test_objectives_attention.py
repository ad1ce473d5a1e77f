"""Attention per objective, checked on a model's logits by perturbing one input token at a time.

Two documents' examples are packed into one row (segments 1 and 2, positions restarting). For
every objective, changing the input at position j must change exactly the logits of the
positions that may see j: same segment, and j earlier (or j itself), or both bidirectional. So a
bidirectional position sees later bidirectional tokens, a causal one never sees a later token,
and nothing crosses a segment. Objectives written later join by appending their name to
OBJECTIVES (with what their rows must contain) and are skipped until they are registered.
"""

import importlib

import ml_collections
import numpy as np
import pytest
from flax import nnx

from jaxpretrain import config as config_lib
from jaxpretrain import objectives
from jaxpretrain.model import ModelConfig, Transformer
from jaxpretrain.tokenizer import SpecialIds

SPECIAL = SpecialIds(pad=0, eos=1, bos=2, unk=3, mask=4, sentinels=tuple(range(107, 7, -1)))
LENGTH = 32  # the packed row
SEQ_LEN = 16  # each objective's examples, so two documents fit one row
CFG = ModelConfig(
    vocab_size=160,  # all special ids plus the regular ids 108..159 the documents use
    num_layers=2,
    embed_dim=32,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    mlp_dim=64,
    max_seq_len=LENGTH,
    dtype="float32",
)
FEATURES = ("inputs", "segment_ids", "positions", "bidirectional")
# name -> (its rows hold two bidirectional positions in a segment, a causal position with a
# later token in its segment). The test asserts both, so no check below is vacuous.
OBJECTIVES = {
    "causal_lm": (False, True),
    "mlm": (True, False),
    "prefix_lm": (True, True),
    "span_corruption": (True, True),
    "ul2": (True, True),
}
DOCUMENTS = (np.arange(110, 123), np.arange(130, 142))  # 13 and 12 regular tokens


def objective_or_skip(name: str) -> objectives.Objective:
    """The registered objective, importing its module (which registers it) if it exists."""
    module = f"jaxpretrain.objectives.{name}"
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name != module:
            raise  # the module exists but is broken: fail, do not hide it
    if name not in objectives.names():
        pytest.skip(f"objective {name!r} is not registered yet ({module} is missing).")
    return objectives.get(name)


def pack(examples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One row: the examples back to back as segments 1, 2, ..., then padding (segment 0)."""
    row = {name: np.zeros(LENGTH, np.int32) for name in FEATURES}
    row["inputs"][:] = SPECIAL.pad
    start = 0
    for segment, example in enumerate(examples, start=1):
        end = start + len(example["inputs"])
        assert end <= LENGTH, "the examples do not fit one row; shorten DOCUMENTS"
        row["inputs"][start:end] = example["inputs"]
        row["bidirectional"][start:end] = example["bidirectional"]
        row["segment_ids"][start:end] = segment
        row["positions"][start:end] = np.arange(end - start)
        start = end
    return row


def packed_row_of_seed(name: str, objective: objectives.Objective, seed: int) -> dict:
    """The first example of each document (default settings, this seed), packed."""
    objective_settings = config_lib.default_config().objective
    objective_settings.name = name
    frozen = ml_collections.FrozenConfigDict(objective_settings)
    examples = [
        objective.make_examples(
            document,
            np.random.default_rng([seed, 0, index]),
            seq_len=SEQ_LEN,
            special_ids=SPECIAL,
            settings=frozen,
            vocab_size=CFG.vocab_size,
        )[0]
        for index, document in enumerate(DOCUMENTS)
    ]
    return pack(examples)


def packed_row_for(name: str, objective: objectives.Objective) -> dict[str, np.ndarray]:
    """The first example of each document, packed; the first seed whose row is non-vacuous."""
    wants_bidirectional, wants_causal = OBJECTIVES[name]
    for seed in range(100):
        row = packed_row_of_seed(name, objective, seed)
        pairs = later_pairs(row)
        if pairs["bidirectional"] == wants_bidirectional and pairs["causal"] == wants_causal:
            return row
    pytest.fail(f"no seed gave {name} rows with {OBJECTIVES[name]} (bidirectional, causal) pairs")


def later_pairs(row: dict[str, np.ndarray]) -> dict[str, bool]:
    """Whether some position q has a later token j in its segment, with q bidirectional (and j
    too) or with q causal."""
    segment, bidirectional = row["segment_ids"], row["bidirectional"].astype(bool)
    found = {"bidirectional": False, "causal": False}
    for q in range(LENGTH):
        for j in range(q + 1, LENGTH):
            if segment[q] == segment[j] != 0:
                found["bidirectional"] |= bool(bidirectional[q] and bidirectional[j])
                found["causal"] |= not bidirectional[q]
    return found


@pytest.fixture(scope="module")
def forward():
    model = Transformer(CFG, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)

    @nnx.jit
    def logits_fn(state, inputs, segment_ids, positions, bidirectional):
        return nnx.merge(graphdef, state)(inputs, segment_ids, positions, bidirectional)

    def run(rows: list[dict[str, np.ndarray]]) -> np.ndarray:
        batch = [np.stack([row[name] for row in rows]) for name in FEATURES]
        return np.asarray(logits_fn(state, *batch))

    return run


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_objective_rows_attend_as_their_masks_say(name, forward):
    objective = objective_or_skip(name)
    row = packed_row_for(name, objective)
    segment, bidirectional = row["segment_ids"], row["bidirectional"].astype(bool)
    assert set(segment.tolist()) >= {1, 2}
    positions = np.flatnonzero(segment > 0)
    perturbed = []
    for j in positions:
        changed_row = {key: value.copy() for key, value in row.items()}
        token = row["inputs"][j]
        changed_row["inputs"][j] = token + 1 if token + 1 < CFG.vocab_size else token - 1
        perturbed.append(changed_row)
    # Segment 2 packed alone, at the start of a row: the same logits as inside the pair.
    second = {key: np.where(segment == 2, value, 0) for key, value in row.items()}
    second_start = int(np.flatnonzero(segment == 2)[0])
    alone = {key: np.roll(value, -second_start) for key, value in second.items()}
    alone["segment_ids"] = np.where(alone["segment_ids"] == 2, 1, 0).astype(np.int32)
    logits = forward([row, alone, *perturbed])
    base = logits[0]
    np.testing.assert_allclose(
        logits[1][: np.sum(segment == 2)], base[segment == 2], rtol=1e-5, atol=1e-5
    )
    for j, changed_logits in zip(positions, logits[2:], strict=True):
        changed = np.abs(changed_logits - base).max(axis=-1) > 1e-6
        for q in range(LENGTH):
            if segment[q] != segment[j]:
                why = "a position in another segment (or padding) sees nothing of this one"
                expected = False
            elif q >= j:
                why, expected = "a position sees itself and earlier tokens of its segment", True
            elif bidirectional[q] and bidirectional[j]:
                why, expected = "a bidirectional position sees later bidirectional tokens", True
            elif not bidirectional[q]:
                why, expected = "a causal position never sees a later token", False
            else:
                why, expected = "a bidirectional position never sees a later causal token", False
            assert changed[q] == expected, f"{name}: input {j} -> logits {q}: {why}"


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_bidirectional_positions_are_a_prefix_of_each_segment(name):
    """Over 20 seeds of default settings, the bidirectional positions of every segment are its
    first ones: what splash's static masks rely on (the input pipeline also checks it)."""
    objective = objective_or_skip(name)
    for seed in range(20):
        row = packed_row_of_seed(name, objective, seed)
        for segment in set(row["segment_ids"].tolist()) - {0}:
            bidirectional = row["bidirectional"][row["segment_ids"] == segment]
            assert not np.any(np.diff(bidirectional) > 0), (name, seed, bidirectional)
