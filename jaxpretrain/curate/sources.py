"""Raw text sources: each yields `Document`s and records every input it could not use.

A source is named by a string:
  - 'stdlib': the embedded default corpus, built from the running interpreter's standard library
    (code documents, one prose document of docstrings per module, and the pydoc help topics).
    Real text on every machine, nothing downloaded.
  - a local directory (read recursively) or a single file: `*.jsonl` / `*.jsonl.gz` give one
    document per line (its `text` field), any other file one document per file.

Nothing is dropped silently: each unusable input (bad JSON, missing `text`, invalid UTF-8, empty
or binary file, hidden path) is counted in a `SourceReport` with its file and line.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import gzip
import json
import os
import pathlib
import sysconfig
import zlib
from collections.abc import Iterator
from pydoc_data.topics import topics as pydoc_topics
from typing import Any

from jaxpretrain.curate.document import Document

STDLIB_SOURCE = "stdlib"
# Directories of the standard library that hold tests, test data or third-party packages.
_STDLIB_EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}
)
_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
# Files with these suffixes become `kind='code'` documents (cleaning keeps their whitespace).
CODE_SUFFIXES = frozenset(
    {".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp", ".rs", ".go", ".java", ".js", ".ts"}
    | {".sh", ".rb", ".jl", ".scala", ".kt", ".swift", ".lua", ".r", ".sql", ".toml", ".yaml"}
)
# How many skipped inputs are listed one by one; all of them are always counted by reason.
MAX_LISTED_SKIPS = 1_000
# Bytes inspected for NUL to call a file binary (git's heuristic).
_BINARY_SNIFF_BYTES = 8_192


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


def iter_documents(source: str, report: SourceReport) -> Iterator[Document]:
    """Yields the documents of `source` ('stdlib', a directory or a file) in a fixed order.

    Every document has non-empty text. Skipped inputs are recorded in `report`, and
    `report.documents` counts what was yielded.

    Raises:
      FileNotFoundError: `source` is neither 'stdlib' nor an existing path.
    """
    if source == STDLIB_SOURCE:
        documents = iter_stdlib_documents(report)
    else:
        path = pathlib.Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"Data source {source!r} does not exist; pass 'stdlib' for the embedded corpus "
                "or an existing directory or .txt/.md/.py/.jsonl/.jsonl.gz file."
            )
        documents = iter_path_documents(path, report)
    for document in documents:
        report.documents += 1
        yield document


def stdlib_root() -> pathlib.Path:
    """Directory of the running interpreter's pure-Python standard library."""
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def iter_stdlib_documents(report: SourceReport) -> Iterator[Document]:
    """The embedded corpus: for each stdlib module (sorted by path) its source code, then a
    prose document of its docstrings; then one document per pydoc help topic.

    Ids: `stdlib:<relpath>`, `stdlib:<relpath>#docstrings`, `stdlib:pydoc_topics/<topic>`.
    Test directories and site-packages are not part of the corpus.
    """
    root = stdlib_root()
    for file_path in _sorted_files(root, excluded_dirs=_STDLIB_EXCLUDED_DIRS, report=report):
        if file_path.suffix != ".py":
            continue
        relative = file_path.relative_to(root).as_posix()
        text = _read_text_file(file_path, report)
        if text is None:
            continue
        yield Document(f"{STDLIB_SOURCE}:{relative}", text, source=STDLIB_SOURCE, kind="code")
        try:
            docstrings = module_docstrings(text)
        except (SyntaxError, ValueError) as error:
            report.skip(file_path, getattr(error, "lineno", None), "python syntax error")
            continue
        if docstrings:
            yield Document(
                f"{STDLIB_SOURCE}:{relative}#docstrings", docstrings, source=STDLIB_SOURCE
            )
    yield from iter_pydoc_topic_documents()


def iter_pydoc_topic_documents() -> Iterator[Document]:
    """The interpreter's `help()` topics (language reference prose), one document per topic."""
    for topic in sorted(pydoc_topics):
        text = pydoc_topics[topic]
        if text.strip():
            yield Document(f"{STDLIB_SOURCE}:pydoc_topics/{topic}", text, source=STDLIB_SOURCE)


def module_docstrings(source_code: str) -> str:
    """The module, class and function docstrings of `source_code` as one prose document.

    The module docstring comes first; each other docstring is introduced by a line with the
    qualified name of what it documents. Returns '' when there are none.
    Raises SyntaxError/ValueError when the code does not parse.
    """
    tree = ast.parse(source_code)
    sections: list[str] = []
    module_doc = ast.get_docstring(tree, clean=True)
    if module_doc:
        sections.append(module_doc)

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                doc = ast.get_docstring(child, clean=True)
                if doc:
                    sections.append(f"{name}\n{doc}")
                visit(child, f"{name}.")

    visit(tree, "")
    return "\n\n".join(sections) + "\n" if sections else ""


def iter_path_documents(path: pathlib.Path, report: SourceReport) -> Iterator[Document]:
    """Documents of a directory (recursively, sorted) or of one file.

    Ids start with the directory's (or file's) name, which is also each document's `source`:
    `<name>:<relpath>`, or `<name>:<relpath>:<line>` for a JSONL line without an `id` field.
    """
    source_name = path.name
    if path.is_file():
        yield from _iter_file_documents(path, source_name, path.name, report)
        return
    for file_path in _sorted_files(path, excluded_dirs=frozenset(), report=report):
        relative = file_path.relative_to(path).as_posix()
        yield from _iter_file_documents(file_path, source_name, relative, report)


def _sorted_files(
    root: pathlib.Path, *, excluded_dirs: frozenset[str], report: SourceReport
) -> Iterator[pathlib.Path]:
    """Regular files under `root` in sorted order; hidden entries are reported, not read."""
    for directory, dir_names, file_names in os.walk(root):
        kept_dirs = []
        for name in sorted(dir_names):
            if name in excluded_dirs:
                continue
            if name.startswith("."):
                # One record for the whole hidden directory (.git holds thousands of files).
                report.skip(pathlib.Path(directory, name), None, "hidden directory")
                continue
            kept_dirs.append(name)
        dir_names[:] = kept_dirs  # os.walk descends only into these, in this order.
        for name in sorted(file_names):
            file_path = pathlib.Path(directory, name)
            if name.startswith("."):
                report.skip(file_path, None, "hidden file")
            elif not file_path.is_file():
                report.skip(file_path, None, "not a regular file")
            else:
                yield file_path


def _iter_file_documents(
    file_path: pathlib.Path, source_name: str, relative: str, report: SourceReport
) -> Iterator[Document]:
    if file_path.name.endswith(_JSONL_SUFFIXES):
        yield from _iter_jsonl_documents(file_path, source_name, relative, report)
        return
    text = _read_text_file(file_path, report)
    if text is not None:
        kind = "code" if file_path.suffix.lower() in CODE_SUFFIXES else "text"
        yield Document(f"{source_name}:{relative}", text, source=source_name, kind=kind)


def _read_text_file(file_path: pathlib.Path, report: SourceReport) -> str | None:
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


def _iter_jsonl_documents(
    file_path: pathlib.Path, source_name: str, relative: str, report: SourceReport
) -> Iterator[Document]:
    """One document per JSON line with a non-empty string `text`; id from `id` when present."""
    opener = gzip.open if file_path.name.endswith(".gz") else open
    line_number = 0
    try:
        with opener(file_path, "rb") as lines:
            for line_number, raw_line in enumerate(lines, start=1):
                document = _parse_jsonl_line(raw_line, file_path, line_number, report)
                if document is not None:
                    record_id, text = document
                    doc_id = record_id or f"{source_name}:{relative}:{line_number}"
                    yield Document(doc_id, text, source=source_name)
    except (OSError, EOFError, zlib.error) as error:
        # A truncated or corrupt gzip stream: the lines read so far stay, the rest is reported.
        report.skip(file_path, line_number + 1, f"unreadable from here on ({type(error).__name__})")
    if line_number == 0:
        report.skip(file_path, None, "empty file")


def _parse_jsonl_line(
    raw_line: bytes, file_path: pathlib.Path, line_number: int, report: SourceReport
) -> tuple[str | None, str] | None:
    """(id or None, text) of one JSONL line, or None after recording why it is unusable."""
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
    text = record.get("text")
    if text is None:
        report.skip(file_path, line_number, "missing 'text' field")
        return None
    if not isinstance(text, str):
        report.skip(file_path, line_number, "'text' field is not a string")
        return None
    if not text.strip():
        report.skip(file_path, line_number, "empty text")
        return None
    record_id = record.get("id")
    return (str(record_id) if record_id not in (None, "") else None), text
