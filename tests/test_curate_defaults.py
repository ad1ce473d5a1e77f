"""The default filter chains do what their sources ran: FineWeb's C4 settings, Gopher's common
n-gram definition, and one chain per kind of source in the seed mixture."""

import importlib.util
import pathlib

import pytest
from test_curate_filters import _distinct_words as _words  # pytest puts tests/ on sys.path

from jaxpretrain.curate import config as config_lib
from jaxpretrain.curate import filters
from jaxpretrain.curate.document import Document
from jaxpretrain.curate.stages import Curator

_REPO = pathlib.Path(__file__).resolve().parent.parent


def _doc(text, source="test"):
    return Document("doc", text, source)


def _menu_page(punctuated, unpunctuated):
    """Lines of 8 words (> 30 characters): `punctuated` end in '.', then `unpunctuated` do not."""
    lines = [" ".join(_words(8, seed=i)) for i in range(punctuated + unpunctuated)]
    return "\n".join([line + "." for line in lines[:punctuated]] + lines[punctuated:])


# ---------------------------------------------------------------- C4 as FineWeb ran it


def test_fineweb_c4_keeps_lines_without_terminal_punctuation_that_c4_tfds_drops():
    page = _menu_page(punctuated=6, unpunctuated=4)
    fineweb_c4 = filters.get("c4").apply(_doc(page))
    assert fineweb_c4.kept and fineweb_c4.document.text == page  # every line kept
    tfds = filters.get("c4_tfds").apply(_doc(page))
    assert tfds.kept and tfds.document.text == "\n".join(page.split("\n")[:6])
    assert tfds.scores["lines_dropped_no_end_mark"] == 4


def test_fineweb_line_punctuation_rule_can_fire_after_c4():
    # 2 of 20 lines end in punctuation (0.10 < 0.12): FineWeb's own rule must see that. With the
    # TFDS C4 step in front, only the 2 punctuated lines reach it and the rule never fires.
    chain = [filters.get(name) for name in ("c4", "fineweb")]
    result = filters.apply_filters(_doc(_menu_page(punctuated=2, unpunctuated=18)), chain)
    assert result.reason == "fineweb:line_punctuation"


def test_fineweb_c4_settings_are_datatroves():
    # datatrove C4QualityFilter defaults with filter_no_terminal_punct=False (examples/fineweb.py):
    # 3 words per line and 5 sentences per page.
    c4 = filters.get("c4")
    three_words = "\n".join(" ".join(_words(3, seed=i)) + "." for i in range(5))
    assert c4.apply(_doc(three_words)).kept
    four_sentences = "\n".join(" ".join(_words(3, seed=i)) + "." for i in range(4))
    assert c4.apply(_doc(four_sentences)).reason == "c4:too_few_sentences"
    two_words = three_words + "\n" + " ".join(_words(2, seed=9)) + "."
    assert c4.apply(_doc(two_words)).document.text == three_words


def test_default_chain_is_fineweb_chain_with_its_c4():
    cfg = config_lib.default_data_config()
    assert tuple(cfg.filters.chain) == tuple(cfg.filters.chains.fineweb)
    assert "c4" in cfg.filters.chain and "c4_tfds" not in cfg.filters.chain


# ------------------------------------------------------- Gopher duplicated n-gram fraction


def _twice_repeated_phrase_page():
    """A 10-word phrase (50 word characters) twice among 80 distinct words: 599 characters."""
    phrase, filler = _words(10, seed=1), _words(80, seed=2)
    return " ".join(phrase + filler[:40] + phrase + filler[40:])


def test_duplicated_ngram_fraction_counts_repeats_only_by_default():
    text = _twice_repeated_phrase_page()
    assert len(text) == 599
    result = filters.get("gopher_repetition").apply(_doc(text))
    # datatrove: the second copy's 50 characters over the text's 599 (0.083 < 0.10 for 10-grams).
    assert result.scores["duplicate_10gram_char_fraction"] == 50 / 599
    assert result.kept, result.reason


def test_duplicated_ngram_fraction_stricter_reading_is_an_option():
    strict = filters.get("gopher_repetition", count_first_occurrences=True)
    result = strict.apply(_doc(_twice_repeated_phrase_page()))
    assert result.scores["duplicate_5gram_char_fraction"] == 100 / 599  # both copies
    assert result.reason == "gopher_repetition:duplicate_5gram"


# ------------------------------------------------------------------ per-source chains

_LATEX_PAGE = "\n".join(
    [
        r"\section{Introduction}",
        r"We study the convergence of stochastic gradient methods for training large models, "
        r"and we show that the rate depends on the noise of the gradient \cite{robbins1951}.",
        r"The main result of this paper is a bound on the expected loss that holds with high "
        r"probability for any step size that is small enough, as stated in \emph{Theorem 1}.",
        r"Our analysis builds on earlier work about the stability of learning algorithms, and it "
        r"extends that work to the case of heavy tailed noise with a finite second moment.",
        r"We then describe the experiments that support the theory, where models with up to one "
        r"billion parameters were trained on text with the method that we propose here.",
        r"Finally we discuss the limits of the analysis and the open questions that remain, "
        r"with a short summary of the related work in the last section of the paper.",
    ]
)


def _seed_mixture_config():
    spec = importlib.util.spec_from_file_location(
        "seed_mixture", _REPO / "configs" / "data" / "seed_mixture.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    config_lib.validate_data_config(cfg)
    return cfg


def test_seed_mixture_keeps_latex_from_academic_and_drops_it_from_web():
    curator = Curator(_seed_mixture_config())
    academic = curator.process(Document("paper", _LATEX_PAGE, "academic"))
    assert academic.removal is None, academic.removal
    web = curator.process(Document("page", _LATEX_PAGE, "web"))
    assert web.removal is not None and web.removal["reason"] == "c4:curly_bracket"


def test_seed_mixture_code_chain_drops_minified_code_only():
    curator = Curator(_seed_mixture_config())
    readable = "\n".join(f"def f{i}(x):\n    return x + {i}" for i in range(20))
    assert curator.process(Document("a.py", readable, "code", kind="code")).removal is None
    minified = ";".join(f"var a{i}=b{i}" for i in range(200))  # one 2,000-character line
    removal = curator.process(Document("a.js", minified, "code", kind="code")).removal
    assert removal is not None and removal["reason"] == "code_quality:max_line_length"


def test_source_without_chain_keeps_the_chains_by_kind():
    cfg = config_lib.default_data_config()
    cfg.sources = [
        config_lib.source_config(name="web", type="jsonl", path="w"),
        config_lib.source_config(name="papers", type="jsonl", path="p", filter_chain="prose"),
    ]
    cfg.filters.chain = ("length", "c4")
    cfg.filters.code_chain = ()
    config_lib.validate_data_config(cfg)
    curator = Curator(cfg)
    web = curator.process(Document("w", _LATEX_PAGE, "web"))
    assert web.removal["reason"] == "c4:curly_bracket"
    assert curator.process(Document("c", "x = {}", "web", kind="code")).removal is None
    assert curator.process(Document("p", _LATEX_PAGE, "papers")).removal is None


def test_unknown_filter_chain_is_rejected_naming_the_source():
    cfg = config_lib.default_data_config()
    cfg.sources = [config_lib.source_config(name="web", type="jsonl", path="w", filter_chain="wbe")]
    with pytest.raises(ValueError, match=r"sources\[0\]\.filter_chain='wbe'.*fineweb"):
        config_lib.validate_data_config(cfg)
