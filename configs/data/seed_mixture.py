"""The seed pretraining mixture: web 45%, books 15%, wikipedia 5%, code 15%, academic 10%,
news 10%, from six JSONL directories (one JSON object per line with a `text` field).

    python tools/prepare_data.py --config=configs/data/seed_mixture.py --output=/data/seed \
        --config.input_dir=/raw      # reads /raw/web, /raw/books, ..., /raw/news

A single source can be pointed elsewhere: --config.sources[0].path=/other/web. Temperature
sampling over source sizes instead of fixed weights: --config.mixture.mode=temperature
--config.mixture.temperature=3.3 (p_i ∝ tokens_i^(1/T)).

Web, books, wikipedia, academic and news go through the full prose filter chain (FineWeb's:
language, Gopher repetition and quality, C4, FineWeb rules); code documents only through the
length floor. Exact and MinHash near-duplicate removal run across all sources.
"""

from jaxpretrain.curate import config as data_config

SEED_WEIGHTS = (
    ("web", 45.0),
    ("books", 15.0),
    ("wikipedia", 5.0),
    ("code", 15.0),
    ("academic", 10.0),
    ("news", 10.0),
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
        )
        for name, weight in SEED_WEIGHTS
    ]
    c.tokenizer.vocab_size = 32_000
    c.output.shards_per_source = 64
    c.output.validation_shards_per_source = 4
    return c
