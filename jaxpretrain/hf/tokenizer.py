"""Our SentencePiece tokenizer as Hugging Face tokenizer files that encode to the same ids.

transformers' own conversion of a `.model` file does not: `LlamaTokenizer` prepends a space
(a dummy prefix we train without) and a BOS, and its merges can produce control pieces such as
`<mask>` from text. So the `tokenizer.json` is built here, piece for piece:

- model: BPE over the same vocabulary (every id, control and byte pieces included), with byte
  fallback. SentencePiece merges the adjacent pair whose concatenation is the best-scored
  normal piece; the merges list therefore holds every split (a, b) of every normal piece into
  two normal pieces, ranked by the piece's score, so `tokenizers` takes the same merges.
  Control, unknown and byte pieces are never merge results, as in SentencePiece.
- normalizer: ' ' -> '\u2581' only (our tokenizers use the identity normalization, no dummy
  prefix and keep every space); no pre-tokenizer, so merges run over the whole text as
  SentencePiece's do.
- special tokens (control pieces and <unk>) are `special` added tokens, so decoding with
  `skip_special_tokens=True` drops them as our `Tokenizer.decode` does; `split_special_tokens`
  makes text such as "</s>" or "<mask>" encode as characters, as SentencePiece does.
- no BOS/EOS are added (`add_bos_token: false`), like `Tokenizer.encode`; prepend
  `bos_token_id` yourself where training did (a causal LM saw `[bos] + document + [eos]`).

Only BPE models convert: a unigram model's Viterbi ties resolve differently in `tokenizers`
(measured: 257 of 3,001 stdlib files encoded differently), so they are refused.
"""

from __future__ import annotations

import json
from typing import Any

from jaxpretrain.tokenizer import MASK_PIECE, Tokenizer

_WORD_BOUNDARY = "\u2581"
# sentencepiece_model.proto: ModelProto.SentencePiece.Type and TrainerSpec.ModelType.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED = 1, 2, 3, 4
_MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}


def tokenizer_files(
    tokenizer: Tokenizer, model_max_length: int, source: str = "the tokenizer"
) -> dict[str, bytes]:
    """{file name: content} of the tokenizer files of a Hugging Face model folder.

    `tokenizer.json` + `tokenizer_config.json` are what `AutoTokenizer.from_pretrained` reads;
    `tokenizer.model` (the SentencePiece model itself) is kept beside them for SentencePiece
    users and for `tools/import_hf.py`.

    Raises ValueError (naming `source` and the setting) for a tokenizer that cannot be converted
    exactly.
    """
    proto = _model_proto(tokenizer)
    _check_convertible(proto, source)
    pieces = proto.pieces
    specials = tokenizer.special_ids
    config = {
        # The generic fast tokenizer loads tokenizer.json as written; LlamaTokenizer would
        # rebuild it with a dummy prefix and a BOS.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": pieces[specials.bos].piece,
        "eos_token": pieces[specials.eos].piece,
        "unk_token": pieces[specials.unk].piece,
        "pad_token": pieces[specials.pad].piece,
        "mask_token": MASK_PIECE,
        "add_bos_token": False,
        "add_eos_token": False,
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
    }
    special_tokens_map = {key: config[key] for key in config if key.endswith("_token")}
    return {
        "tokenizer.json": _tokenizer_json(proto).encode(),
        "tokenizer_config.json": _json_bytes(config),
        "special_tokens_map.json": _json_bytes(special_tokens_map),
        "tokenizer.model": tokenizer.serialized_model,
    }


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode()


def _model_proto(tokenizer: Tokenizer) -> Any:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tokenizer.serialized_model)
    return proto


def _check_convertible(proto: Any, source: str) -> None:
    normalizer = proto.normalizer_spec
    model_type = _MODEL_TYPES.get(proto.trainer_spec.model_type, proto.trainer_spec.model_type)
    # (setting, its value, the value that converts): train_tokenizer's settings.
    settings = (
        ("model_type", model_type, "bpe"),
        ("normalization_rule_name", normalizer.name, "identity"),
        ("add_dummy_prefix", normalizer.add_dummy_prefix, False),
        ("remove_extra_whitespaces", normalizer.remove_extra_whitespaces, False),
        ("escape_whitespaces", normalizer.escape_whitespaces, True),
        ("treat_whitespace_as_suffix", proto.trainer_spec.treat_whitespace_as_suffix, False),
        ("user_defined_symbols", any(p.type == _USER_DEFINED for p in proto.pieces), False),
    )
    for key, value, needed in settings:
        if value != needed:
            raise ValueError(
                f"{source}: SentencePiece {key}={value!r}, but only {key}={needed!r} converts to "
                "a Hugging Face tokenizer with the same ids; retrain it with the settings of "
                "jaxpretrain.tokenizer.train_tokenizer, or export with --export_tokenizer=false."
            )


def _tokenizer_json(proto: Any) -> str:
    try:
        from tokenizers import AddedToken, decoders, models, normalizers
        from tokenizers import Tokenizer as HfTokenizer
    except ImportError as error:
        raise ImportError(
            f"writing Hugging Face tokenizer files needs the `tokenizers` package ({error}); "
            "install the hf extra: pip install -e '.[hf]'."
        ) from error
    vocab = {piece.piece: token_id for token_id, piece in enumerate(proto.pieces)}
    normal = {p.piece: (-p.score, i) for i, p in enumerate(proto.pieces) if p.type == _NORMAL}
    ranked = []
    for piece, rank in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                # Best score first; ties (equal scores) by id, then by split position.
                ranked.append((rank, cut, left, right))
    merges = [(left, right) for _, _, left, right in sorted(ranked)]
    unknown = next(p.piece for p in proto.pieces if p.type == _UNKNOWN)
    hf_tokenizer = HfTokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            unk_token=unknown,
            fuse_unk=True,
            byte_fallback=proto.trainer_spec.byte_fallback,
        )
    )
    hf_tokenizer.normalizer = normalizers.Replace(" ", _WORD_BOUNDARY)
    hf_tokenizer.decoder = decoders.Sequence(
        [decoders.Replace(_WORD_BOUNDARY, " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    hf_tokenizer.add_special_tokens(
        [
            AddedToken(piece.piece, special=True, normalized=False)
            for piece in proto.pieces
            if piece.type in (_CONTROL, _UNKNOWN)
        ]
    )
    return hf_tokenizer.to_str(pretty=False)
