"""Prepare training data from a data config: clean, filter, dedup, tokenize, write shards.

    python tools/prepare_data.py --config=configs/data/stdlib.py --output=/tmp/data/stdlib
    python tools/prepare_data.py --config=configs/data/seed_mixture.py --output=/data/seed \
        --config.input_dir=/raw --config.executor.workers=16

Any config key can be overridden with --config.KEY=VALUE (see jaxpretrain/curate/config.py).
--output may be a gs:// URL (the work then goes to a local scratch folder, or
--config.executor.work_dir). A rerun after a failure skips the input files already finished
and redoes those that changed; the work is deleted after success unless
--config.executor.keep_work=True (then a rerun redoes only changed or added inputs).
Progress bars go to stderr; the manifest path is printed on success.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Data config file (configs/data/*.py).", lock_config=True
)
_OUTPUT = flags.DEFINE_string(
    "output", None, "Directory (or gs:// URL) to write the prepared data into."
)
flags.mark_flags_as_required(["config", "output"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; settings go in --config.KEY=VALUE.")
    from jaxpretrain.curate import prepare

    try:
        manifest_path = prepare.prepare_from_config(_CONFIG.value, _OUTPUT.value, progress=True)
    except (ValueError, FileNotFoundError, PermissionError, KeyError, ImportError) as error:
        sys.exit(f"error: {error}")
    print(manifest_path)


if __name__ == "__main__":
    app.run(main)
