"""Tiny UL2: the tiny_clm model and data with objective `ul2` (a mixture of R, X and S
denoisers, each example led by its paradigm token). CPU, minutes.

    python -m jaxpretrain.main --config=configs/tiny_ul2.py --workdir=runs/tiny_ul2

Compare it with the other objectives on the same data and compute with
`tools/compare_objectives.py`; its settings are the `objective.*` keys of jaxpretrain/config.py.
"""

import pathlib

from jaxpretrain.config import load_config_file


def get_config():
    config = load_config_file(pathlib.Path(__file__).with_name("tiny_clm.py"))
    config.objective.name = "ul2"
    return config
