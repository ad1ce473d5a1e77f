"""Entry point: `python -m jaxpretrain.main --config=configs/tiny_clm.py --workdir=DIR`.

Modes:
- `train`: prepare data if missing, train, evaluate, print a sample. Rerunning the same command
  resumes, also after a kill or a preemption (SIGTERM saves a checkpoint and exits 0).
- `eval`: evaluate the latest checkpoint.
- `dry_run`: compile the real train step for the configured mesh on abstract arrays (nothing
  allocated) and write WORKDIR/dry_run.json: parameters, FLOPs, per-device memory and which
  accelerators it fits (how the 7B config is sized on a laptop; see jaxpretrain/dry_run.py).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, config.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "dry_run"], "What to run.")
# One process per host on a GPU cluster without SLURM: every host runs the same command with its
# own --process_id. Under SLURM, or with JAX_COORDINATOR_ADDRESS set (tpu/launch.sh sets it on
# Cloud TPU VMs), JAX discovers the rest.
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for a multi-host run."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes (hosts) in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0-based.")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with one-sentence errors for config overrides that name no key."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as error:
        missing = str(error).strip("\"'")
        culprits = [arg for arg in argv if arg.startswith("--config.") and missing in arg]
        where = culprits[0] if culprits else f"a --config.* override ({missing!r})"
        sys.exit(
            f"error: {where} names no config key; the keys and their meaning are listed in "
            "jaxpretrain/config.py (default_config)."
        )
    except flags.Error as error:
        sys.exit(f"error: {error}")


def is_multi_process_launch() -> bool:
    """True under a launcher that starts one process per host (TPU pod, SLURM, explicit)."""
    return bool(
        os.environ.get("JAX_COORDINATOR_ADDRESS")
        or "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
        or int(os.environ.get("SLURM_NTASKS", "1")) > 1
    )


def prepare_data_once(config, workdir: str) -> None:
    """Prepares missing data on process 0 while the others wait, then on any process that
    still lacks it (hosts whose workdir is a local disk, not shared storage)."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    from jaxpretrain.curate import prepare

    failure: Exception | None = None
    if jax.process_index() == 0:
        try:
            prepare.ensure_prepared_data(config, workdir)
        except Exception as error:  # re-raised below, after the others have heard of it
            failure = error
    if jax.process_count() > 1:
        # A broadcast, not a bare barrier: every process learns whether process 0 failed and
        # stops with it instead of waiting at a barrier process 0 never reaches.
        failed = multihost_utils.broadcast_one_to_all(np.int32(failure is not None))
        if failure is None and int(failed):
            raise FileNotFoundError(
                f"process 0 failed to prepare the data for {workdir}; its log says why."
            )
    if failure is not None:
        raise failure
    if jax.process_count() > 1:
        prepare.ensure_prepared_data(config, workdir)


DEFAULT_COMPILATION_CACHE_DIR = "~/.cache/jaxpretrain/jax"


def use_compilation_cache(cache_dir: str) -> str | None:
    """Points JAX's persistent compilation cache at `cache_dir` (train.compilation_cache_dir);
    returns the folder used, None when off. Call before anything is compiled."""
    import jax

    if cache_dir == "auto":
        if jax.default_backend() == "cpu":
            return None
        cache_dir = DEFAULT_COMPILATION_CACHE_DIR
    if not cache_dir:
        return None
    from jaxpretrain import paths

    resolved = str(paths.resolve(os.path.expanduser(cache_dir)))
    jax.config.update("jax_compilation_cache_dir", resolved)
    return resolved


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; settings go in --config.KEY=VALUE.")
    import jax

    # Must precede any other JAX call.
    if _COORDINATOR.value is not None:
        jax.distributed.initialize(
            _COORDINATOR.value, num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value
        )
    elif is_multi_process_launch():
        jax.distributed.initialize()  # discovers the cluster from the environment

    from jaxpretrain import config as config_lib
    from jaxpretrain import paths, train

    config, workdir = _CONFIG.value, _WORKDIR.value
    use_compilation_cache(config.train.compilation_cache_dir)
    try:
        paths.check_supported(workdir, "--workdir")
        paths.check_supported(config_lib.data_dir(config, workdir), "data.dir")
        if _MODE.value == "dry_run":
            from jaxpretrain import dry_run

            report = dry_run.dry_run(config, workdir)  # validates for the devices it compiles for
            print(report.table())
            print(f"wrote {paths.resolve(workdir) / 'dry_run.json'}")
            return
        config_lib.validate(config, jax.device_count())
        paths.resolve(workdir).mkdir(parents=True, exist_ok=True)
        prepare_data_once(config, workdir)
        if _MODE.value == "eval":
            print(train.evaluate_checkpoint(config, workdir))
            return
        experiment = train.build_experiment(config, workdir)
    except (config_lib.ConfigError, FileNotFoundError, ValueError) as error:
        # Set-up failures (bad config, missing or unreadable data, a mesh that does not fit the
        # model) raise these with a message naming the key or file; a traceback would bury it.
        sys.exit(f"error: {error}")
    from jaxpretrain import checkpoint, recovery

    try:
        result = train.run_training(experiment, workdir)
    except (config_lib.ConfigError, checkpoint.CheckpointError, recovery.AnomalyError) as error:
        # A checkpoint that cannot be used or saved, or a run that keeps diverging: the message
        # says what to do, and every complete checkpoint and metrics record is kept.
        sys.exit(f"error: {error}")
    if result.preempted:
        print(f"preempted: saved a checkpoint in {workdir}; rerun the same command to resume.")
        return
    # Sampling is a jitted call on globally sharded parameters: every process must run it.
    text = train.sample_text(result, config.sample)
    if jax.process_index() == 0:
        print("sample:", repr(config.sample.prompt + text))


if __name__ == "__main__":
    import jax

    # Every jax option is a flag too, as in flax's examples: `--jax_log_compiles`,
    # `--jax_num_cpu_devices=8`, `--jax_mock_gpu_topology=1x8x1` (a dry run on one GPU compiles
    # for 8), read before any backend starts.
    jax.config.config_with_absl()
    app.run(main, flags_parser=parse_flags)
