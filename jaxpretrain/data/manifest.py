"""The prepared-data format: `manifest.json` + ArrayRecord shards, shared by curate/ and data/.

A prepared directory holds

    manifest.json                                 written last: its presence means "finished"
    tokenizer.model                               SentencePiece model (path relative to the dir)
    <source>/train-p00000-00000.array_record       one record per document: its token ids as
    <source>/validation-p00000-00000.array_record  little-endian int32, no BOS/EOS added
                                      (p<partition>-<shard>: shards are cut by size, the
                                      manifest lists them in order)

`manifest.json` (format_version 3: the token layout with UL2's paradigm tokens and T5-ordered
sentinels; data prepared by earlier versions must be prepared again):

    {"format_version": 3,
     "tokenizer": "tokenizer.model", "vocab_size": 4096,
     "special_ids": {"pad": 0, "bos": 2, "eos": 1, "unk": 3, "mask": 4, "sentinels": [107, ...],
                     "paradigms": [5, 6, 7]},
     "token_dtype": "<i4",
     "sources": [{"name": "web", "weight": 0.45, "documents": 1234, "tokens": 5678}, ...],
     "splits": {"train": {"shards": [{"file": "web/train-p00000-00000.array_record",
                                      "source": "web", "documents": 300, "tokens": 1000000},
                                     ...]},
                "validation": {...}},
     "report": {...}}             # summary of the curation report (report.json has it all)

`weight` is the source's sampling probability in the training mixture (they sum to 1); the
loader mixes the train shards of each source by it.

This module reads and writes that file; it never imports curate/.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from etils import epath

from jaxpretrain import paths
from jaxpretrain.tokenizer import SpecialIds

FORMAT_VERSION = 3
# Versions 1 and 2 used the earlier special-id layout (sentinels at ids 5..104, no paradigm
# tokens): their token ids mean other things to today's objectives, so they are refused.
READABLE_VERSIONS = (3,)
MANIFEST_FILENAME = "manifest.json"
TOKEN_DTYPE = "<i4"  # numpy dtype string: little-endian int32


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """One ArrayRecord shard; `file` is relative to the data directory, `source` names the
    source its documents come from."""

    file: str
    documents: int
    tokens: int
    source: str = ""


@dataclasses.dataclass(frozen=True)
class SplitInfo:
    shards: tuple[ShardInfo, ...]

    @property
    def documents(self) -> int:
        return sum(shard.documents for shard in self.shards)

    @property
    def tokens(self) -> int:
        return sum(shard.tokens for shard in self.shards)


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A prepared-data directory as described by its `manifest.json`.

    `data_dir` is where the manifest was read from (or will be written to); every file named in
    the manifest is relative to it, so a prepared directory can be moved or copied as a whole.
    """

    data_dir: str
    tokenizer_file: str
    vocab_size: int
    special_ids: SpecialIds
    splits: Mapping[str, SplitInfo]
    sources: tuple[Mapping[str, Any], ...] = ()
    token_dtype: str = TOKEN_DTYPE
    report: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def tokenizer_path(self) -> str:
        return str(epath.Path(self.data_dir) / self.tokenizer_file)

    def split(self, name: str) -> SplitInfo:
        """The split called `name`, or a ValueError naming the splits that exist."""
        if name not in self.splits:
            raise ValueError(
                f"Split {name!r} is not in {self.manifest_path}; use one of "
                f"{sorted(self.splits)} or prepare the data again."
            )
        return self.splits[name]

    def shard_paths(self, split: str, source: str | None = None) -> list[str]:
        """Full paths of the shards of `split` (only those of `source` if given), in order."""
        data_dir = epath.Path(self.data_dir)
        return [
            str(data_dir / shard.file)
            for shard in self.split(split).shards
            if source is None or shard.source == source
        ]

    def source_weights(self, split: str = "train") -> dict[str, float]:
        """{source: sampling probability} over the sources with documents in `split`, in
        manifest order, normalised to sum to 1 (a source without a weight counts 1.0)."""
        documents: dict[str, int] = {}
        for shard in self.split(split).shards:
            documents[shard.source] = documents.get(shard.source, 0) + shard.documents
        declared = {str(s["name"]): float(s.get("weight", 1.0)) for s in self.sources}
        weights = {name: declared.get(name, 1.0) for name, count in documents.items() if count > 0}
        total = sum(weights.values())
        if not weights or total <= 0:
            return {name: 1.0 / len(weights) for name in weights} if weights else {}
        return {name: weight / total for name, weight in weights.items()}

    def token_shares(self, split: str = "train") -> dict[str, float]:
        """{source: its share of the tokens the loader feeds}: its sampling weight times its
        mean document length in `split`, normalised to sum to 1 (tokens an objective adds per
        document, such as BOS/EOS, are left out: a relative error of about 1/mean length)."""
        documents: dict[str, int] = {}
        tokens: dict[str, int] = {}
        for shard in self.split(split).shards:
            documents[shard.source] = documents.get(shard.source, 0) + shard.documents
            tokens[shard.source] = tokens.get(shard.source, 0) + shard.tokens
        raw = {
            name: weight * tokens[name] / documents[name]
            for name, weight in self.source_weights(split).items()
        }
        total = sum(raw.values())
        return {name: value / total for name, value in raw.items()} if total > 0 else raw

    @property
    def manifest_path(self) -> str:
        return str(epath.Path(self.data_dir) / MANIFEST_FILENAME)

    def to_json(self) -> dict[str, Any]:
        """The manifest.json content (everything except `data_dir`)."""
        return {
            "format_version": self.format_version,
            "tokenizer": self.tokenizer_file,
            "vocab_size": self.vocab_size,
            "special_ids": self.special_ids.to_json(),
            "token_dtype": self.token_dtype,
            "sources": [dict(source) for source in self.sources],
            "splits": {
                name: {"shards": [_shard_json(shard) for shard in split.shards]}
                for name, split in self.splits.items()
            },
            "report": dict(self.report),
        }


def _shard_json(shard: ShardInfo) -> dict[str, Any]:
    return {
        "file": shard.file,
        "source": shard.source,
        "documents": shard.documents,
        "tokens": shard.tokens,
    }


def write_manifest(manifest: Manifest) -> str:
    """Writes `manifest.json` into `manifest.data_dir` atomically; returns its path.

    Call it only after every shard and the tokenizer are written: readers take the manifest's
    presence to mean the directory is complete.
    """
    path = epath.Path(manifest.manifest_path)
    # Readers see all of it or none: a rename on a disk, one object write on a bucket (where a
    # rename would be a copy and a delete).
    paths.write_text_atomic(path, json.dumps(manifest.to_json(), indent=2) + "\n")
    return str(path)


def read_manifest(data_dir: str | os.PathLike) -> Manifest:
    """Reads and validates `<data_dir>/manifest.json`.

    Raises:
      FileNotFoundError: no manifest (data not prepared, or preparation was interrupted).
      ValueError: the manifest is not valid JSON, has another format version, or lacks a key.
    """
    path = epath.Path(data_dir) / MANIFEST_FILENAME
    if not path.exists():
        raise FileNotFoundError(
            f"No prepared data at {data_dir}: {path} is missing; run the data preparation "
            "(jaxpretrain.curate.prepare.prepare) for this directory first."
        )
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{path} is not valid JSON ({error}); delete the directory and prepare it again."
        ) from error
    if not isinstance(content, dict):
        raise ValueError(f"{path} is not a JSON object; delete it and prepare the data again.")
    version = content.get("format_version")
    if version in (1, 2):
        raise ValueError(
            f"{path} was prepared with the earlier token layout (format_version={version}: "
            "sentinels 5..104, no UL2 paradigm tokens); delete the directory and prepare the "
            "data again with this version of jaxpretrain."
        )
    if version not in READABLE_VERSIONS:
        raise ValueError(
            f"{path} has format_version={version!r} but this code reads versions "
            f"{list(READABLE_VERSIONS)}; prepare the data again with this version of jaxpretrain."
        )
    try:
        sources = tuple(content.get("sources", ()))
        manifest = Manifest(
            data_dir=str(data_dir),
            tokenizer_file=str(content["tokenizer"]),
            vocab_size=int(content["vocab_size"]),
            special_ids=SpecialIds.from_json(content["special_ids"]),
            token_dtype=str(content["token_dtype"]),
            sources=sources,
            splits={
                name: SplitInfo(
                    shards=tuple(
                        ShardInfo(
                            file=str(shard["file"]),
                            documents=int(shard["documents"]),
                            tokens=int(shard["tokens"]),
                            source=str(shard["source"]),
                        )
                        for shard in split["shards"]
                    )
                )
                for name, split in content["splits"].items()
            },
            report=content.get("report", {}),
            format_version=version,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(
            f"{path} is missing or has a malformed entry ({type(error).__name__}: {error}); "
            "delete the directory and prepare the data again."
        ) from error
    if manifest.token_dtype != TOKEN_DTYPE:
        raise ValueError(
            f"{path} has token_dtype={manifest.token_dtype!r} but only {TOKEN_DTYPE!r} "
            "(little-endian int32) is supported; prepare the data again."
        )
    return manifest


def is_prepared(data_dir: str | os.PathLike) -> bool:
    """True when `data_dir` holds a readable manifest whose tokenizer and shards all exist.

    False when there is no manifest (never prepared, or interrupted before the end) or a file it
    names is missing. A manifest that exists but cannot be read raises (see `read_manifest`)
    rather than returning False, so a caller never overwrites data it does not understand.
    """
    if not (epath.Path(data_dir) / MANIFEST_FILENAME).exists():
        return False
    manifest = read_manifest(data_dir)
    paths = [manifest.tokenizer_path]
    for split in manifest.splits:
        paths.extend(manifest.shard_paths(split))
    return all(epath.Path(path).exists() for path in paths)
