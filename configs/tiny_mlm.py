"""Tiny masked LM: the tiny_clm model and data with objective `mlm` (BERT-style 80/10/10
masking of 15% of the tokens, drawn anew every epoch). CPU, minutes.

    python -m jaxpretrain.main --config=configs/tiny_mlm.py --workdir=runs/tiny_mlm

Compare it with the other objectives on the same data and compute with
`tools/compare_objectives.py`; its settings are the `objective.*` keys of jaxpretrain/config.py.
"""

import pathlib

from jaxpretrain.config import load_config_file


def get_config():
    config = load_config_file(pathlib.Path(__file__).with_name("tiny_clm.py"))
    config.objective.name = "mlm"
    return config
