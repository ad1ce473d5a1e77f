"""Tiny T5 span corruption: the tiny_clm model and data with objective `span_corruption` (15%
noise in spans of mean length 3 replaced by sentinels; on the decoder-only stack the inputs
attend bidirectionally, the targets causally). CPU, minutes.

    python -m jaxpretrain.main --config=configs/tiny_span_corruption.py \
        --workdir=runs/tiny_span_corruption

Compare it with the other objectives on the same data and compute with
`tools/compare_objectives.py`; its settings are the `objective.*` keys of jaxpretrain/config.py.
"""

import pathlib

from jaxpretrain.config import load_config_file


def get_config():
    config = load_config_file(pathlib.Path(__file__).with_name("tiny_clm.py"))
    config.objective.name = "span_corruption"
    return config
