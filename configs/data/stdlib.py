"""The embedded corpus (this Python's standard library), curated like the default main job.

    python tools/prepare_data.py --config=configs/data/stdlib.py --output=/tmp/data/stdlib

Cleaning and exact dedup only: the web-prose quality filters and near-duplicate removal would
drop most of the code and short docstrings. Turn them on with e.g.
--config.dedup.minhash.enabled=True.
"""

from jaxpretrain.curate import config as data_config


def get_config():
    c = data_config.default_data_config()
    c.sources = [data_config.source_config(name="stdlib", type="stdlib")]
    c.filters.chain = ()
    c.filters.code_chain = ()
    c.dedup.minhash.enabled = False
    return c
