"""The embedded default corpus: the running interpreter's standard library as documents.

Real text on every machine with nothing to download: each stdlib module's source code (a `code`
document), a prose document of its docstrings, then the pydoc help topics.
"""

from __future__ import annotations

import ast
import pathlib
import sysconfig
from collections.abc import Iterator
from pydoc_data.topics import topics as pydoc_topics
from typing import TYPE_CHECKING

from jaxpretrain.curate.document import Document
from jaxpretrain.curate.file_readers import read_text_file, sorted_files

if TYPE_CHECKING:
    from jaxpretrain.curate.sources import SourceReport

STDLIB_SOURCE = "stdlib"
# Directories of the standard library that hold tests, test data or third-party packages.
STDLIB_EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}
)


def stdlib_root() -> pathlib.Path:
    """Directory of the running interpreter's pure-Python standard library."""
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def iter_stdlib_documents(
    report: SourceReport, source_name: str = STDLIB_SOURCE
) -> Iterator[Document]:
    """The embedded corpus: for each stdlib module (sorted by path) its source code, then a
    prose document of its docstrings; then one document per pydoc help topic.

    Ids: `stdlib:<relpath>`, `stdlib:<relpath>#docstrings`, `stdlib:pydoc_topics/<topic>`
    (`source_name` replaces `stdlib` in ids and `Document.source`). Test directories and
    site-packages are not part of the corpus.
    """
    root = stdlib_root()
    for file_path in sorted_files(root, excluded_dirs=STDLIB_EXCLUDED_DIRS, report=report):
        if file_path.suffix != ".py":
            continue
        relative = file_path.relative_to(root).as_posix()
        text = read_text_file(file_path, report)
        if text is None:
            continue
        yield Document(f"{source_name}:{relative}", text, source=source_name, kind="code")
        try:
            docstrings = module_docstrings(text)
        except (SyntaxError, ValueError) as error:
            report.skip(file_path, getattr(error, "lineno", None), "python syntax error")
            continue
        if docstrings:
            yield Document(f"{source_name}:{relative}#docstrings", docstrings, source=source_name)
    yield from iter_pydoc_topic_documents(source_name)


def iter_pydoc_topic_documents(source_name: str = STDLIB_SOURCE) -> Iterator[Document]:
    """The interpreter's `help()` topics (language reference prose), one document per topic."""
    for topic in sorted(pydoc_topics):
        text = pydoc_topics[topic]
        if text.strip():
            yield Document(f"{source_name}:pydoc_topics/{topic}", text, source=source_name)


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
