"""Each filter rule on both sides of its threshold, with hand-made documents."""

import math
import time

import numpy as np
import pytest

from jaxpretrain.curate import filters
from jaxpretrain.curate.document import Document
from jaxpretrain.curate.filters import (
    BlocklistFilter,
    C4Quality,
    C4TfdsQuality,
    CodeQuality,
    FineWebQuality,
    GopherQuality,
    GopherRepetition,
    LanguageFilter,
    LengthFilter,
)

_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


def _distinct_words(count, length=5, seed=0, exclude=()):
    """`count` distinct lowercase words of `length` letters (never stop words or `exclude`)."""
    rng = np.random.default_rng(seed)
    words, seen = [], {"the", "be", "to", "of", "and", "that", "have", "with", *exclude}
    while len(words) < count:
        word = "".join(rng.choice(_LETTERS, length))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def _filler(total_chars, seed=0):
    """Distinct words (4 letters, the last 4-7) whose lengths sum to exactly `total_chars`."""
    count, rest = divmod(total_chars, 4)
    words = _distinct_words(count, 4, seed)
    if rest:
        words[-1] = _distinct_words(1, 4 + rest, seed + 1)[0]
    return words


def _doc(text, **metadata):
    return Document("doc", text, "test", metadata=metadata)


def _decide(filter_, text, **metadata):
    return filter_.apply(_doc(text, **metadata))


# ---------------------------------------------------------------- Gopher quality (Appendix A.1.1)


def _prose(num_words, seed=0):
    """`num_words` words, 5 letters each except 'the' and 'and' at the start: a clean page."""
    return ["the", "and"] + _distinct_words(num_words - 2, 5, seed)


@pytest.mark.parametrize(
    ("words", "kept"),
    [(_prose(50), True), (_prose(49), False), (_prose(100_000), True), (_prose(100_001), False)],
)
def test_gopher_word_count_bounds(words, kept):
    result = _decide(GopherQuality(), " ".join(words))
    assert result.kept == kept
    if not kept:
        rule = "too_few_words" if len(words) < 50 else "too_many_words"
        assert result.reason == f"gopher_quality:{rule}"


def test_gopher_mean_word_length_both_bounds():
    three = ["the", "and"] + _distinct_words(58, 3)
    assert _decide(GopherQuality(), " ".join(three)).scores["mean_word_length"] == 3.0
    assert _decide(GopherQuality(), " ".join(three)).kept
    shorter = three[:-1] + ["xy"]
    assert _decide(GopherQuality(), " ".join(shorter)).reason == (
        "gopher_quality:mean_word_length_too_short"
    )
    ten = ["the", "and"] + _distinct_words(56, 10) + _distinct_words(2, 17)  # 600 chars / 60
    assert _decide(GopherQuality(), " ".join(ten)).scores["mean_word_length"] == 10.0
    assert _decide(GopherQuality(), " ".join(ten)).kept
    longer = ten[:-1] + [ten[-1] + "q"]
    assert _decide(GopherQuality(), " ".join(longer)).reason == (
        "gopher_quality:mean_word_length_too_long"
    )


@pytest.mark.parametrize(
    ("symbol", "rule"), [("#", "hash_word_ratio"), ("...", "ellipsis_word_ratio")]
)
def test_gopher_symbol_to_word_ratio(symbol, rule):
    words = _prose(50)
    at_limit = " ".join(words[:25] + [symbol] * 5 + words[25:])  # 5 / 50 words = 0.1
    assert _decide(GopherQuality(), at_limit).kept
    over = " ".join(words[:25] + [symbol] * 6 + words[25:])
    assert _decide(GopherQuality(), over).reason == f"gopher_quality:{rule}"


def test_gopher_bullet_lines():
    lines = [" ".join(_distinct_words(6, 5, seed=i)) for i in range(10)]
    lines[0] = "the and " + lines[0]
    nine = "\n".join(["• " + line for line in lines[:9]] + [lines[9]])
    assert _decide(GopherQuality(), nine).scores["bullet_line_fraction"] == 0.9
    assert _decide(GopherQuality(), nine).kept
    ten = "\n".join("- " + line for line in lines)
    assert _decide(GopherQuality(), ten).reason == "gopher_quality:bullet_lines"


def test_gopher_ellipsis_lines():
    lines = [" ".join(_distinct_words(6, 5, seed=i)) for i in range(10)]
    lines[0] = "the and " + lines[0]
    three = "\n".join([line + "..." for line in lines[:3]] + lines[3:])
    assert _decide(GopherQuality(), three).kept
    four = "\n".join([line + "…" for line in lines[:4]] + lines[4:])
    assert _decide(GopherQuality(), four).reason == "gopher_quality:ellipsis_lines"


def test_gopher_alphabetic_word_fraction():
    words = _prose(50)
    eighty = " ".join(words[:40] + [str(1000 + i) for i in range(10)])
    assert _decide(GopherQuality(), eighty).scores["alpha_word_fraction"] == 0.8
    assert _decide(GopherQuality(), eighty).kept
    below = " ".join(words[:39] + [str(1000 + i) for i in range(11)])
    assert _decide(GopherQuality(), below).reason == "gopher_quality:alpha_words"


def test_gopher_stop_words_need_two_distinct():
    words = _distinct_words(48, 5)
    assert _decide(GopherQuality(), " ".join(["the", "with"] + words)).kept
    only_one = " ".join(["the", "the"] + words)
    assert _decide(GopherQuality(), only_one).reason == "gopher_quality:stop_words"
    # Case-sensitive, as datatrove (and so FineWeb) matched them: "The" is not "the".
    capitalised = " ".join(["The", "with"] + words)
    assert _decide(GopherQuality(), capitalised).reason == "gopher_quality:stop_words"


# ------------------------------------------------------------ Gopher repetition (Table A1)

_NO_NGRAM_RULES = {
    "max_top_ngram_char_fraction": {n: math.inf for n in (2, 3, 4)},
    "max_duplicate_ngram_char_fraction": {n: math.inf for n in range(5, 11)},
}
_NO_LINE_RULES = {
    "max_duplicate_line_fraction": math.inf,
    "max_duplicate_paragraph_fraction": math.inf,
    "max_duplicate_line_char_fraction": math.inf,
    "max_duplicate_paragraph_char_fraction": math.inf,
}


def _only_rule(**kept_setting):
    """A repetition filter with every rule off except the one named (repeated text trips several
    rules at once; isolating one shows each threshold's two sides)."""
    settings = {**_NO_LINE_RULES, **_NO_NGRAM_RULES}
    for key in kept_setting:
        settings.pop(key)
    return GopherRepetition(**settings, **kept_setting)


@pytest.mark.parametrize("separator", ["\n", "\n\n"])
def test_duplicate_line_and_paragraph_fraction(separator):
    unit = "line" if separator == "\n" else "paragraph"
    filter_ = _only_rule(**{f"max_duplicate_{unit}_fraction": 0.30})
    uniques = [" ".join(_distinct_words(4, 5, seed=i)) for i in range(6)]
    at_limit = separator.join(uniques + ["same words here"] * 4)  # 3 duplicates / 10
    assert filter_.score(_doc(at_limit))[f"duplicate_{unit}_fraction"] == 0.3
    assert filter_.apply(_doc(at_limit)).kept
    over = separator.join(uniques[:5] + ["same words here"] * 5)  # 4 / 10
    assert filter_.apply(_doc(over)).reason == f"gopher_repetition:duplicate_{unit}s"


@pytest.mark.parametrize("separator", ["\n", "\n\n"])
def test_duplicate_line_and_paragraph_characters(separator):
    unit = "line" if separator == "\n" else "paragraph"
    filter_ = _only_rule(**{f"max_duplicate_{unit}_char_fraction": 0.20})
    repeated = "abcdefghij"  # 10 characters, 3 copies = 2 duplicates = 20 characters
    # Over the whole text's length, separators included (datatrove's denominator): 20 / 100.
    filler_chars = 100 - 3 * len(repeated) - 3 * len(separator)
    at_limit = separator.join(["".join(_filler(filler_chars))] + [repeated] * 3)
    assert len(at_limit) == 100
    assert filter_.score(_doc(at_limit))[f"duplicate_{unit}_char_fraction"] == 0.2
    assert filter_.apply(_doc(at_limit)).kept
    over = separator.join(["".join(_filler(filler_chars - 1))] + [repeated] * 3)
    assert filter_.apply(_doc(over)).reason == f"gopher_repetition:duplicate_{unit}_chars"


def _text_of_length(words, length):
    """`words` joined by spaces, the last word lengthened so the text is `length` characters."""
    text = " ".join(words)
    assert len(text) <= length, (len(text), length)
    return text + "q" * (length - len(text))


@pytest.mark.parametrize(("n", "limit"), [(2, 0.20), (3, 0.18), (4, 0.16)])
def test_top_ngram_character_fraction(n, limit):
    filter_ = _only_rule(max_top_ngram_char_fraction={n: limit})
    phrase = _distinct_words(n, 5, seed=99)  # "w1 w2 ..": 6n - 1 characters, occurring twice
    needed = 2 * (6 * n - 1) / limit  # text length at which the fraction equals the limit
    for length, kept in ((math.ceil(needed), True), (math.ceil(needed) - 1, False)):
        filler = _distinct_words(6, 5, seed=n, exclude=phrase)
        text = _text_of_length(phrase + filler[:3] + phrase + filler[3:], length)
        result = filter_.apply(_doc(text))
        assert result.kept == kept, (length, result.scores)
        if not kept:
            assert result.reason == f"gopher_repetition:top_{n}gram"


@pytest.mark.parametrize(
    ("n", "limit"), sorted({5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}.items())
)
def test_duplicated_ngram_character_fraction(n, limit):
    filter_ = _only_rule(max_duplicate_ngram_char_fraction={n: limit})
    phrase = _distinct_words(n, 3, seed=98)  # 3n word characters; its repeat counts once
    needed = 3 * n / limit
    for length, kept in ((math.ceil(needed), True), (math.ceil(needed) - 1, False)):
        filler = _distinct_words(4, 3, seed=n, exclude=phrase)
        text = _text_of_length(phrase + filler[:3] + phrase + filler[3:], length)
        result = filter_.apply(_doc(text))
        assert result.kept == kept, (length, result.scores)
        if not kept:
            assert result.reason == f"gopher_repetition:duplicate_{n}gram"


def test_duplicated_ngram_overlaps_are_skipped_like_datatrove():
    # "aaa" x 12 (48 characters): the scan keeps the first 5-gram, then finds repeats at words 1
    # and 6 and jumps 5 words after each: 2 x 15 characters = 0.625 of the text, not 1.0.
    words = ["aaa"] * 12
    scores = GopherRepetition().score(_doc(" ".join(words) + " "))
    assert scores["duplicate_5gram_char_fraction"] == 30 / 48
    assert scores["top_2gram_char_fraction"] == 11 * 7 / 48  # overlapping copies all count
    strict = GopherRepetition(count_first_occurrences=True).score(_doc(" ".join(words) + " "))
    assert strict["duplicate_5gram_char_fraction"] == 36 / 48  # every word, each once
    clean = GopherRepetition().apply(_doc(" ".join(_prose(200))))
    assert clean.kept, clean.scores


# ------------------------------------------------- C4 (T5 paper §2.2, TFDS c4_utils.clean_page)
# These are the TFDS rules, registered as `c4_tfds` (the `c4` filter is C4 as FineWeb ran it:
# tests/test_curate_defaults.py).


def _line(num_words, end=".", seed=0):
    return " ".join(["The"] + _distinct_words(num_words - 1, 5, seed)) + end


def test_c4_keeps_lines_of_five_words_and_drops_four():
    five, four = _line(5, seed=1), _line(4, seed=2)
    page = "\n".join([_line(8, seed=3), five, four, _line(9, seed=4)])
    result = _decide(C4TfdsQuality(), page)
    assert result.kept
    assert result.document.text.split("\n") == [_line(8, seed=3), five, _line(9, seed=4)]
    assert result.scores["lines_dropped_too_few_words"] == 1


def test_c4_needs_three_sentences_per_page_not_five():
    three = "\n".join(_line(6, seed=i) for i in range(3))
    assert _decide(C4TfdsQuality(), three).kept  # datatrove's swapped defaults would drop this page
    two = "\n".join(_line(6, seed=i) for i in range(2))
    assert _decide(C4TfdsQuality(), two).reason == "c4_tfds:too_few_sentences"
    # Sentences, not lines: two lines holding three sentences between them pass.
    two_lines_three_sentences = _line(6, seed=7) + " Second one here now. Third one is here.\n"
    assert _decide(C4TfdsQuality(), two_lines_three_sentences + _line(6, seed=8)).kept


def test_c4_end_marks_ellipsis_and_citations():
    body = "\n".join(_line(6, seed=i) for i in range(3))
    result = _decide(
        C4TfdsQuality(),
        body + "\nThis line has no end mark at all\nThis line trails off into nothing...\n"
        'He said it was "a fine day for it"\nThe study was published in 2019.[12]',
    )
    lines = result.document.text.split("\n")
    assert 'He said it was "a fine day for it"' in lines
    assert "The study was published in 2019." in lines  # citation removed, line kept
    assert result.scores["lines_dropped_no_end_mark"] == 2


def test_c4_javascript_and_policy_lines_are_dropped():
    body = "\n".join(_line(6, seed=i) for i in range(3))
    page = (
        body + "\nPlease enable JavaScript to view this page.\nRead our Privacy Policy for details."
    )
    result = _decide(C4TfdsQuality(), page)
    assert result.kept and result.document.text == body
    assert result.scores["lines_dropped_javascript"] == 1
    assert result.scores["lines_dropped_policy"] == 1


def test_c4_lorem_ipsum_and_curly_bracket_drop_the_page_only_on_kept_lines():
    body = "\n".join(_line(6, seed=i) for i in range(3))
    assert _decide(C4TfdsQuality(), body + "\nLorem ipsum dolor sit amet, consectetur.").reason == (
        "c4_tfds:lorem_ipsum"
    )
    assert _decide(C4TfdsQuality(), body + "\nfunction f() { return x; } is code here.").reason == (
        "c4_tfds:curly_bracket"
    )
    # A '{' on a line already dropped for length does not condemn the page (TFDS order).
    assert _decide(C4TfdsQuality(), body + "\n{ x }.").kept


def test_c4_word_length_limit():
    body = "\n".join(_line(6, seed=i) for i in range(3))
    ok = f"The word {'a' * 1000} is long but allowed."
    too_long = f"The word {'a' * 1001} is too long here."
    assert ok in _decide(C4TfdsQuality(), body + "\n" + ok).document.text
    result = _decide(C4TfdsQuality(), body + "\n" + too_long)
    assert too_long not in result.document.text
    assert result.scores["lines_dropped_too_long_word"] == 1


# ---------------------------------------------------------------- FineWeb (§3.3, datatrove code)


def _sentence_line(seed, words=7):
    return " ".join(_distinct_words(words, 5, seed)) + "."


def test_fineweb_line_punctuation_fraction():
    lines = [_sentence_line(i)[:-1] for i in range(25)]  # > 30 chars, no end punctuation
    at_limit = "\n".join([line + "." for line in lines[:3]] + lines[3:])  # 3/25 = 0.12
    assert _decide(FineWebQuality(), at_limit).kept
    below = "\n".join([line + "." for line in lines[:2]] + lines[2:])
    assert _decide(FineWebQuality(), below).reason == "fineweb:line_punctuation"


def test_fineweb_short_line_fraction():
    short = [" ".join(_distinct_words(3, 5, seed=i)) + "." for i in range(100)]  # 18 chars
    assert all(len(line) <= 30 for line in short)
    long = [_sentence_line(1000 + i) for i in range(100)]
    at_limit = "\n".join(short[:67] + long[:33])
    assert _decide(FineWebQuality(), at_limit).kept
    over = "\n".join(short[:68] + long[:32])
    assert _decide(FineWebQuality(), over).reason == "fineweb:short_lines"
    assert FineWebQuality().score(_doc("x" * 30))["short_line_fraction"] == 1.0
    assert FineWebQuality().score(_doc("x" * 31))["short_line_fraction"] == 0.0


def test_fineweb_duplicate_line_characters():
    repeated = "Repeated!."  # 10 characters; its second copy is the duplicate
    uniques = [_sentence_line(i) for i in range(23)]  # 23 x 42 = 966 characters

    def page(pad_chars):
        return "\n".join(uniques + [repeated, "z" * (pad_chars - 1) + ".", repeated])

    at_limit = page(14)  # 10 duplicate / (966 + 14 + 20) = 0.01
    assert FineWebQuality().score(_doc(at_limit))["duplicate_line_char_fraction"] == 0.01
    assert _decide(FineWebQuality(), at_limit).kept
    assert _decide(FineWebQuality(), page(13)).reason == "fineweb:duplicate_line_chars"


def test_fineweb_newline_to_word_ratio():
    # Words are NLTK-style tokens as in datatrove: the final "." of each line is one.
    three_tokens = [" ".join(_distinct_words(2, 15, seed=i)) + "." for i in range(10)]
    at_limit = "\n".join(three_tokens)  # 9 newlines / 30 tokens
    assert _decide(FineWebQuality(), at_limit).kept
    two_tokens = _distinct_words(1, 30, seed=50)[0] + "."
    over = "\n".join(three_tokens[:9] + [two_tokens])  # 9 / 29
    assert _decide(FineWebQuality(), over).reason == "fineweb:list_like"
    assert _decide(FineWebQuality(), "").reason == "fineweb:empty"


# ------------------------------------------------------------- language (fastText lid.176.ftz)

_ENGLISH = "The weather was lovely today, so we walked along the river and talked about books."
_FRENCH = "Il faisait très beau aujourd'hui, alors nous avons marché le long de la rivière."


def test_language_keeps_target_language_and_records_metadata():
    result = _decide(LanguageFilter(), _ENGLISH)
    assert result.kept and result.document.metadata["language"] == "en"
    assert result.scores["prob_en"] == result.document.metadata["language_score"] > 0.65
    french = _decide(LanguageFilter(), _FRENCH)
    assert french.reason == "language:other_language"
    assert _decide(LanguageFilter(languages=("en", "fr")), _FRENCH).kept
    assert _decide(LanguageFilter(languages=()), _FRENCH).kept  # any confident language


def test_language_per_language_threshold_both_sides():
    score = LanguageFilter().score(_doc(_ENGLISH))["prob_en"]
    assert LanguageFilter(thresholds={"en": score}).apply(_doc(_ENGLISH)).kept
    above = LanguageFilter(thresholds={"en": score + 1e-6}, default_threshold=0.0)
    assert above.apply(_doc(_ENGLISH)).reason == "language:below_threshold"
    # The default threshold applies to languages without their own entry.
    assert not LanguageFilter(languages=("fr",), default_threshold=1.01).apply(_doc(_FRENCH)).kept


# ---------------------------------------------------------------------------------- blocklist


def test_blocklist_words_whole_word_and_case_insensitive():
    assert (
        _decide(BlocklistFilter(), "A page selling XXX videos.").reason == "blocklist:blocked_words"
    )
    assert _decide(BlocklistFilter(), "A history of pornography laws in Europe.").kept  # not 'porn'
    lenient = BlocklistFilter(max_blocked_words=1)
    assert _decide(lenient, "one hentai mention").kept
    assert not _decide(lenient, "hentai and more hentai").kept


def test_blocklist_domains_match_subdomains_only_at_dot_boundaries():
    assert _decide(BlocklistFilter(), "fine text", url="https://www.PornHub.com/x?y").reason == (
        "blocklist:blocked_domain"
    )
    assert _decide(BlocklistFilter(), "fine text", url="https://notpornhub.com/").kept
    assert _decide(BlocklistFilter(), "fine text", url="xnxx.com/page").reason == (
        "blocklist:blocked_domain"
    )
    assert _decide(BlocklistFilter(), "fine text").kept  # no url at all


def test_blocklist_user_files_extend_or_replace_defaults(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("# my list\nCasino Bonus\nspamword  # trailing comment\n\n", encoding="utf-8")
    domains = tmp_path / "domains.txt"
    domains.write_text("bad.example\n", encoding="utf-8")
    custom = BlocklistFilter(words=(), domains=(), words_path=str(words), domains_path=str(domains))
    assert _decide(custom, "Claim your casino  bonus now").kept  # phrase must match exactly
    assert not _decide(custom, "Claim your CASINO BONUS now").kept
    assert not _decide(custom, "x", url="http://a.bad.example/").kept
    assert _decide(custom, "porn").kept  # defaults replaced
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        BlocklistFilter(words_path=str(tmp_path / "missing.txt")).score(_doc("x"))


# ------------------------------------------------------------------------------------- length


def test_length_bounds_on_chars_words_and_lines():
    assert _decide(LengthFilter(), "").reason == "length:too_few_chars"
    assert _decide(LengthFilter(), "a").kept
    bounded = LengthFilter(min_words=2, max_words=3, max_lines=1)
    assert _decide(bounded, "one").reason == "length:too_few_words"
    assert _decide(bounded, "one two").kept and _decide(bounded, "one two three").kept
    assert _decide(bounded, "one two three four").reason == "length:too_many_words"
    assert _decide(bounded, "one\ntwo").reason == "length:too_many_lines"
    assert _decide(LengthFilter(max_chars=3), "abcd").reason == "length:too_many_chars"


# ------------------------------------------------- code (Codex §3.1, The Stack, StarCoder §3)


def test_code_quality_line_lengths_and_alphanumeric_fraction():
    def code(*lines):
        return _decide(CodeQuality(), "\n".join(lines))

    short_lines = ["x = 1"] * 20  # keep the mean line length low
    assert code("x" * 1000, *short_lines).kept
    assert code("x" * 1001, *short_lines).reason == "code_quality:max_line_length"
    assert code("y" * 150, "z" * 50).kept  # mean 100
    assert code("y" * 151, "z" * 50).reason == "code_quality:mean_line_length"
    quarter = "ab" + "  " * 3  # 2 alphanumeric of 8 characters: 0.25
    assert code(quarter).kept
    assert code("a" + " " * 4).reason == "code_quality:alphanumeric_fraction"  # 0.2


# ------------------------------------------------------------------- registry, chains, re-tuning


def test_registry_builds_filters_by_name_and_rejects_unknown_names():
    assert set(filters.registered_names()) >= {
        "blocklist",
        "c4",
        "fineweb",
        "gopher_quality",
        "gopher_repetition",
        "language",
        "length",
    }
    assert filters.get("gopher_quality", min_words=10).min_words == 10
    with pytest.raises(KeyError, match="Unknown filter 'nope'"):
        filters.get("nope")
    with pytest.raises(ValueError, match="already registered"):

        @filters.register
        class Impostor(LengthFilter):
            name = "length"


def test_stored_scores_re_decide_without_recomputing():
    chain = [LengthFilter(), GopherQuality(), FineWebQuality()]
    text = "\n".join(" ".join(_prose(12, seed=i)) + "." for i in range(4))  # 48 words
    result = filters.apply_filters(_doc(text), chain)
    assert result.reason == "gopher_quality:too_few_words"
    assert "fineweb.line_punctuation_fraction" in result.scores  # scored despite the rejection
    assert filters.decide(result.scores, chain) == (False, "gopher_quality:too_few_words")
    retuned = [LengthFilter(), GopherQuality(min_words=40), FineWebQuality()]
    assert filters.decide(result.scores, retuned) == (True, None)
    assert filters.apply_filters(_doc(text), retuned).kept
    short_circuit = filters.apply_filters(_doc(text), chain, score_all=False)
    assert not any(key.startswith("fineweb.") for key in short_circuit.scores)
    with pytest.raises(KeyError, match="No stored scores for filter 'c4'"):
        filters.decide(result.scores, [C4Quality()])


def test_c4_rewrite_flows_to_the_next_filter():
    page = "\n".join(_line(6, seed=i) for i in range(3)) + "\nmenu home about"
    result = filters.apply_filters(_doc(page), [C4TfdsQuality(), LengthFilter(max_lines=3)])
    assert result.kept and "menu" not in result.document.text


def test_throughput_report_per_filter_family(tmp_path):
    """Not a speed assertion (DESIGN.md): prints docs/s per filter on ~400-word web-like pages."""
    eval_set = tmp_path / "eval.txt"
    eval_set.write_text(" ".join(_distinct_words(20, 6, seed=123)) + "\n")
    settings = {"language": {"languages": ()}, "decontaminate": {"eval_sets": {"e": eval_set}}}
    pages = []
    for i in range(100):
        lines = [
            " ".join(["the", "and"] + _distinct_words(10, 5, seed=1000 * i + j)) + "."
            for j in range(40)
        ]
        pages.append(_doc("\n".join(lines), url=f"https://site{i}.example/page"))
    rates = {}
    for name in filters.registered_names():
        if name == "perplexity":
            continue  # needs a trained scorer model: tests/test_curate_perplexity.py
        filter_ = filters.get(name, **settings.get(name, {}))
        filter_.apply(pages[0])  # warm-up: model loading, regex compilation
        started = time.perf_counter()
        for page in pages:
            filter_.apply(page)
        rates[name] = round(len(pages) / (time.perf_counter() - started))
    print("filter docs/s (~480-word pages):", rates)
    assert all(rate > 0 for rate in rates.values())


def test_ngram_statistics_equal_a_plain_python_reading_of_datatrove():
    """The vectorised statistics (with their shortcut once no n-gram repeats) equal a direct
    implementation of the definitions on texts from unique to highly repetitive."""
    import collections
    import random

    from jaxpretrain.curate.filters.gopher import ngram_char_fractions

    def reference(words, total, top_sizes, duplicate_sizes):
        stats = {}
        for n in top_sizes:
            grams = collections.Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
            gram, count = grams.most_common(1)[0] if grams else ((), 0)
            stats[f"top_{n}gram_char_fraction"] = count * len(" ".join(gram)) / total
        for n in duplicate_sizes:
            seen, repeated, position = set(), 0, 0
            while position <= len(words) - n:
                gram = tuple(words[position : position + n])
                if gram in seen:
                    repeated += sum(map(len, gram))
                    position += n
                else:
                    seen.add(gram)
                    position += 1
            stats[f"duplicate_{n}gram_char_fraction"] = repeated / total
        return stats

    rng = random.Random(0)
    for trial in range(300):
        vocabulary = [f"w{i}" * rng.randint(1, 3) for i in range(rng.choice([3, 10, 50, 1000]))]
        words = [rng.choice(vocabulary) for _ in range(rng.randint(0, 60))]
        total = len(" ".join(words)) + 1
        expected = reference(words, total, (2, 3, 4), (5, 6, 7, 8, 9, 10))
        got = ngram_char_fractions(words, total, (2, 3, 4), (5, 6, 7, 8, 9, 10))
        assert got == pytest.approx(expected), (trial, words)
