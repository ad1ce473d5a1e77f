"""Tiny prefix LM: the tiny_clm model and data with objective `prefix_lm` (each window split at
a random point into a bidirectional prefix and a causal target). CPU, minutes.

    python -m jaxpretrain.main --config=configs/tiny_prefix_lm.py --workdir=runs/tiny_prefix_lm

Compare it with the other objectives on the same data and compute with
`tools/compare_objectives.py`; its settings are the `objective.*` keys of jaxpretrain/config.py.
"""

import pathlib

from jaxpretrain.config import load_config_file


def get_config():
    config = load_config_file(pathlib.Path(__file__).with_name("tiny_clm.py"))
    config.objective.name = "prefix_lm"
    return config
