"""Raw text sources: what to read (`SourceSpec`), its shards, and the documents in them.

A source is described by a frozen `SourceSpec` (usually one entry of a data-mixture config):

    spec = SourceSpec(name="web", type="jsonl", path="gs://bucket/web/*.jsonl.zst", weight=0.45)
    check_source(spec)                       # clear errors before any work starts
    for shard in list_input_shards(spec):    # deterministic; one per file / TFDS shard / ...
        shard_identity(spec, shard)          # changes when the shard's content may have changed
        for doc in iter_shard_documents(spec, shard, report): ...

Types: 'stdlib' (the embedded corpus of the interpreter's standard library, see
`stdlib_corpus.py`), 'files' (a file, directory or glob, local or gs://; by extension:
`*.jsonl`, `*.jsonl.gz`, `*.jsonl.zst`, `*.json.gz` (Dolma), `*.json.zst` one document per JSON
line, `*.parquet` one per row, anything else one per file), 'jsonl', 'parquet', 'tfds' and
'seqio' (extras; see `dataset_readers.py`).

Nothing is dropped silently: each unusable input (bad JSON, missing or non-string field, invalid
UTF-8, a document over `max_document_bytes`, an empty, binary or wrongly compressed file, a
hidden path, unreadable Parquet) is counted in a `SourceReport` with its file and line, a damaged
file once. `iter_documents(source, report)` is the older string form ('stdlib' or a path).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import math
import os
import pathlib
import platform
import re
import sys
from collections.abc import Iterator
from typing import Any

from jaxpretrain import paths
from jaxpretrain.curate import dataset_readers, file_readers
from jaxpretrain.curate.document import DOCUMENT_KINDS, Document
from jaxpretrain.curate.file_readers import CODE_SUFFIXES  # noqa: F401 - re-exported
from jaxpretrain.curate.stdlib_corpus import (  # noqa: F401 - re-exported
    STDLIB_SOURCE,
    iter_pydoc_topic_documents,
    iter_stdlib_documents,
    module_docstrings,
    stdlib_root,
)

SOURCE_TYPES = ("stdlib", "files", "jsonl", "parquet", "tfds", "seqio")
# Source names become directory names of the output shards.
_SOURCE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SOURCE_KINDS = ("auto", *DOCUMENT_KINDS)
_PATH_TYPES = ("files", "jsonl", "parquet")
# How many skipped inputs are listed one by one; all of them are always counted by reason.
MAX_LISTED_SKIPS = 1_000


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One raw text source. Construction validates every field (`validate_source_spec`).

    Attributes:
      name: the source's name: `Document.source`, the mixture key, the prefix of made-up ids.
      type: one of SOURCE_TYPES.
      path: a file, a directory (read recursively, sorted) or a glob (`data/web/*.jsonl.gz`,
        `**` recurses); required for 'files', 'jsonl', 'parquet'; the TFDS data_dir for 'tfds'.
      text_field / id_field: the record fields (JSONL keys, Parquet columns, TFDS/seqio features)
        holding the text and the id; a record without an id gets `<name>:<file>:<line>`.
      kind: 'auto' (code for code file extensions and stdlib modules, else text), 'text', 'code'.
      weight: the source's weight in the data mixture (>= 0, see `mixture.py`).
      tfds_name / tfds_split: dataset name (`lm1b`, `c4/en:3.1.0`) and split for type 'tfds'.
      seqio_task / seqio_split: a registered seqio Task name and split for type 'seqio'.
      max_documents: cap on documents yielded by `iter_source_documents`; -1 = all. Shards read
        in parallel are not capped (the caller caps its merged stream).
      filter_chain: the name of an entry of the data config's `filters.chains` that every
        document of this source goes through; '' = `filters.chain` for text and
        `filters.code_chain` for code.
      metadata_fields: record fields (JSONL keys, Parquet columns) carried into
        `Document.metadata` (a URL blocklist and URL-level dedup read `url`).
      max_document_bytes: a document (a JSON line, a Parquet row's text, a whole file) over
        this many bytes is skipped with a reason in the report, never loaded whole.
    """

    name: str
    type: str
    path: str = ""
    text_field: str = "text"
    id_field: str = "id"
    kind: str = "auto"
    weight: float = 1.0
    tfds_name: str = ""
    tfds_split: str = "train"
    seqio_task: str = ""
    seqio_split: str = "train"
    max_documents: int = -1
    filter_chain: str = ""
    metadata_fields: tuple[str, ...] = ("url",)
    max_document_bytes: int = file_readers.DEFAULT_MAX_DOCUMENT_BYTES

    def __post_init__(self) -> None:
        validate_source_spec(self)
        # A config gives a list; a tuple keeps the spec hashable (and cacheable).
        object.__setattr__(self, "metadata_fields", tuple(self.metadata_fields))


def is_valid_source_name(name: str) -> bool:
    """Whether `name` can name a source (it becomes a directory name of the output shards)."""
    return isinstance(name, str) and bool(_SOURCE_NAME_RE.match(name))


def spec_for(source: str, max_documents: int = -1) -> SourceSpec:
    """The spec that reads `source`: 'stdlib' (the embedded corpus) or an existing path.

    Raises:
      FileNotFoundError: `source` is neither 'stdlib' nor an existing path.
    """
    if source == STDLIB_SOURCE:
        return SourceSpec(name=STDLIB_SOURCE, type="stdlib", max_documents=max_documents)
    path = file_readers.as_input_path(source)
    if not path.exists():
        raise FileNotFoundError(
            f"Data source {source!r} does not exist; pass 'stdlib' for the embedded corpus "
            "or an existing directory, gs:// folder, or text, JSON-lines or Parquet file."
        )
    name = path.name if is_valid_source_name(path.name) else "files"
    return SourceSpec(name=name, type="files", path=str(path), max_documents=max_documents)


def validate_source_spec(spec: SourceSpec) -> None:
    """Raises a one-sentence ValueError naming the first invalid field and its value."""

    def fail(field: str, expected: str) -> None:
        value = getattr(spec, field)
        raise ValueError(f"Source {spec.name!r} has {field}={value!r}; {expected}.")

    if not is_valid_source_name(spec.name):
        fail("name", "use letters, digits, '_', '.' or '-' (it names the output directory)")
    if spec.type not in SOURCE_TYPES:
        fail("type", f"use one of {SOURCE_TYPES}")
    if spec.kind not in SOURCE_KINDS:
        fail("kind", f"use one of {SOURCE_KINDS}")
    if spec.type in _PATH_TYPES and not spec.path:
        fail("path", f"type {spec.type!r} needs a file, directory or glob pattern")
    for field in ("text_field", "id_field"):
        if not isinstance(getattr(spec, field), str) or not getattr(spec, field):
            fail(field, "name the record field as a non-empty string")
    if isinstance(spec.weight, bool) or not isinstance(spec.weight, int | float):
        fail("weight", "use a finite number >= 0")
    if not math.isfinite(spec.weight) or spec.weight < 0:
        fail("weight", "use a finite number >= 0")
    if spec.type == "tfds" and not spec.tfds_name:
        fail("tfds_name", "type 'tfds' needs a dataset name such as 'lm1b'")
    if spec.type == "seqio" and not spec.seqio_task:
        fail("seqio_task", "type 'seqio' needs the name of a registered seqio Task")
    if not isinstance(spec.max_documents, int) or spec.max_documents < -1:
        fail("max_documents", "use -1 (all) or a count >= 0")
    if not isinstance(spec.filter_chain, str):
        fail("filter_chain", "name an entry of filters.chains, or '' for the defaults by kind")
    if not isinstance(spec.metadata_fields, list | tuple) or not all(
        isinstance(field, str) and field for field in spec.metadata_fields
    ):
        fail("metadata_fields", "list record field names as non-empty strings")
    count = spec.max_document_bytes
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        fail("max_document_bytes", "use a byte count >= 1 (the default is 8 MiB)")
    if paths.is_remote(spec.path) and "**" in spec.path:
        fail("path", "'**' is not supported on object stores; name the folder (read recursively)")


@dataclasses.dataclass(frozen=True)
class InputShard:
    """One independently readable piece of a source.

    `location` is a file or directory path ('files', 'jsonl', 'parquet'), a TFDS split range
    (`train[0:1024]`), a seqio `<split>:<i>/<n>`, or 'stdlib'. `index` is its position in
    `list_input_shards`.
    """

    source: str
    index: int
    location: str


@dataclasses.dataclass(frozen=True)
class SkippedInput:
    """An input that produced no document: `line` is 1-based, None for a whole file."""

    path: str
    line: int | None
    reason: str


@dataclasses.dataclass
class SourceReport:
    """What a source produced and what it skipped; `to_json` goes into the manifest's report."""

    source: str
    documents: int = 0
    skipped_by_reason: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    skipped: list[SkippedInput] = dataclasses.field(default_factory=list)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped_by_reason.values())

    def skip(self, path: str | os.PathLike, line: int | None, reason: str) -> None:
        """Records one unusable input; `reason` should be short and stable (it is a counter key)."""
        self.skipped_by_reason[reason] += 1
        if len(self.skipped) < MAX_LISTED_SKIPS:
            self.skipped.append(SkippedInput(str(path), line, reason))

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "documents": self.documents,
            "num_skipped": self.num_skipped,
            "skipped_by_reason": dict(sorted(self.skipped_by_reason.items())),
            "skipped": [dataclasses.asdict(skipped) for skipped in self.skipped],
            "skipped_list_truncated": self.num_skipped > len(self.skipped),
        }


def check_source(spec: SourceSpec) -> None:
    """Fails fast, before any work, when `spec` cannot be read.

    Raises:
      ValueError: an invalid field (see `validate_source_spec`).
      FileNotFoundError: the path does not exist, matches no file or holds no file; or TFDS has
        no such dataset.
      PermissionError: a file or directory named by the path cannot be read.
      ImportError: a 'tfds' or 'seqio' source without its extra installed.
      KeyError: the seqio task or split is not registered.
    """
    validate_source_spec(spec)
    if spec.type in _PATH_TYPES:
        _check_path_source(spec)
    elif spec.type == "tfds":
        dataset_readers.tfds_builder(spec)
    elif spec.type == "seqio":
        dataset_readers.seqio_shard_locations(spec)


def _check_path_source(spec: SourceSpec) -> None:
    """`check_source` for 'files', 'jsonl', 'parquet': the path lists at least one readable file."""
    try:
        _, inputs = file_readers.expand_path(spec.path)
        shards = list_input_shards(spec) if inputs else []
    except Exception as error:  # noqa: BLE001 - the store's client raises its own types
        # (auth, HTTP); for a URL every listing failure is one line naming the path.
        if not paths.is_remote(spec.path):
            raise
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise FileNotFoundError(
            f"Source {spec.name!r}: path {spec.path!r} cannot be listed ({detail}); check the "
            "URL and that your credentials can read it (gcloud auth application-default login)."
        ) from error
    if not inputs:
        missing = "matches no file" if file_readers.is_glob_pattern(spec.path) else "does not exist"
        raise FileNotFoundError(
            f"Source {spec.name!r}: path {spec.path!r} {missing}; fix the source's `path`."
        )
    for item in inputs:
        # Object stores have no permission bits: an unreadable object is reported when read.
        if isinstance(item, pathlib.Path) and not os.access(
            item, os.R_OK | (os.X_OK if item.is_dir() else 0)
        ):
            raise PermissionError(
                f"Source {spec.name!r}: {str(item)!r} is not readable; fix its permissions."
            )
    if not shards:
        raise FileNotFoundError(
            f"Source {spec.name!r}: path {spec.path!r} holds no file; fix the source's `path`."
        )


def list_input_shards(spec: SourceSpec) -> list[InputShard]:
    """The source's shards in a fixed order (the same on every machine and every call).

    'files'/'jsonl'/'parquet': one per file, directories walked in sorted order (hidden entries
    are listed too so that reading them records why they are skipped); 'tfds': one per stored
    file shard as an index range; 'seqio': one per file shard of the task's source; 'stdlib': one.
    """
    if spec.type == "stdlib":
        locations = [STDLIB_SOURCE]
    elif spec.type == "tfds":
        locations = dataset_readers.tfds_split_ranges(spec)
    elif spec.type == "seqio":
        locations = dataset_readers.seqio_shard_locations(spec)
    else:
        _, inputs = file_readers.expand_path(spec.path)
        locations = []
        for item in inputs:
            if item.is_dir():
                walked = file_readers.sorted_files(item, excluded_dirs=frozenset(), report=None)
                locations.extend(str(path) for path in walked)
            else:
                locations.append(str(item))
    return [InputShard(spec.name, index, location) for index, location in enumerate(locations)]


def shard_identity(spec: SourceSpec, shard: InputShard) -> str:
    """A string that changes whenever the shard's content may have changed; a rerun redoes the
    shard's work unit exactly when it differs from the one recorded.

    Files: path, size and modification time (nanoseconds and inode on a local disk, where a
    whole-second mtime would miss a rewrite within the second; the object's generation on
    gs://). 'stdlib': the interpreter's version and library path. 'tfds': the dataset's full
    name with version, data_dir and split range. 'seqio': task, split and shard.
    """
    if spec.type == "stdlib":
        return f"stdlib:{platform.python_implementation()} {sys.version} at {stdlib_root()}"
    if spec.type == "tfds":
        return f"tfds:{_tfds_full_name(spec)} data_dir={spec.path!r} split={shard.location}"
    if spec.type == "seqio":
        return f"seqio:{spec.seqio_task} shard={shard.location}"
    return file_readers.file_identity(shard.location)


@functools.lru_cache(maxsize=64)
def _tfds_full_name(spec: SourceSpec) -> str:
    """`name/config/version` of the dataset (C4 has 1,024 shards: its builder is made once)."""
    return dataset_readers.tfds_builder(spec).info.full_name


def iter_shard_documents(
    spec: SourceSpec, shard: InputShard, report: SourceReport
) -> Iterator[Document]:
    """Yields the documents of one shard in a fixed order; never raises for bad data.

    Every document has non-empty text and `source == spec.name`; ids come from the record's
    `spec.id_field` when present, else `<name>:<relative file>:<line>` (1-based line of JSONL,
    row number of Parquet; a whole file is `<name>:<relative file>`). Unusable inputs are
    recorded in `report` with file and line; `report.documents` counts what was yielded.
    """
    if spec.type == "stdlib":
        documents = iter_stdlib_documents(report, source_name=spec.name)
        if spec.kind != "auto":
            documents = (document.replace(kind=spec.kind) for document in documents)
    elif spec.type == "tfds":
        documents = dataset_readers.iter_tfds_shard(spec, shard, report)
    elif spec.type == "seqio":
        documents = dataset_readers.iter_seqio_shard(spec, shard, report)
    else:
        documents = _iter_file_shard(spec, file_readers.as_input_path(shard.location), report)
    for document in documents:
        report.documents += 1
        yield document


def iter_source_documents(spec: SourceSpec, report: SourceReport) -> Iterator[Document]:
    """All shards of `spec` in order, at most `spec.max_documents` documents (-1 = all)."""
    documents = itertools.chain.from_iterable(
        iter_shard_documents(spec, shard, report) for shard in list_input_shards(spec)
    )
    if spec.max_documents >= 0:
        documents = itertools.islice(documents, spec.max_documents)
    yield from documents


def _file_format(spec: SourceSpec, file_path: file_readers.InputPath) -> str | None:
    """'jsonl', 'parquet' or 'text' for a file of `spec`, None if the type does not read it."""
    name = file_path.name.lower()
    by_suffix = (
        "jsonl"
        if name.endswith(file_readers.JSONL_SUFFIXES)
        else "parquet"
        if name.endswith(file_readers.PARQUET_SUFFIXES)
        else "text"
    )
    if spec.type == "files":
        return by_suffix
    named_directly = file_readers.as_input_path(spec.path) == file_path
    return spec.type if named_directly or by_suffix == spec.type else None


def _iter_file_shard(
    spec: SourceSpec, file_path: file_readers.InputPath, report: SourceReport
) -> Iterator[Document]:
    named_directly = file_readers.as_input_path(spec.path) == file_path
    reason = None if named_directly else file_readers.hidden_reason(file_path)
    if reason is not None:
        report.skip(file_path, None, reason)
        return
    file_format = _file_format(spec, file_path)
    if file_format is None:
        suffixes = {"jsonl": file_readers.JSONL_SUFFIXES, "parquet": file_readers.PARQUET_SUFFIXES}
        report.skip(file_path, None, f"not a {spec.type} file ({', '.join(suffixes[spec.type])})")
        return
    id_prefix = f"{spec.name}:{_relative_name(spec.path, file_path)}"
    if file_format == "text":
        yield from file_readers.iter_text_file(spec, file_path, id_prefix, report)
    elif file_format == "jsonl":
        yield from file_readers.iter_jsonl_file(spec, file_path, id_prefix, report)
    else:
        yield from file_readers.iter_parquet_file(spec, file_path, id_prefix, report)


def _relative_name(path: str, file_path: file_readers.InputPath) -> str:
    """`file_path` relative to the directory ids are relative to (see `_id_root`)."""
    root = _id_root(path)
    if isinstance(file_path, pathlib.Path):
        return pathlib.Path(os.path.relpath(file_path, root)).as_posix()
    return str(file_path).removeprefix(str(root).rstrip("/") + "/")


# Cached: on an object store the directory check is a request, and every shard asks it.
@functools.lru_cache(maxsize=256)
def _id_root(path: str) -> file_readers.InputPath:
    """The directory ids are relative to: the directory itself, a file's parent, a glob's root."""
    if file_readers.is_glob_pattern(path):
        return file_readers.glob_root(path)
    named = file_readers.as_input_path(path)
    return named if named.is_dir() else named.parent


def iter_documents(source: str, report: SourceReport) -> Iterator[Document]:
    """Yields the documents of `source` ('stdlib', a directory or a file) in a fixed order.

    The string form of a source: 'stdlib' is `SourceSpec("stdlib", "stdlib")`, a path is a
    'files' source named after the path's last component. Every document has non-empty text.
    Skipped inputs are recorded in `report`, and `report.documents` counts what was yielded.

    Raises:
      FileNotFoundError: `source` is neither 'stdlib' nor an existing path.
    """
    spec = spec_for(source)
    yield from iter_source_documents(spec, report)
