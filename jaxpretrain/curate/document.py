"""The unit every curation block reads and returns: one document with its provenance."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

DOCUMENT_KINDS = ("text", "code")


@dataclasses.dataclass(frozen=True, slots=True)
class Document:
    """One document flowing through curation.

    Attributes:
      id: unique, stable id (e.g. `<source>/<shard>/<row>`); dedup reports refer to it.
      text: the document's text.
      source: name of the source it came from (a key of the data mixture).
      kind: 'text' or 'code'; cleaning keeps indentation for code.
      metadata: free-form per-document fields (url, language, filter scores, ...). Blocks never
        mutate it in place; they return a new Document via `replace`.
    """

    id: str
    text: str
    source: str = ""
    kind: str = "text"
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in DOCUMENT_KINDS:
            raise ValueError(
                f"Document {self.id!r} has kind={self.kind!r}; use one of {DOCUMENT_KINDS}."
            )

    def replace(self, **changes: Any) -> Document:
        """A copy with `changes` applied (e.g. `doc.replace(text=new_text)`)."""
        return dataclasses.replace(self, **changes)

    def with_metadata(self, **fields: Any) -> Document:
        """A copy whose metadata has `fields` added or overwritten."""
        return dataclasses.replace(self, metadata={**self.metadata, **fields})
