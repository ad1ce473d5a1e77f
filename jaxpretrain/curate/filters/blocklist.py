"""Blocklist filter: blocked words in the text and blocked domains in the document's URL.

Users pass their own lists as files (one entry per line, '#' starts a comment), e.g. the LDNOOBW
"bad words" list C4 used (Raffel et al. 2020, §2.2) or the UT1 adult-domain list FineWeb used
(Penedo et al. 2024, §3.1). The built-in defaults are deliberately small: a handful of
unambiguous adult terms and sites, so the filter does something useful out of the box without
the over-removal broad word lists are known for (Dodge et al. 2021, "Documenting C4").
"""

from __future__ import annotations

import dataclasses
import functools
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from jaxpretrain.curate.document import Document
from jaxpretrain.curate.filters.base import Filter, Scores, register

DEFAULT_BLOCKED_WORDS = (
    "porn",
    "porno",
    "xxx",
    "hentai",
    "camgirl",
    "camgirls",
    "blowjob",
    "handjob",
    "cumshot",
    "creampie",
    "gangbang",
    "bukkake",
)
DEFAULT_BLOCKED_DOMAINS = (
    "pornhub.com",
    "xvideos.com",
    "xnxx.com",
    "xhamster.com",
    "redtube.com",
    "youporn.com",
    "tube8.com",
    "spankbang.com",
    "chaturbate.com",
    "onlyfans.com",
)


def load_list(path: str | Path) -> tuple[str, ...]:
    """Entries of a list file: one per line, lowercased, blank lines and '#' comments skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Blocklist file {str(path)!r} does not exist; fix the path.")
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = line.split("#", 1)[0].strip().lower()
        if entry:
            entries.append(entry)
    return tuple(entries)


def url_domain(url: str) -> str | None:
    """The lowercase host of `url` ('https://www.Example.com:8080/x' -> 'www.example.com')."""
    if not url:
        return None
    if "//" not in url:
        url = "//" + url  # bare 'example.com/path' has no scheme; urlsplit then sees no host
    try:
        return urllib.parse.urlsplit(url).hostname
    except ValueError:
        return None


def domain_is_blocked(host: str, blocked: frozenset[str]) -> bool:
    """True if `host` or any parent domain of it (at a dot boundary) is in `blocked`."""
    labels = host.strip(".").split(".")
    return any(".".join(labels[i:]) in blocked for i in range(len(labels)))


@register
@dataclasses.dataclass(frozen=True)
class BlocklistFilter(Filter):
    """Removes documents whose URL domain is blocked or whose text has more than
    `max_blocked_words` occurrences of blocked words (whole words, case-insensitive; 0 = any
    occurrence removes the page, as in C4).

    Attributes:
      words, domains: built-in entries (set to () to use only your files).
      words_path, domains_path: optional user files, added to the built-in entries.
      url_key: the metadata field holding the document URL.
    """

    name: ClassVar[str] = "blocklist"
    words: tuple[str, ...] = DEFAULT_BLOCKED_WORDS
    domains: tuple[str, ...] = DEFAULT_BLOCKED_DOMAINS
    words_path: str | None = None
    domains_path: str | None = None
    url_key: str = "url"
    max_blocked_words: int = 0

    @functools.cached_property
    def _word_pattern(self) -> re.Pattern | None:
        words = set(w.lower() for w in self.words)
        if self.words_path:
            words.update(load_list(self.words_path))
        if not words:
            return None
        # Longest first so a phrase wins over its own prefix; lookarounds instead of \b so
        # entries that start or end with punctuation still match as whole tokens.
        alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
        return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)

    @functools.cached_property
    def _domain_set(self) -> frozenset[str]:
        domains = {d.lower().strip(".") for d in self.domains}
        if self.domains_path:
            domains.update(d.strip(".") for d in load_list(self.domains_path))
        return frozenset(domains)

    def score(self, doc: Document) -> Scores:
        pattern = self._word_pattern
        blocked_words = len(pattern.findall(doc.text)) if pattern is not None else 0
        host = url_domain(str(doc.metadata.get(self.url_key, "") or ""))
        blocked_domain = host is not None and domain_is_blocked(host, self._domain_set)
        return {"blocked_words": float(blocked_words), "blocked_domain": float(blocked_domain)}

    def keep(self, scores: Mapping[str, float]) -> tuple[bool, str | None]:
        return self._first_failure(
            [
                ("blocked_domain", scores["blocked_domain"] > 0),
                ("blocked_words", scores["blocked_words"] > self.max_blocked_words),
            ]
        )
