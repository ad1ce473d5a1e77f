"""Llama-2-7B shapes (configs/clm_7b.py: model, batch, FSDP mesh, 64+ devices) trained with
T5 span corruption (noise density 0.15, mean span 3) on the decoder-only stack.

    python -m jaxpretrain.main --config=configs/span_corruption_7b.py \
        --workdir=gs://BUCKET/span_corruption_7b --config.data.dir=gs://BUCKET/data/my_corpus
    python -m jaxpretrain.main --config=configs/span_corruption_7b.py --workdir=/tmp/x \
        --mode=dry_run
"""

import pathlib

from jaxpretrain.config import load_config_file


def get_config():
    config = load_config_file(pathlib.Path(__file__).with_name("clm_7b.py"))
    config.objective.name = "span_corruption"
    return config
