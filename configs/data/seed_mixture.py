"""The seed pretraining mixture: web 45%, books 15%, wikipedia 5%, code 15%, academic 10%,
news 10%, from six JSONL directories (one JSON object per line with a `text` field).

    python tools/prepare_data.py --config=configs/data/seed_mixture.py --output=/data/seed \
        --config.input_dir=/raw      # reads /raw/web, /raw/books, ..., /raw/news

A single source can be pointed elsewhere: --config.sources[0].path=/other/web. Temperature
sampling over source sizes instead of fixed weights: --config.mixture.mode=temperature
--config.mixture.temperature=3.3 (p_i ∝ tokens_i^(1/T)).

Each source picks a filter chain of `filters.chains` (docs/data.md names where each rule comes
from): web and news run FineWeb's chain (language, Gopher repetition and quality, C4 as FineWeb
ran it, FineWeb's rules); books, wikipedia and academic text the `prose` chain (Gopher only: C4's
curly-bracket rule would drop every LaTeX page); code the `code` chain (The Stack / StarCoder
line-length and alphanumeric rules). Exact and MinHash near-duplicate removal run across all
sources.
"""

from jaxpretrain.curate import config as data_config

# (source, weight, filter chain)
SEED_SOURCES = (
    ("web", 45.0, "fineweb"),
    ("books", 15.0, "prose"),
    ("wikipedia", 5.0, "prose"),
    ("code", 15.0, "code"),
    ("academic", 10.0, "prose"),
    ("news", 10.0, "fineweb"),
)


def get_config():
    c = data_config.default_data_config()
    c.input_dir = "/data/raw"  # relative source paths are read under it
    c.sources = [
        data_config.source_config(
            name=name,
            type="jsonl",
            path=name,
            weight=weight,
            kind="code" if name == "code" else "auto",
            filter_chain=chain,
        )
        for name, weight, chain in SEED_SOURCES
    ]
    c.tokenizer.vocab_size = 32_000
    return c
