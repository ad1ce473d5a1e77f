"""Starts a run from Llama-format weights: continued pretraining of a Hugging Face checkpoint.

    python tools/import_hf.py --hf=runs/tiny_clm/hf --config=configs/tiny_clm.py --workdir=runs/more
    python -m jaxpretrain.main --config=configs/tiny_clm.py --workdir=runs/more

Reads the `LlamaForCausalLM` folder --hf (config.json + safetensors), checks every parameter
shape against the config's model (an error names the key or tensor and both values), prepares
the run's data if missing (as the main job would), and writes checkpoint 0 into --workdir: the
folder's weights, a fresh optimizer state, the data position of a run that has read nothing. The
main job with the same config (and the same --config.KEY=VALUE overrides) then resumes from it,
evaluating at step 0 when eval.every > 0. The vocabulary must be the prepared data's: the
folder's embedding row i is used for token id i of that tokenizer. See docs/huggingface.md.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from jaxpretrain import cli

# Flags live in their own FlagValues: jaxpretrain.main (imported for its launch detection)
# defines --workdir and --config in absl's global FLAGS.
_FLAGS = flags.FlagValues()
_HF = flags.DEFINE_string("hf", None, "Hugging Face Llama folder (local).", flag_values=_FLAGS)
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file (configs/*.py).", flag_values=_FLAGS
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "New run directory (local or gs://).", flag_values=_FLAGS
)
flags.mark_flags_as_required(["hf", "config", "workdir"], flag_values=_FLAGS)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; settings go in --config.KEY=VALUE.")
    import jax

    from jaxpretrain import main as main_lib

    if main_lib.is_multi_process_launch():
        jax.distributed.initialize()  # must precede any other JAX call

    from jaxpretrain import checkpoint, paths
    from jaxpretrain import config as config_lib
    from jaxpretrain.hf import importer

    config, workdir = _CONFIG.value, _WORKDIR.value
    try:
        paths.check_supported(workdir, "--workdir")
        config_lib.validate(config, jax.device_count())
        paths.resolve(workdir).mkdir(parents=True, exist_ok=True)
        main_lib.prepare_data_once(config, workdir)
        step = importer.import_checkpoint(_HF.value, config, workdir)
    except (
        config_lib.ConfigError,
        FileNotFoundError,
        ValueError,
        ImportError,
        checkpoint.CheckpointError,
    ) as error:
        sys.exit(f"error: {error}")
    if jax.process_index() == 0:
        print(
            f"wrote checkpoint {step} of {_HF.value} to {workdir}; train with: python -m "
            f"jaxpretrain.main --config=... --workdir={workdir} (the same config and overrides)"
        )


if __name__ == "__main__":
    app.run(main, flags_parser=cli.tool_flags_parser(_FLAGS, __doc__))
