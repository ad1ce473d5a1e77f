"""Text cleaning: mojibake repair, Unicode normalisation, special-string removal, PII masking and
whitespace normalisation, in that order, configured by one frozen `CleanConfig`.

Cleaning never drops a document; it returns a new `Document` whose metadata records what changed
under the key `"clean"` (counts), so a curation report can say how much each step touched.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata

import ftfy
import ftfy.chardata

from jaxpretrain.curate.document import Document

# Strings that tokenizers treat as control tokens; left in raw text they would be encoded as the
# real control token (or split oddly) and teach the model to emit document boundaries mid-text.
DEFAULT_SPECIAL_STRINGS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|padding|>")


@dataclasses.dataclass(frozen=True)
class CleanConfig:
    """Which cleaning steps run, and how.

    Attributes:
      fix_mojibake: repair mis-decoded text (e.g. 'doesnâ€™t' -> 'doesn’t') with ftfy.
      unicode_form: 'NFC' (default), 'NFKC', 'NFD', 'NFKD', or None to skip normalisation.
      special_strings: exact strings removed from the text (pass the tokenizer's special tokens).
      mask_pii: replace emails, IP addresses and phone numbers by the placeholders below.
      email_placeholder, ip_placeholder, phone_placeholder: the replacement strings.
      normalize_whitespace: unify line breaks and odd spaces, strip trailing spaces, collapse
        runs of blank lines; for 'text' documents also collapse runs of spaces inside lines;
        'code' documents keep their indentation and inner spacing.
      max_blank_lines: longest run of empty lines kept by whitespace normalisation.
    """

    fix_mojibake: bool = True
    unicode_form: str | None = "NFC"
    special_strings: tuple[str, ...] = DEFAULT_SPECIAL_STRINGS
    mask_pii: bool = False
    email_placeholder: str = "[EMAIL]"
    ip_placeholder: str = "[IP]"
    phone_placeholder: str = "[PHONE]"
    normalize_whitespace: bool = True
    max_blank_lines: int = 1

    def __post_init__(self) -> None:
        if self.unicode_form not in (None, "NFC", "NFKC", "NFD", "NFKD"):
            raise ValueError(
                f"CleanConfig.unicode_form={self.unicode_form!r} is not a Unicode normal form; "
                "use 'NFC', 'NFKC', 'NFD', 'NFKD' or None."
            )
        if self.max_blank_lines < 0:
            raise ValueError(f"CleanConfig.max_blank_lines={self.max_blank_lines} must be >= 0.")


# ftfy settings: repair encodings, but leave alone what is legitimate text. Curly quotes, full-width
# characters and HTML entities are real content (and entities matter in code), and normalisation
# is a separate, configurable step.
_FTFY_CONFIG = ftfy.TextFixerConfig(
    unescape_html=False,
    uncurl_quotes=False,
    fix_character_width=False,
    fix_latin_ligatures=False,
    normalization=None,
    explain=False,
)


# What ftfy (with the settings above) can change: its control characters, C1 controls, carriage
# returns and Unicode line separators, lone surrogates, and byte sequences its own UTF-8 mojibake
# detector matches. Text with none of them comes back from ftfy unchanged, so the check (~30 µs
# per KB) spares the full fix (~180 µs per KB of non-ASCII text) on almost every document.
_FTFY_MAY_CHANGE_RE = re.compile(
    "["
    + "".join(re.escape(chr(code)) for code in sorted(ftfy.chardata.CONTROL_CHARS))
    + "\r\x80-\x9f\u2028\u2029\ud800-\udfff]"
)


def may_need_mojibake_fix(text: str) -> bool:
    """False only for text that `fix_mojibake` would return unchanged (a cheap pre-check)."""
    return bool(
        _FTFY_MAY_CHANGE_RE.search(text)
        or (not text.isascii() and ftfy.chardata.UTF8_DETECTOR_RE.search(text))
    )


def fix_mojibake(text: str) -> str:
    """Repairs mis-decoded Unicode (mojibake), control characters and line breaks with ftfy."""
    if not may_need_mojibake_fix(text):
        return text
    return ftfy.fix_text(text, config=_FTFY_CONFIG)


def normalize_unicode(text: str, form: str = "NFC") -> str:
    """Returns `text` in Unicode normal form `form` (NFC composes 'e' + U+0301 into 'é')."""
    return unicodedata.normalize(form, text)


def remove_special_strings(text: str, special_strings: tuple[str, ...]) -> tuple[str, int]:
    """Removes every occurrence of each special string; returns (text, number removed)."""
    removed = 0
    for special in special_strings:
        if special and special in text:
            removed += text.count(special)
            text = text.replace(special, "")
    return text, removed


# PII patterns: deliberately simple and high-precision (the common formats), in the spirit of
# the regex maskers used by Dolma and datatrove; they are not a guarantee of anonymity.
_EMAIL_RE = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_IPV4_RE = re.compile(
    r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
    r"(?![\w.]*\d)"
)
# Full 8-group IPv6, or a compressed form with '::' (times like 12:30:45 never match).
_IPV6_RE = re.compile(
    r"(?<![\w:])(?:(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}"
    r"|(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}:){0,5}[0-9A-Fa-f]{1,4})(?![\w:])"
)
# North-American style (555) 123-4567 / 555-123-4567 / +1 555 123 4567, and international numbers
# written with a leading '+country code' and separators. Bare digit runs (ids, years) never match.
_PHONE_RE = re.compile(
    r"(?<![\w+])(?:(?:\+\d{1,3}[ .-]?)?(?:\(\d{3}\)|\d{3})[ .-]\d{3}[ .-]\d{4}"
    r"|\+\d{1,3}(?:[ .-]\d{1,4}){2,5})(?!\w)"
)


def mask_pii(
    text: str,
    email_placeholder: str = "[EMAIL]",
    ip_placeholder: str = "[IP]",
    phone_placeholder: str = "[PHONE]",
) -> tuple[str, int]:
    """Replaces email addresses, IPv4/IPv6 addresses and phone numbers; returns (text, count)."""
    total = 0
    for pattern, placeholder in (
        (_EMAIL_RE, email_placeholder),
        (_IPV6_RE, ip_placeholder),
        (_IPV4_RE, ip_placeholder),
        (_PHONE_RE, phone_placeholder),
    ):
        text, count = pattern.subn(placeholder, text)
        total += count
    return text, total


# Spaces that are not U+0020 (no-break, en/em, ideographic, ...) and invisible characters with no
# meaning in running text. Zero-width joiners are kept: emoji sequences and Indic/Persian need them.
_ODD_SPACES_RE = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_INVISIBLE_RE = re.compile(r"[\u200b\u2060\ufeff]")
_LINE_BREAKS_RE = re.compile(r"\r\n?|[\u2028\u2029\x0b\x0c\x85]")
_INNER_SPACES_RE = re.compile(r"[ \t]+")


def normalize_whitespace(
    text: str, keep_indentation: bool = False, max_blank_lines: int = 1
) -> str:
    """Normalises whitespace.

    Always: line breaks become '\\n', odd spaces become ' ', invisible characters are dropped,
    trailing spaces are stripped, runs of empty lines are cut to `max_blank_lines`, and leading
    and trailing empty lines are removed. Unless `keep_indentation` (code), runs of spaces and
    tabs inside a line collapse to one space and lines lose their leading spaces.
    """
    text = _LINE_BREAKS_RE.sub("\n", text)
    text = _ODD_SPACES_RE.sub(" ", text)
    text = _INVISIBLE_RE.sub("", text)
    lines = []
    blank_run = 0
    for line in text.split("\n"):
        line = line.rstrip() if keep_indentation else _INNER_SPACES_RE.sub(" ", line).strip()
        if not line:
            blank_run += 1
            if blank_run > max_blank_lines:
                continue
        else:
            blank_run = 0
        lines.append(line)
    return "\n".join(lines).strip("\n")


def clean_text(
    text: str, config: CleanConfig = CleanConfig(), kind: str = "text"
) -> tuple[str, dict]:
    """Runs the configured steps on `text`; returns (cleaned text, counts of what changed).

    `kind` is the document kind: 'code' keeps indentation. The counts dict has keys
    `mojibake_fixed` (0/1), `special_strings_removed`, `pii_masked`, and `length_change`
    (characters after minus before; negative when text was removed).
    """
    original_length = len(text)
    counts = {"mojibake_fixed": 0, "special_strings_removed": 0, "pii_masked": 0}
    if config.fix_mojibake:
        repaired = fix_mojibake(text)
        counts["mojibake_fixed"] = int(repaired != text)
        text = repaired
    if config.unicode_form is not None:
        text = normalize_unicode(text, config.unicode_form)
    if config.special_strings:
        text, counts["special_strings_removed"] = remove_special_strings(
            text, config.special_strings
        )
    if config.mask_pii:
        text, counts["pii_masked"] = mask_pii(
            text, config.email_placeholder, config.ip_placeholder, config.phone_placeholder
        )
    if config.normalize_whitespace:
        text = normalize_whitespace(
            text, keep_indentation=kind == "code", max_blank_lines=config.max_blank_lines
        )
    counts["length_change"] = len(text) - original_length
    return text, counts


def clean_document(doc: Document, config: CleanConfig = CleanConfig()) -> Document:
    """Returns `doc` with cleaned text and the step counts in `metadata["clean"]`."""
    text, counts = clean_text(doc.text, config, kind=doc.kind)
    return doc.replace(text=text, metadata={**doc.metadata, "clean": counts})
