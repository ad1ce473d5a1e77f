"""Executors run the curation stages (`curate/stages.py`) over a whole config.

    from jaxpretrain.curate import executors
    manifest_path = executors.run(cfg, "/data/prepared")   # cfg.executor.name picks one

'local' (default): a process pool on this machine, resumable through completion markers on
units named by their input's identity (a changed input file redoes exactly its unit).
'beam': Apache Beam (`executors/beam.py`, needs the `beam` extra), see docs/scale_out.md.
Both end in the same finalize code (`curate/finalize.py`: the local executor calls `finalize`,
Beam runs its `write_partition` on the workers), so both write the same prepared directory.
"""

from __future__ import annotations

import os

import ml_collections


def run(
    cfg: ml_collections.ConfigDict, output_dir: str | os.PathLike, progress: bool = True
) -> str:
    """Runs the executor named by `cfg.executor.name`; returns the manifest path."""
    if cfg.executor.name == "local":
        from jaxpretrain.curate.executors import local

        return local.run(cfg, output_dir, progress=progress)
    if cfg.executor.name == "beam":
        from jaxpretrain.curate.executors import beam

        return beam.run_beam(cfg, str(output_dir))
    raise ValueError(
        f"Data config key executor.name={cfg.executor.name!r} is unknown; use 'local' or 'beam'."
    )
