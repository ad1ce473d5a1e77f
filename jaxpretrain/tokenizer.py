"""SentencePiece tokenizer with a fixed layout of special ids, shared by curation and training.

Layout of every tokenizer trained here (ids are fixed so data, model and objectives agree):

    0 <pad>   1 </s> (eos)   2 <s> (bos)   3 <unk>   4 <mask>   5 [NLU]   6 [NLG]   7 [S2S]
    8..107    <extra_id_99>..<extra_id_0> (as in T5, extra_id_0 has the highest id, so the
              sentinels of consecutive spans decrease)
    108..363  byte pieces <0x00>..<0xFF> (byte fallback: any UTF-8 text encodes without <unk>)
    364..     learned pieces

`<mask>` (MLM), the UL2 paradigm tokens and the sentinels (span corruption) are control
symbols: the ids exist for objectives to insert, but text that happens to contain the string
"<mask>" encodes as ordinary characters, so raw data can never inject a mask. Normalization is
the identity and whitespace is kept (no extra-whitespace removal, no dummy prefix), so
`decode(encode(text)) == text` for any text, including code indentation.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece as spm
from etils import epath

PAD_ID = 0
EOS_ID = 1
BOS_ID = 2
UNK_ID = 3
MASK_PIECE = "<mask>"
# UL2's mode tokens, prepended to an example to name its denoiser: R (NLU), X (NLG), S (S2S).
PARADIGM_PIECES = ("[NLU]", "[NLG]", "[S2S]")
NUM_SENTINELS = 100
SENTINEL_PIECES = tuple(f"<extra_id_{i}>" for i in range(NUM_SENTINELS))
NUM_BYTE_PIECES = 256
# pad, eos, bos, unk, mask, paradigms, sentinels and the byte pieces precede any learned piece.
NUM_RESERVED_IDS = 4 + 1 + len(PARADIGM_PIECES) + NUM_SENTINELS + NUM_BYTE_PIECES
# A tokenizer needs some learned pieces beyond the reserved ids to be worth training.
MIN_VOCAB_SIZE = NUM_RESERVED_IDS + 64

_WORD_BOUNDARY = "\u2581"  # SentencePiece's visible space '▁'.


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """Ids of the special tokens; recorded in the data manifest and read by objectives."""

    pad: int
    bos: int
    eos: int
    unk: int
    mask: int
    sentinels: tuple[int, ...]  # sentinels[i] is <extra_id_i>, the sentinel of the i-th span
    paradigms: tuple[int, int, int] = (5, 6, 7)  # [NLU], [NLG], [S2S]

    @property
    def first_regular_id(self) -> int:
        """The lowest id of an ordinary token (the first byte piece): one past every special id."""
        specials = (self.pad, self.bos, self.eos, self.unk, self.mask)
        return 1 + max(*specials, *self.sentinels, *self.paradigms)

    def to_json(self) -> dict[str, int | list[int]]:
        """Returns a JSON-serialisable dict (sentinels as a list)."""
        return {
            "pad": self.pad,
            "bos": self.bos,
            "eos": self.eos,
            "unk": self.unk,
            "mask": self.mask,
            "sentinels": list(self.sentinels),
            "paradigms": list(self.paradigms),
        }

    @classmethod
    def from_json(cls, value: dict) -> SpecialIds:
        """Inverse of `to_json`; raises KeyError/TypeError on a malformed dict."""
        return cls(
            pad=int(value["pad"]),
            bos=int(value["bos"]),
            eos=int(value["eos"]),
            unk=int(value["unk"]),
            mask=int(value["mask"]),
            sentinels=tuple(int(i) for i in value["sentinels"]),
            paradigms=tuple(int(i) for i in value["paradigms"]),
        )


class Tokenizer:
    """A loaded SentencePiece model plus the special ids and byte accounting the trainer needs."""

    def __init__(self, processor: spm.SentencePieceProcessor, *, name: str = "<in memory>"):
        self._processor = processor
        self._name = name
        self._special_ids = _read_special_ids(processor, name)
        self._token_byte_lengths: np.ndarray | None = None

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Loads a `.model` file written by `train_tokenizer` (local or any epath-supported URL)."""
        model_path = epath.Path(path)
        if not model_path.exists():
            raise FileNotFoundError(
                f"Tokenizer model {model_path} does not exist; train one with "
                "jaxpretrain.tokenizer.train_tokenizer or prepare the data first."
            )
        processor = spm.SentencePieceProcessor()
        try:
            processor.LoadFromSerializedProto(model_path.read_bytes())
        except (RuntimeError, OSError) as error:
            raise ValueError(
                f"Tokenizer model {model_path} is not a valid SentencePiece model ({error}); "
                "retrain it with jaxpretrain.tokenizer.train_tokenizer."
            ) from error
        return cls(processor, name=str(model_path))

    @property
    def vocab_size(self) -> int:
        """Number of ids, reserved ones included; valid ids are `range(vocab_size)`."""
        return self._processor.GetPieceSize()

    @property
    def special_ids(self) -> SpecialIds:
        return self._special_ids

    @property
    def serialized_model(self) -> bytes:
        """The SentencePiece model proto, as written to a `.model` file."""
        return self._processor.serialized_model_proto()

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; no BOS/EOS are added."""
        return self._processor.EncodeAsIds(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int | None = None) -> list[list[int]]:
        """Token ids of each text (no BOS/EOS), encoded on `num_threads` threads (default: all)."""
        threads = num_threads if num_threads is not None else (os.cpu_count() or 1)
        return self._processor.Encode(list(texts), out_type=int, num_threads=threads)

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """Text of `ids`; pad, BOS, EOS, mask and sentinels decode to nothing."""
        return self._processor.DecodeIds([int(i) for i in ids])

    def id_to_piece(self, token_id: int) -> str:
        return self._processor.IdToPiece(int(token_id))

    def token_byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes each id contributes to the decoded text, int32 of shape [vocab_size].

        Byte pieces count 1, special/control/unknown ids 0, '▁' one space byte. The sum over an
        encoded text equals `len(text.encode())`; eval divides summed loss (nats) by this sum to
        report bits per byte.
        """
        if self._token_byte_lengths is None:
            processor = self._processor
            lengths = np.zeros(self.vocab_size, dtype=np.int32)
            for token_id in range(self.vocab_size):
                if (
                    processor.IsControl(token_id)
                    or processor.IsUnknown(token_id)
                    or processor.IsUnused(token_id)
                ):
                    continue
                if processor.IsByte(token_id):
                    lengths[token_id] = 1
                    continue
                piece = processor.IdToPiece(token_id).replace(_WORD_BOUNDARY, " ")
                lengths[token_id] = len(piece.encode("utf-8"))
            lengths.flags.writeable = False
            self._token_byte_lengths = lengths
        return self._token_byte_lengths


def _read_special_ids(processor: spm.SentencePieceProcessor, name: str) -> SpecialIds:
    """Reads the special ids from the model and checks every one of them exists."""
    unk = processor.unk_id()

    def control_id(piece: str) -> int:
        token_id = processor.PieceToId(piece)
        if token_id == unk or not processor.IsControl(token_id):
            raise ValueError(
                f"Tokenizer {name} has no control piece {piece!r}; train it with "
                "jaxpretrain.tokenizer.train_tokenizer, which reserves <mask>, the UL2 paradigm "
                "tokens and the sentinels."
            )
        return token_id

    ids = {"pad": processor.pad_id(), "bos": processor.bos_id(), "eos": processor.eos_id()}
    for field, token_id in ids.items():
        if token_id < 0:
            raise ValueError(
                f"Tokenizer {name} has no {field} id; train it with "
                "jaxpretrain.tokenizer.train_tokenizer, which fixes pad=0, eos=1, bos=2, unk=3."
            )
    return SpecialIds(
        pad=ids["pad"],
        bos=ids["bos"],
        eos=ids["eos"],
        unk=unk,
        mask=control_id(MASK_PIECE),
        sentinels=tuple(control_id(piece) for piece in SENTINEL_PIECES),
        paradigms=tuple(control_id(piece) for piece in PARADIGM_PIECES),
    )


def _training_chunks(texts: Iterable[str], max_chunk_chars: int) -> Iterable[str]:
    """Cuts documents into pieces of at most `max_chunk_chars`, at line ends where possible.

    SentencePiece trains on "sentences"; whole documents would exceed its sentence length limit
    and be dropped, and single lines would lose the newline + indentation pieces code needs.
    """
    for text in texts:
        chunk: list[str] = []
        chunk_chars = 0
        for line in text.splitlines(keepends=True):
            # Overlong lines (minified data, base64) are cut hard; they carry little to learn.
            for start in range(0, len(line), max_chunk_chars):
                part = line[start : start + max_chunk_chars]
                if chunk_chars + len(part) > max_chunk_chars and chunk:
                    yield "".join(chunk)
                    chunk, chunk_chars = [], 0
                chunk.append(part)
                chunk_chars += len(part)
        if chunk:
            yield "".join(chunk)


def _reservoir_sample(items: Iterable[str], size: int, seed: int) -> list[str]:
    """A uniform sample of `size` items (all of them, in order, when there are fewer), holding
    at most `size` at a time.

    Done here rather than by SentencePiece's own `input_sentence_size` sampling, whose random
    generator is not seeded by `set_random_generator_seed` (models differed run to run).
    """
    rng = np.random.default_rng(seed)
    sample: list[str] = []
    for seen, item in enumerate(items):
        if seen < size:
            sample.append(item)
            continue
        slot = int(rng.integers(0, seen + 1))
        if slot < size:
            sample[slot] = item
    return sample


def train_tokenizer(
    texts: Iterable[str],
    model_path: str | os.PathLike,
    *,
    vocab_size: int,
    model_type: str = "bpe",
    max_training_chunks: int = 20_000,
    max_chunk_chars: int = 2_000,
    seed: int = 0,
    num_threads: int | None = None,
) -> Tokenizer:
    """Trains a SentencePiece model with the fixed special-id layout and writes it to `model_path`.

    Args:
      texts: training documents (only the train split: validation text must stay unseen).
      model_path: where the `.model` file is written (parent directories are created).
      vocab_size: total ids including the 364 reserved ones; at least `MIN_VOCAB_SIZE`.
      model_type: 'bpe' (fast to train; the default) or 'unigram'.
      max_training_chunks: cap on training chunks (each up to `max_chunk_chars` characters);
        a uniform sample of this many is kept while `texts` stream past (reservoir sampling
        seeded with `seed`), so memory and training time stay bounded (~40 MB at the defaults)
        however much text is given.
      max_chunk_chars: longest training "sentence" in characters.
      seed: seeds the sample, so the same texts and seed give the same model.
      num_threads: SentencePiece training threads (default: all cores).

    Returns:
      The trained tokenizer, already loaded.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size={vocab_size} leaves no room for learned pieces after the "
            f"{NUM_RESERVED_IDS} reserved ids; use vocab_size >= {MIN_VOCAB_SIZE}."
        )
    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"model_type={model_type!r} is not supported; use 'bpe' or 'unigram'.")
    chunks = _reservoir_sample(_training_chunks(texts, max_chunk_chars), max_training_chunks, seed)
    if not chunks:
        raise ValueError("No training text for the tokenizer; the train split is empty.")
    spm.set_random_generator_seed(seed)
    model_buffer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.Train(
            sentence_iterator=iter(chunks),
            model_writer=model_buffer,
            model_type=model_type,
            vocab_size=vocab_size,
            pad_id=PAD_ID,
            eos_id=EOS_ID,
            bos_id=BOS_ID,
            unk_id=UNK_ID,
            control_symbols=[MASK_PIECE, *PARADIGM_PIECES, *reversed(SENTINEL_PIECES)],
            byte_fallback=True,
            split_digits=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            character_coverage=0.9995,
            # Chunks are characters; the limit is bytes and non-ASCII text takes up to 4 each.
            max_sentence_length=4 * max_chunk_chars,
            input_sentence_size=max_training_chunks,
            shuffle_input_sentence=True,
            num_threads=num_threads or os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as error:
        raise ValueError(
            f"SentencePiece could not train a vocab of {vocab_size} ({error}); "
            "lower vocab_size or give more training text."
        ) from error
    output_path = epath.Path(model_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    output_path.write_bytes(model_buffer.getvalue())
    processor = spm.SentencePieceProcessor()
    processor.LoadFromSerializedProto(model_buffer.getvalue())
    return Tokenizer(processor, name=str(output_path))
