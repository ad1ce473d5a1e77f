"""Exports a training checkpoint as a Hugging Face `LlamaForCausalLM` folder.

    python tools/export_hf.py --workdir=runs/tiny_clm --output=runs/tiny_clm/hf
    python tools/export_hf.py --workdir=gs://bucket/run1 --output=gs://bucket/run1/hf \
        --step=20000 --dtype=bfloat16

then, with transformers installed (`pip install -e '.[hf]'`):

    model = transformers.AutoModelForCausalLM.from_pretrained("runs/tiny_clm/hf")
    tokenizer = transformers.AutoTokenizer.from_pretrained("runs/tiny_clm/hf")

Writes config.json, generation_config.json, model.safetensors (or model-0000K-of-0000N shards
and model.safetensors.index.json above --max_shard_size) and tokenizer files that encode text to
the same ids as the run's tokenizer (no BOS added: prepend tokenizer.bos_token_id as training
did). The newest checkpoint unless --step. Parameters are gathered one tensor at a time, so a
model larger than one device exports; on a multi-host launch (as `jaxpretrain.main` detects
one) every process must run it and process 0 writes. See docs/huggingface.md.
"""

from __future__ import annotations

import re
import sys

from absl import app, flags

from jaxpretrain import cli

# Flags live in their own FlagValues: jaxpretrain.main (imported for its launch detection)
# defines --workdir and --config in absl's global FLAGS.
_FLAGS = flags.FlagValues()
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Training workdir (local or gs://).", flag_values=_FLAGS
)
_OUTPUT = flags.DEFINE_string(
    "output", None, "Folder to write (local or gs://).", flag_values=_FLAGS
)
_STEP = flags.DEFINE_integer(
    "step", None, "Checkpoint step (default: the newest).", flag_values=_FLAGS
)
_DTYPE = flags.DEFINE_enum(
    "dtype", "float32", ["float32", "bfloat16"], "Stored weight dtype.", flag_values=_FLAGS
)
_MAX_SHARD_SIZE = flags.DEFINE_string(
    "max_shard_size", "5GB", "Largest safetensors file, e.g. 5GB, 500MB.", flag_values=_FLAGS
)
_TOKENIZER_PATH = flags.DEFINE_string(
    "tokenizer_path",
    None,
    "The run's tokenizer.model, when its prepared data is gone.",
    flag_values=_FLAGS,
)
_EXPORT_TOKENIZER = flags.DEFINE_bool(
    "export_tokenizer", True, "Write the tokenizer files.", flag_values=_FLAGS
)
flags.mark_flags_as_required(["workdir", "output"], flag_values=_FLAGS)

_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """'5GB' -> 5_000_000_000 (decimal units as transformers' max_shard_size; KiB, MiB, GiB)."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", text)
    unit = (match.group(2).upper() or "B") if match else None
    if unit not in _UNITS:
        raise ValueError(f"--max_shard_size={text!r} is not a size; write e.g. 5GB or 500MB.")
    return int(float(match.group(1)) * _UNITS[unit])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}.")
    import jax

    from jaxpretrain import main as main_lib

    if main_lib.is_multi_process_launch():
        jax.distributed.initialize()  # must precede any other JAX call

    from jaxpretrain import checkpoint, paths
    from jaxpretrain.hf import export

    try:
        paths.check_supported(_WORKDIR.value, "--workdir")
        paths.check_supported(_OUTPUT.value, "--output")
        output = export.export(
            _WORKDIR.value,
            _OUTPUT.value,
            step=_STEP.value,
            dtype=_DTYPE.value,
            max_shard_bytes=parse_size(_MAX_SHARD_SIZE.value),
            tokenizer_path=_TOKENIZER_PATH.value,
            write_tokenizer=_EXPORT_TOKENIZER.value,
        )
    except (OSError, ValueError, ImportError, checkpoint.CheckpointError) as error:
        sys.exit(f"error: {error}")
    if jax.process_index() == 0:
        print(output)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.tool_flags_parser(_FLAGS, __doc__))
