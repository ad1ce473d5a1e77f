"""Tokenizer: fixed special ids, exact round trips (code, non-ASCII), byte accounting, errors."""

import tracemalloc

import numpy as np
import pytest

from jaxpretrain import tokenizer as tokenizer_lib

_CODE = 'class A:\n    def f(self, x):\n\tif x:\n        return "  two  spaces"\n\n\n'
_TRAINING_TEXTS = [
    _CODE * 3,
    "Ünïcödé prose — 日本語のテキスト, emojis 🙂 and numbers 1234567890.\n",
    "The quick brown fox jumps over the lazy dog.  Twice  spaced.\r\n" * 4,
] * 20 + [f"document {i}: apples, bananas and cherries cost {i * 37} cents\n" for i in range(300)]

_ROUND_TRIP_TEXTS = [
    _CODE,
    "    leading indentation and trailing spaces   \n\n\n",
    "\ttabs\tand\r\nwindows newlines\r\n",
    "Ünïcödé — 日本語 🙂 never seen: ꙮ 𝔘",
    "12345 digits 0.5e-3",
    "<mask> and <extra_id_0> written in text",
    "nul \x00 and control \x07 characters",
    "",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    model_path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.model"
    tokenizer_lib.train_tokenizer(_TRAINING_TEXTS, model_path, vocab_size=512, seed=0)
    return model_path


@pytest.fixture(scope="module")
def tokenizer(trained):
    return tokenizer_lib.Tokenizer.load(trained)


def test_special_ids_are_fixed(tokenizer):
    special = tokenizer.special_ids
    assert (special.pad, special.eos, special.bos, special.unk, special.mask) == (0, 1, 2, 3, 4)
    assert special.paradigms == (5, 6, 7)
    assert special.sentinels == tuple(range(107, 7, -1))  # T5's order: extra_id_0 highest
    assert tokenizer.id_to_piece(107) == "<extra_id_0>"
    assert tokenizer.id_to_piece(108) == "<0x00>"
    assert tokenizer.vocab_size == 512
    assert tokenizer_lib.SpecialIds.from_json(special.to_json()) == special


@pytest.mark.parametrize("text", _ROUND_TRIP_TEXTS)
def test_round_trip_is_exact(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_encode_adds_no_special_tokens_and_text_cannot_inject_a_mask(tokenizer):
    ids = tokenizer.encode("<mask> <extra_id_0>")
    special = tokenizer.special_ids
    assert not {special.pad, special.bos, special.eos, special.mask} & set(ids)
    assert not set(special.sentinels) & set(ids)


def test_encode_batch_matches_encode(tokenizer):
    assert tokenizer.encode_batch(_ROUND_TRIP_TEXTS, num_threads=2) == [
        tokenizer.encode(text) for text in _ROUND_TRIP_TEXTS
    ]


@pytest.mark.parametrize("text", _ROUND_TRIP_TEXTS)
def test_token_byte_lengths_sum_to_utf8_length(tokenizer, text):
    lengths = tokenizer.token_byte_lengths()
    assert lengths.shape == (tokenizer.vocab_size,)
    ids = tokenizer.encode(text)
    assert int(lengths[ids].sum()) == len(tokenizer.decode(ids).encode("utf-8"))


def test_token_byte_lengths_of_special_and_byte_pieces(tokenizer):
    lengths = tokenizer.token_byte_lengths()
    assert np.all(lengths[:108] == 0)
    assert np.all(lengths[108:364] == 1)
    assert np.all(lengths[364:] >= 1)


def test_training_is_deterministic(trained, tmp_path):
    again = tmp_path / "again.model"
    tokenizer_lib.train_tokenizer(_TRAINING_TEXTS, again, vocab_size=512, seed=0)
    assert again.read_bytes() == trained.read_bytes()


def test_load_missing_model_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.model"):
        tokenizer_lib.Tokenizer.load(tmp_path / "nothing.model")


def test_load_invalid_model_names_the_path(tmp_path):
    broken = tmp_path / "broken.model"
    broken.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="broken.model"):
        tokenizer_lib.Tokenizer.load(broken)


def test_vocab_too_small_for_reserved_ids(tmp_path):
    with pytest.raises(ValueError, match="vocab_size=300"):
        tokenizer_lib.train_tokenizer(_TRAINING_TEXTS, tmp_path / "t.model", vocab_size=300)


def _made_up_documents(count: int):
    syllables = ("ka", "lo", "mi", "ren", "tas", "vel", "dor", "pin", "sul", "gar", "bet", "nox")
    rng = np.random.default_rng(0)
    for index in range(count):
        words = ("".join(syllables[k] for k in row) for row in rng.integers(0, 12, size=(30, 3)))
        yield f"doc {index}: {' '.join(words)}.\n"


def test_training_memory_does_not_grow_with_the_text_given(tmp_path):
    # ~5 MB of text streamed past; only a 500-chunk sample may be held (SentencePiece's own
    # sampling is not seeded, so a sample taken there would also change the model run to run).
    models = []
    for name in ("first.model", "second.model"):
        tracemalloc.start()
        try:
            tokenizer_lib.train_tokenizer(
                _made_up_documents(20_000), tmp_path / name, vocab_size=512, max_training_chunks=500
            )
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 3 * 2**20  # listing every chunk first took ~7.5 MiB
        models.append((tmp_path / name).read_bytes())
    assert models[0] == models[1]
