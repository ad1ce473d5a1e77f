"""Readers for local files: plain text and code files, JSONL (optionally gzipped), and Parquet.

Each reader yields `Document`s from one file and records every input it cannot use in a
`SourceReport` with the file and its 1-based line (JSONL) or row number (Parquet); it never
raises for bad data. `sorted_files` and `expand_path` turn a source path (file, directory or
glob pattern) into the files to read, in a fixed order.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import pathlib
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from jaxpretrain.curate.document import Document

if TYPE_CHECKING:
    from jaxpretrain.curate.sources import SourceReport

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
PARQUET_SUFFIXES = (".parquet",)
# Files with these suffixes become `kind='code'` documents (cleaning keeps their whitespace).
CODE_SUFFIXES = frozenset(
    {".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp", ".rs", ".go", ".java", ".js", ".ts"}
    | {".sh", ".rb", ".jl", ".scala", ".kt", ".swift", ".lua", ".r", ".sql", ".toml", ".yaml"}
)
# Bytes inspected for NUL to call a file binary (git's heuristic).
_BINARY_SNIFF_BYTES = 8_192
# Parquet rows decoded at a time: memory stays bounded by this, not by the file or row group.
PARQUET_BATCH_ROWS = 1_024
_GLOB_MAGIC = frozenset("*?[")


def is_glob_pattern(path: str) -> bool:
    """True when `path` contains glob wildcards (`*`, `?`, `[`)."""
    return any(char in _GLOB_MAGIC for char in path)


def glob_root(pattern: str) -> pathlib.Path:
    """The directory a glob pattern starts from: its leading components without wildcards."""
    parts = pathlib.Path(pattern).expanduser().parts
    fixed = []
    for part in parts:
        if is_glob_pattern(part):
            break
        fixed.append(part)
    return pathlib.Path(*fixed) if fixed else pathlib.Path(".")


def expand_path(path: str) -> tuple[pathlib.Path, list[pathlib.Path]]:
    """(root, inputs): what a source path names, in sorted order; ids are relative to root.

    A file gives itself (root = its directory); a directory gives itself (root = itself) and
    the caller walks it with `sorted_files`; a glob gives its sorted matches (hidden entries are
    not matched, `**` recurses). Empty when nothing exists at `path`.
    """
    if is_glob_pattern(path):
        matches = sorted(glob.glob(os.path.expanduser(path), recursive=True))
        return glob_root(path), [pathlib.Path(match) for match in matches]
    resolved = pathlib.Path(path).expanduser()
    if resolved.is_file():
        return resolved.parent, [resolved]
    if resolved.is_dir():
        return resolved, [resolved]
    return resolved, []


def sorted_files(
    root: pathlib.Path, *, excluded_dirs: frozenset[str], report: SourceReport | None
) -> Iterator[pathlib.Path]:
    """Regular files under `root` in walk order (a directory's files sorted, then its
    subdirectories sorted). Hidden entries are recorded in `report`, not read; without a report
    they are yielded so the reader can record them (see `hidden_reason`).
    """
    for directory, dir_names, file_names in os.walk(root):
        kept_dirs = []
        for name in sorted(dir_names):
            if name in excluded_dirs:
                continue
            if name.startswith("."):
                # One record for the whole hidden directory (.git holds thousands of files).
                hidden = pathlib.Path(directory, name)
                if report is None:
                    yield hidden
                else:
                    report.skip(hidden, None, "hidden directory")
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


def hidden_reason(path: pathlib.Path) -> str | None:
    """Why `path` (as listed by `sorted_files` without a report) is not read, else None."""
    if path.name.startswith("."):
        return "hidden directory" if path.is_dir() else "hidden file"
    if not path.is_file():
        return "not a regular file"
    return None


def read_text_file(file_path: pathlib.Path, report: SourceReport) -> str | None:
    """The file's UTF-8 text, or None after recording why it cannot be a document."""
    try:
        data = file_path.read_bytes()
    except OSError as error:
        report.skip(file_path, None, f"unreadable file ({error.strerror})")
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
    file_path: pathlib.Path, doc_id: str, source_name: str, kind: str, report: SourceReport
) -> Iterator[Document]:
    """One document of the whole file; `kind='auto'` means code for a code extension."""
    text = read_text_file(file_path, report)
    if text is None:
        return
    if kind == "auto":
        kind = "code" if file_path.suffix.lower() in CODE_SUFFIXES else "text"
    yield Document(doc_id, text, source=source_name, kind=kind)


def record_text(
    record: dict[str, Any], text_field: str, where: tuple[pathlib.Path, int], report: SourceReport
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


def iter_jsonl_file(
    file_path: pathlib.Path,
    id_prefix: str,
    source_name: str,
    kind: str,
    report: SourceReport,
    *,
    text_field: str = "text",
    id_field: str = "id",
) -> Iterator[Document]:
    """One document per JSON line with a non-empty string `text_field`.

    Ids come from `id_field` when present, else `<id_prefix>:<line>` (1-based). A truncated or
    corrupt gzip stream keeps the lines before the damage and records the rest as unreadable.
    """
    opener = gzip.open if file_path.name.endswith(".gz") else open
    kind = "text" if kind == "auto" else kind
    line_number = 0
    try:
        with opener(file_path, "rb") as lines:
            for line_number, raw_line in enumerate(lines, start=1):
                record = _parse_jsonl_line(raw_line, file_path, line_number, report)
                if record is None:
                    continue
                text = record_text(record, text_field, (file_path, line_number), report)
                if text is not None:
                    doc_id = record_id(record, id_field) or f"{id_prefix}:{line_number}"
                    yield Document(doc_id, text, source=source_name, kind=kind)
    except (OSError, EOFError, zlib.error) as error:
        report.skip(file_path, line_number + 1, f"unreadable from here on ({type(error).__name__})")
    if line_number == 0:
        report.skip(file_path, None, "empty file")


def _parse_jsonl_line(
    raw_line: bytes, file_path: pathlib.Path, line_number: int, report: SourceReport
) -> dict[str, Any] | None:
    """The JSON object on one line, or None after recording why it is unusable."""
    try:
        line = raw_line.decode("utf-8")
    except UnicodeDecodeError:
        report.skip(file_path, line_number, "invalid UTF-8")
        return None
    if not line.strip():
        report.skip(file_path, line_number, "blank line")
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        report.skip(file_path, line_number, "malformed JSON")
        return None
    if not isinstance(record, dict):
        report.skip(file_path, line_number, "JSON line is not an object")
        return None
    return record


def iter_parquet_file(
    file_path: pathlib.Path,
    id_prefix: str,
    source_name: str,
    kind: str,
    report: SourceReport,
    *,
    text_field: str = "text",
    id_field: str = "id",
) -> Iterator[Document]:
    """One document per row with a non-empty string (or UTF-8 binary) `text_field`.

    Reads `PARQUET_BATCH_ROWS` rows at a time and only the text and id columns. Ids come from
    `id_field` when that column exists and is set, else `<id_prefix>:<row>` (1-based row
    number, as JSONL lines). A missing text column or an unreadable file is one record for the
    file; damage part way keeps the rows before it.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    kind = "text" if kind == "auto" else kind
    try:
        parquet_file = pq.ParquetFile(file_path)
    except (OSError, pa.ArrowException) as error:
        report.skip(file_path, None, f"unreadable parquet ({type(error).__name__})")
        return
    columns = parquet_file.schema_arrow.names
    if text_field not in columns:
        report.skip(file_path, None, f"missing {text_field!r} column")
        return
    if parquet_file.metadata.num_rows == 0:
        report.skip(file_path, None, "empty file")
        return
    wanted = [text_field] + ([id_field] if id_field in columns and id_field != text_field else [])
    row_number = 0
    try:
        for batch in parquet_file.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=wanted):
            for record in batch.to_pylist():
                row_number += 1
                text = record_text(record, text_field, (file_path, row_number), report)
                if text is not None:
                    doc_id = record_id(record, id_field) or f"{id_prefix}:{row_number}"
                    yield Document(doc_id, text, source=source_name, kind=kind)
    except (OSError, pa.ArrowException) as error:
        report.skip(file_path, row_number + 1, f"unreadable from here on ({type(error).__name__})")
