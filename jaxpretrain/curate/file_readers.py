"""Readers for input files, local or on an object store (gs://): plain text and code files,
JSON lines (plain, gzip or zstd), and Parquet.

Each reader yields `Document`s from one file and records every input it cannot use in a
`SourceReport` with the file and its 1-based line (JSON lines) or row number (Parquet); it never
raises for bad data. A damaged file (binary, not the compression its name says) is one record,
not one per line. No document over `SourceSpec.max_document_bytes` is held in memory whole:
JSON lines are read in bounded pieces and an overlong line is dropped as it streams past.
`sorted_files` and `expand_path` turn a source path (file, directory or glob pattern) into the
files to read, in a fixed order. URLs go through etils epath (see `jaxpretrain/paths.py`).
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import io
import itertools
import json
import os
import pathlib
import zlib
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

import fsspec
import zstandard
from etils import epath

from jaxpretrain import paths
from jaxpretrain.curate.document import Document

if TYPE_CHECKING:
    from jaxpretrain.curate.sources import SourceReport, SourceSpec

# A local file is a pathlib.Path, an object (gs://bucket/x) an epath.Path.
InputPath = pathlib.Path | epath.Path

# JSON lines; `.json.gz` is the Dolma layout (one JSON object per line, gzipped).
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst")
PARQUET_SUFFIXES = (".parquet",)
# Files with these suffixes become `kind='code'` documents (cleaning keeps their whitespace).
CODE_SUFFIXES = frozenset(
    {".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp", ".rs", ".go", ".java", ".js", ".ts"}
    | {".sh", ".rb", ".jl", ".scala", ".kt", ".swift", ".lua", ".r", ".sql", ".toml", ".yaml"}
)
# Far above any real web page or book chapter (FineWeb's longest pages are ~1 MB), far below
# what would stall a worker: a 40 MB line took 44 s and 1.9 GB before documents were capped.
DEFAULT_MAX_DOCUMENT_BYTES = 8 * 2**20
OVERSIZED_REASON = "document over max_document_bytes"
# Bytes inspected for NUL to call a file binary (git's heuristic).
_BINARY_SNIFF_BYTES = 8_192
# Read buffer of decompressed input, and the piece size in which an overlong line is dropped.
_READ_BUFFER_BYTES = 2**20
# Parquet rows decoded at a time: memory stays bounded by this, not by the file or row group.
PARQUET_BATCH_ROWS = 1_024
_GLOB_MAGIC = frozenset("*?[")
# Object metadata that changes on every write of an object, most precise first.
_OBJECT_VERSION_KEYS = ("generation", "ETag", "etag", "mtime", "updated", "LastModified")
# What a damaged compressed stream raises part way.
_STREAM_ERRORS = (OSError, EOFError, zlib.error, zstandard.ZstdError)


# ------------------------------------------------------------------------------------ listing


def is_glob_pattern(path: str) -> bool:
    """True when `path` contains glob wildcards (`*`, `?`, `[`)."""
    return any(char in _GLOB_MAGIC for char in path)


def as_input_path(location: str) -> InputPath:
    """`location` as a path: an epath.Path for a URL, else a local pathlib.Path (`~` expanded)."""
    if paths.is_remote(location):
        return epath.Path(location)
    return pathlib.Path(location).expanduser()


def glob_root(pattern: str) -> InputPath:
    """The directory a glob pattern starts from: its leading components without wildcards."""
    if paths.is_remote(pattern):
        fixed = itertools.takewhile(lambda part: not is_glob_pattern(part), pattern.split("/"))
        return epath.Path("/".join(fixed))
    parts = pathlib.Path(pattern).expanduser().parts
    fixed = list(itertools.takewhile(lambda part: not is_glob_pattern(part), parts))
    return pathlib.Path(*fixed) if fixed else pathlib.Path(".")


def expand_path(path: str) -> tuple[InputPath, list[InputPath]]:
    """(root, inputs): what a source path names, in sorted order; ids are relative to root.

    A file gives itself (root = its directory); a directory gives itself (root = itself) and
    the caller walks it with `sorted_files`; a glob gives its sorted matches (hidden entries are
    not matched; `**` recurses on a local disk). Empty when nothing exists at `path`.
    """
    if is_glob_pattern(path):
        root = glob_root(path)
        if paths.is_remote(path):
            relative = path.removeprefix(str(root)).lstrip("/")
            return root, sorted(root.glob(relative), key=str)
        matches = sorted(glob.glob(os.path.expanduser(path), recursive=True))
        return root, [pathlib.Path(match) for match in matches]
    resolved = as_input_path(path)
    if resolved.is_dir():
        return resolved, [resolved]
    if resolved.exists():
        return resolved.parent, [resolved]
    return resolved, []


def sorted_files(
    root: InputPath, *, excluded_dirs: frozenset[str], report: SourceReport | None
) -> Iterator[InputPath]:
    """Regular files under `root` in walk order (a directory's files sorted, then its
    subdirectories sorted). Hidden entries are recorded in `report`, not read; without a report
    they are yielded so the reader can record them (see `hidden_reason`).
    """
    if isinstance(root, epath.Path) and paths.is_remote(root):
        yield from _sorted_object_files(root, excluded_dirs, report)
        return
    for directory, dir_names, file_names in os.walk(root):
        kept_dirs = []
        for name in sorted(dir_names):
            if name in excluded_dirs:
                continue
            if name.startswith("."):
                # One record for the whole hidden directory (.git holds thousands of files).
                yield from _hidden(pathlib.Path(directory, name), "hidden directory", report)
                continue
            kept_dirs.append(name)
        dir_names[:] = kept_dirs  # os.walk descends only into these, in this order.
        for name in sorted(file_names):
            file_path = pathlib.Path(directory, name)
            if report is not None and name.startswith("."):
                report.skip(file_path, None, "hidden file")
            elif report is not None and not file_path.is_file():
                report.skip(file_path, None, "not a regular file")
            else:
                yield file_path


def _hidden(path: InputPath, reason: str, report: SourceReport | None) -> Iterator[InputPath]:
    if report is None:
        yield path
    else:
        report.skip(path, None, reason)


def _sorted_object_files(
    root: epath.Path, excluded_dirs: frozenset[str], report: SourceReport | None
) -> Iterator[InputPath]:
    """`sorted_files` on an object store, from one recursive listing (one request per thousand
    objects, where walking folder by folder costs a request per folder and per object)."""
    filesystem, root_in_fs = fsspec.core.url_to_fs(str(root))
    root_in_fs = root_in_fs.rstrip("/")
    relative_parts = [
        tuple(found.removeprefix(root_in_fs).strip("/").split("/"))
        for found in filesystem.find(root_in_fs)
    ]
    # Walk order: at each level a directory's files (0) before its subdirectories (1).
    relative_parts.sort(key=lambda parts: [(1, p) for p in parts[:-1]] + [(0, parts[-1])])
    reported_hidden: set[tuple[str, ...]] = set()
    for parts in relative_parts:
        folders = parts[:-1]
        if any(folder in excluded_dirs for folder in folders):
            continue
        hidden_depth = next((i for i, f in enumerate(folders) if f.startswith(".")), None)
        if hidden_depth is not None:
            hidden = folders[: hidden_depth + 1]
            if hidden not in reported_hidden:
                reported_hidden.add(hidden)
                yield from _hidden(root.joinpath(*hidden), "hidden directory", report)
        elif parts[-1].startswith("."):
            yield from _hidden(root.joinpath(*parts), "hidden file", report)
        else:
            yield root.joinpath(*parts)


def hidden_reason(path: InputPath) -> str | None:
    """Why `path` (as listed by `sorted_files` without a report) is not read, else None."""
    if path.name.startswith("."):
        return "hidden directory" if path.is_dir() else "hidden file"
    if isinstance(path, pathlib.Path) and not path.is_file():
        return "not a regular file"
    return None


def file_identity(path: str) -> str:
    """`<path> size=<bytes> <version>`: the version changes whenever the file is rewritten.

    Local files use the nanosecond mtime and inode (epath's whole-second mtime would miss a
    rewrite within the same second); objects use what their store bumps on every write (GCS's
    generation, S3's ETag), falling back to the modification time.
    """
    try:
        if not paths.is_remote(path):
            stat = os.stat(path)
            # ctime too: fixing an unreadable file's permissions changes nothing else.
            return (
                f"{path} size={stat.st_size} mtime_ns={stat.st_mtime_ns} "
                f"ctime_ns={stat.st_ctime_ns} inode={stat.st_ino}"
            )
        filesystem, path_in_fs = fsspec.core.url_to_fs(path)
        info = filesystem.info(path_in_fs)
    except OSError as error:
        # Gone or unreadable now (a broken link): redone, and reported, once it is back.
        return f"{path} unreadable ({type(error).__name__})"
    for key in _OBJECT_VERSION_KEYS:
        if info.get(key) not in (None, ""):
            return f"{path} size={info.get('size')} {key}={info[key]}"
    return f"{path} size={info.get('size')}"


def _file_size(path: InputPath) -> int:
    return path.stat().st_size if isinstance(path, pathlib.Path) else path.stat().length


# ------------------------------------------------------------------------------ whole files


def read_text_file(
    file_path: InputPath, report: SourceReport, max_bytes: int | None = None
) -> str | None:
    """The file's UTF-8 text, or None after recording why it cannot be a document (a file
    over `max_bytes` is recorded without being read)."""
    try:
        if max_bytes is not None and _file_size(file_path) > max_bytes:
            report.skip(file_path, None, OVERSIZED_REASON)
            return None
        data = file_path.read_bytes()
    except OSError as error:
        report.skip(file_path, None, f"unreadable file ({error.strerror or type(error).__name__})")
        return None
    if b"\0" in data[:_BINARY_SNIFF_BYTES]:
        report.skip(file_path, None, "binary file")
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        report.skip(file_path, None, "invalid UTF-8")
        return None
    if not text.strip():
        report.skip(file_path, None, "empty file")
        return None
    return text


def iter_text_file(
    spec: SourceSpec, file_path: InputPath, doc_id: str, report: SourceReport
) -> Iterator[Document]:
    """One document of the whole file; `kind='auto'` means code for a code extension."""
    text = read_text_file(file_path, report, spec.max_document_bytes)
    if text is None:
        return
    kind = spec.kind
    if kind == "auto":
        kind = (
            "code"
            if pathlib.PurePosixPath(file_path.name).suffix.lower() in CODE_SUFFIXES
            else "text"
        )
    yield Document(doc_id, text, source=spec.name, kind=kind)


# ------------------------------------------------------------------------------------ records


def record_text(
    record: dict[str, Any], text_field: str, where: tuple[Any, int], report: SourceReport
) -> str | None:
    """The non-empty string `record[text_field]` (bytes are decoded as UTF-8), or None after
    recording why not at `where` = (file, line or row number)."""
    text = record.get(text_field)
    if text is None:
        reason = f"missing {text_field!r} field" if text_field not in record else "null text"
        report.skip(*where, reason)
        return None
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            report.skip(*where, "invalid UTF-8")
            return None
    if not isinstance(text, str):
        report.skip(*where, f"{text_field!r} field is not a string")
        return None
    if not text.strip():
        report.skip(*where, "empty text")
        return None
    return text


def record_id(record: dict[str, Any], id_field: str) -> str | None:
    """`record[id_field]` as a string, None when absent or empty (the caller makes one)."""
    value = record.get(id_field)
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return str(value) if value not in (None, "") else None


def record_metadata(record: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """The record's non-null `fields` as JSON values (bytes decoded, numpy scalars unwrapped,
    anything else such as a Parquet timestamp as its string), for `Document.metadata`."""
    metadata = {}
    for field in fields:
        value = record.get(field)
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        elif hasattr(value, "item") and getattr(value, "shape", None) == ():
            value = value.item()  # a numpy scalar from TFDS or seqio
        if value is None:
            continue
        if not isinstance(value, str | int | float | bool | list | dict):
            value = str(value)
        metadata[field] = value
    return metadata


def is_over_cap(text: str, max_bytes: int) -> bool:
    """Whether `text` takes more than `max_bytes` bytes as UTF-8 (encoded only when in doubt)."""
    if len(text) > max_bytes:
        return True
    return 4 * len(text) > max_bytes and len(text.encode("utf-8")) > max_bytes


def record_document(
    spec: SourceSpec,
    record: dict[str, Any],
    where: tuple[Any, int],
    id_prefix: str,
    report: SourceReport,
) -> Iterator[Document]:
    """The record's document (none after recording why at `where` = (file, line or row)): its
    `spec.text_field` as text, `spec.id_field` as id (else `<id_prefix>:<line or row>`) and its
    `spec.metadata_fields` as metadata; over `spec.max_document_bytes` it is skipped."""
    text = record_text(record, spec.text_field, where, report)
    if text is None:
        return
    if is_over_cap(text, spec.max_document_bytes):
        report.skip(*where, OVERSIZED_REASON)
        return
    yield Document(
        record_id(record, spec.id_field) or f"{id_prefix}:{where[1]}",
        text,
        source=spec.name,
        kind="text" if spec.kind == "auto" else spec.kind,
        metadata=record_metadata(record, tuple(spec.metadata_fields)),
    )


# -------------------------------------------------------------------------------- JSON lines


def iter_jsonl_file(
    spec: SourceSpec, file_path: InputPath, id_prefix: str, report: SourceReport
) -> Iterator[Document]:
    """One document per JSON line with a non-empty string `spec.text_field`.

    Ids come from `spec.id_field` when present, else `<id_prefix>:<line>` (1-based); the
    record's `spec.metadata_fields` go into `Document.metadata`. A line over
    `spec.max_document_bytes` is skipped unread. A file that is binary or not in its
    compression format is one record; a stream damaged part way keeps the lines before the damage
    and records the rest as unreadable.
    """
    line_number = 0
    try:
        with file_path.open("rb") as raw, _decompressed(raw, file_path.name) as stream:
            if b"\0" in stream.peek(_BINARY_SNIFF_BYTES)[:_BINARY_SNIFF_BYTES]:
                report.skip(file_path, None, "binary file")
                return
            for line_number, raw_line in _bounded_lines(stream, spec.max_document_bytes):
                where = (file_path, line_number)
                if raw_line is None:
                    report.skip(*where, OVERSIZED_REASON)
                    continue
                record = _parse_jsonl_line(raw_line, where, report)
                if record is not None:
                    yield from record_document(spec, record, where, id_prefix, report)
    except _STREAM_ERRORS as error:
        if line_number == 0:
            report.skip(file_path, None, f"unreadable file ({type(error).__name__})")
        else:
            report.skip(
                file_path, line_number + 1, f"unreadable from here on ({type(error).__name__})"
            )
        return
    if line_number == 0:
        report.skip(file_path, None, "empty file")


def _decompressed(raw: IO[bytes], name: str) -> io.BufferedReader:
    """`raw`'s bytes decompressed by the file name's suffix (.gz, .zst), behind a read buffer;
    closing it leaves `raw` open."""
    stream: IO[bytes] = raw
    if name.lower().endswith(".gz"):
        stream = gzip.GzipFile(fileobj=raw)
    elif name.lower().endswith(".zst"):
        # Across frames: zstd files written in parallel (pzstd, `cat a.zst b.zst`) hold several.
        stream = zstandard.ZstdDecompressor().stream_reader(
            raw, read_across_frames=True, closefd=False
        )
    return io.BufferedReader(stream, buffer_size=_READ_BUFFER_BYTES)


def _bounded_lines(stream: io.BufferedReader, max_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """(1-based line number, line) for each line; None for a line over `max_bytes`, whose rest
    is read in `_READ_BUFFER_BYTES` pieces and dropped, so no more than `max_bytes` is held."""
    line_number = 0
    while line := stream.readline(max_bytes + 1):
        line_number += 1
        if len(line) <= max_bytes or line.endswith(b"\n"):
            yield line_number, line
            continue
        while (rest := stream.readline(_READ_BUFFER_BYTES)) and not rest.endswith(b"\n"):
            pass
        yield line_number, None


def _parse_jsonl_line(
    raw_line: bytes, where: tuple[InputPath, int], report: SourceReport
) -> dict[str, Any] | None:
    """The JSON object on one line, or None after recording why it is unusable."""
    try:
        line = raw_line.decode("utf-8")
    except UnicodeDecodeError:
        report.skip(*where, "invalid UTF-8")
        return None
    if not line.strip():
        report.skip(*where, "blank line")
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        report.skip(*where, "malformed JSON")
        return None
    if not isinstance(record, dict):
        report.skip(*where, "JSON line is not an object")
        return None
    if "\\u" in line and _has_lone_surrogate(record):
        # JSON may escape half of a UTF-16 pair (`\ud800`): no UTF-8 text can hold it, so
        # every later write of the document would fail far from this line.
        report.skip(*where, "invalid Unicode (lone surrogate)")
        return None
    return record


def _has_lone_surrogate(record: dict[str, Any]) -> bool:
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# ------------------------------------------------------------------------------------ Parquet


def iter_parquet_file(
    spec: SourceSpec, file_path: InputPath, id_prefix: str, report: SourceReport
) -> Iterator[Document]:
    """One document per row with a non-empty string (or UTF-8 binary) `spec.text_field`.

    Reads `PARQUET_BATCH_ROWS` rows at a time and only the text, id and metadata columns. Ids
    come from `spec.id_field` when that column exists and is set, else `<id_prefix>:<row>`
    (1-based row number, as JSON lines); a row over `spec.max_document_bytes` is skipped. A
    missing text column or an unreadable file is one record for the file; damage part way keeps
    the rows before it.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    with contextlib.ExitStack() as stack:
        try:
            # A local path lets Arrow read natively; an object is read through epath.
            is_local = isinstance(file_path, pathlib.Path)
            handle = str(file_path) if is_local else stack.enter_context(file_path.open("rb"))
            parquet_file = pq.ParquetFile(handle)
        except (OSError, pa.ArrowException) as error:
            report.skip(file_path, None, f"unreadable parquet ({type(error).__name__})")
            return
        columns = parquet_file.schema_arrow.names
        if spec.text_field not in columns:
            report.skip(file_path, None, f"missing {spec.text_field!r} column")
            return
        if parquet_file.metadata.num_rows == 0:
            report.skip(file_path, None, "empty file")
            return
        wanted = list(dict.fromkeys([spec.text_field, spec.id_field, *spec.metadata_fields]))
        wanted = [column for column in wanted if column in columns]
        row_number = 0
        try:
            for batch in parquet_file.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=wanted):
                for record in batch.to_pylist():
                    row_number += 1
                    where = (file_path, row_number)
                    yield from record_document(spec, record, where, id_prefix, report)
        except (OSError, pa.ArrowException) as error:
            reason = f"unreadable from here on ({type(error).__name__})"
            report.skip(file_path, row_number + 1, reason)
