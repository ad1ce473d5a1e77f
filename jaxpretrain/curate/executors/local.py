"""Local multiprocess executor: curate units in a process pool, dedup out of core, finalize.

    WORK/config.json                 the config the work below belongs to
    WORK/units/<source>-<identity>/  one finished work unit (see `local_units.py`)
    WORK/dedup/                      dedup result (`dedup/run.py`; DONE marker written last)
    WORK/dedup_units.json            the units (names and DONE tokens) that result belongs to

WORK is `executor.work_dir`, by default OUTPUT/.work (or, for a gs:// output, a folder under
the system's temporary directory). A unit is named by its source and a hash of its input's
identity (`sources.shard_identity`: path, size and modification time for files), not by its
position, so a rerun redoes exactly the inputs that changed or appeared, forgets the units of
inputs that are gone, and redoes dedup when the set of units changed. A changed config starts
the work over. Folders left by a killed run (`*.tmp-<pid>`) are removed at the start. After a
successful finalize the work is deleted unless `executor.keep_work` (it holds ~3x the input).
Units run in `executor.workers` processes (0 = all cores; 1 = in this process). A source with
`max_documents >= 0` is read unit after unit so that the cap means "the first N documents".
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import pathlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import ml_collections
import tqdm

from jaxpretrain import paths
from jaxpretrain.curate import config as config_lib
from jaxpretrain.curate import sources, stages
from jaxpretrain.curate.dedup.run import dedup_units
from jaxpretrain.curate.executors import local_units

WORK_DIRNAME = ".work"
_DEDUP_UNITS = "dedup_units.json"
# What this executor writes into the work dir; only these are deleted (work_dir may be shared).
_WORK_ENTRIES = ("config.json", "units", "dedup", _DEDUP_UNITS)


def run(
    cfg: ml_collections.ConfigDict, output_dir: str | os.PathLike, progress: bool = True
) -> str:
    """Runs the whole pipeline for `cfg` into `output_dir` (local or gs://); returns the
    manifest path."""
    started = time.perf_counter()
    config_lib.validate_data_config(cfg)
    units = stages.list_work_units(cfg)  # Raises for a missing source before any work.
    work = _prepare_work_dir(work_dir(cfg, output_dir), cfg)
    unit_dirs = [work / "units" / unit_dirname(unit) for unit in units]
    _remove_other_units(work / "units", unit_dirs)
    processed = _curate_units(cfg, units, unit_dirs, progress)
    curate_seconds = time.perf_counter() - started
    dedup_dir = work / "dedup"
    _forget_dedup_of_other_units(work, dedup_dir, unit_dirs)
    dedup = dedup_units(
        [(unit.spec.name, unit_dir) for unit, unit_dir in zip(units, unit_dirs, strict=True)],
        dedup_dir,
        cfg,
        workers=_workers(cfg),
        progress=progress,
    )
    dedup_seconds = time.perf_counter() - started - curate_seconds
    stats = {
        "units": [
            _unit_stats(unit, unit_dir) for unit, unit_dir in zip(units, unit_dirs, strict=True)
        ],
        "dedup": dedup,
        "seconds": {
            "curate_units": round(curate_seconds, 2),
            "dedup": round(dedup_seconds, 2),
        },
        "units_processed": processed,
    }
    manifest_path = stages.finalize(
        local_units.unit_partitions(
            units, unit_dirs, dedup_dir / "removed_mask.npy", int(cfg.output.shard_bytes)
        ),
        _removals(unit_dirs, dedup_dir),
        _scores(unit_dirs),
        stats,
        cfg,
        output_dir,
    )
    if not cfg.executor.keep_work:
        remove_work_dir(work)
    return manifest_path


def work_dir(cfg: ml_collections.ConfigDict, output_dir: str | os.PathLike) -> pathlib.Path:
    """Where the resumable work goes: `executor.work_dir`, else OUTPUT/.work for a local output
    and, for a gs:// output, a folder under the temporary directory named after the output (so
    a rerun on this machine finds it).

    Units are written with local renames and appends, which object stores do not have; a remote
    `executor.work_dir` is refused.
    """
    if cfg.executor.work_dir:
        if paths.is_remote(cfg.executor.work_dir):
            raise ValueError(
                f"Data config key executor.work_dir={cfg.executor.work_dir!r} is a URL; the "
                "local executor needs a local folder for its work (or '' for the default)."
            )
        return pathlib.Path(cfg.executor.work_dir).expanduser().absolute()
    if paths.is_remote(output_dir):
        digest = hashlib.blake2b(os.fspath(output_dir).encode(), digest_size=8).hexdigest()
        return pathlib.Path(tempfile.gettempdir()) / "jaxpretrain-curate" / digest
    return pathlib.Path(output_dir).absolute() / WORK_DIRNAME


def unit_dirname(unit: stages.WorkUnit) -> str:
    """'<source>-<hash of the input's identity>': the same for the same input wherever it sits
    in the list of inputs, different once the input changed."""
    identity = sources.shard_identity(unit.spec, unit.shard)
    return f"{unit.spec.name}-{hashlib.blake2b(identity.encode(), digest_size=10).hexdigest()}"


def remove_work_dir(work: pathlib.Path) -> None:
    """Deletes what this executor wrote into `work`, and `work` itself once it is empty."""
    for name in _WORK_ENTRIES:
        entry = work / name
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)
    if work.is_dir() and not any(work.iterdir()):
        work.rmdir()


def _unit_stats(unit: stages.WorkUnit, unit_dir: pathlib.Path) -> dict[str, Any]:
    stats = json.loads((unit_dir / "stats.json").read_text())
    stats["shard"] = unit.shard.index  # the unit may have been made when it had another index
    return stats


def _removals(unit_dirs: list[pathlib.Path], dedup_dir: pathlib.Path) -> Iterator[dict]:
    for unit_dir in unit_dirs:
        yield from local_units.read_jsonl(unit_dir / "removed.jsonl")
    yield from local_units.read_jsonl(dedup_dir / "removed.jsonl")


def _scores(unit_dirs: list[pathlib.Path]) -> Iterator[dict]:
    for unit_dir in unit_dirs:
        yield from local_units.read_jsonl(unit_dir / "scores.jsonl")


def _config_fingerprint(cfg: ml_collections.ConfigDict) -> str:
    content = config_lib.as_json(cfg)
    content.pop("executor", None)  # How many workers ran does not change the work.
    return json.dumps(content, sort_keys=True, default=str)


def _prepare_work_dir(work: pathlib.Path, cfg: ml_collections.ConfigDict) -> pathlib.Path:
    """Keeps finished work only if it was done for the same config."""
    fingerprint = _config_fingerprint(cfg)
    recorded = work / "config.json"
    if not recorded.exists() or recorded.read_text() != fingerprint:
        remove_work_dir(work)
    (work / "units").mkdir(parents=True, exist_ok=True)
    recorded.write_text(fingerprint)
    return work


def _remove_other_units(units_dir: pathlib.Path, unit_dirs: list[pathlib.Path]) -> None:
    """Deletes the units of inputs that are gone or changed, and the `*.tmp-<pid>` folders of
    killed runs (the work dir belongs to one run at a time)."""
    wanted = {unit_dir.name for unit_dir in unit_dirs}
    for entry in units_dir.iterdir():
        if entry.name not in wanted:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _forget_dedup_of_other_units(
    work: pathlib.Path, dedup_dir: pathlib.Path, unit_dirs: list[pathlib.Path]
) -> None:
    """Deletes the dedup result unless it was made from exactly these units (names and the
    tokens their DONE markers got when they were last made)."""
    units = json.dumps([[d.name, (d / local_units.DONE).read_text()] for d in unit_dirs])
    recorded = work / _DEDUP_UNITS
    if not recorded.exists() or recorded.read_text() != units:
        shutil.rmtree(dedup_dir, ignore_errors=True)
        recorded.write_text(units)


def _workers(cfg: ml_collections.ConfigDict) -> int:
    return int(cfg.executor.workers) or os.cpu_count() or 1


def _curate_units(
    cfg: ml_collections.ConfigDict,
    units: list[stages.WorkUnit],
    unit_dirs: list[pathlib.Path],
    progress: bool,
) -> int:
    """Processes every unfinished unit; returns how many were processed."""
    chains: dict[int, list[tuple[stages.WorkUnit, pathlib.Path]]] = {}
    jobs: list[list[tuple[stages.WorkUnit, pathlib.Path]]] = []
    for unit, unit_dir in zip(units, unit_dirs, strict=True):
        if unit.spec.max_documents >= 0:
            if unit.source_rank not in chains:
                chains[unit.source_rank] = []
                jobs.append(chains[unit.source_rank])
            chains[unit.source_rank].append((unit, unit_dir))
        elif not local_units.is_done(unit_dir):
            jobs.append([(unit, unit_dir)])
    # A capped source may also redo finished units whose share of the cap changed.
    pending_units = sum(not local_units.is_done(d) for job in jobs for _, d in job)
    workers = _workers(cfg)
    bar = tqdm.tqdm(total=pending_units, desc="curate", unit="shard", disable=not progress)
    processed = 0
    documents = 0
    started = time.perf_counter()

    def done(job_stats: list[dict]) -> None:
        nonlocal documents, processed
        documents += sum(stats["read"]["documents"] for stats in job_stats)
        processed += len(job_stats)
        bar.update(len(job_stats))
        rate = documents / max(time.perf_counter() - started, 1e-9)
        bar.set_postfix(docs=documents, docs_per_s=f"{rate:.0f}")

    with bar:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                done(_run_job(cfg, job))
        else:
            context = multiprocessing.get_context("spawn")  # fork is unsafe next to JAX threads
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
                futures = [pool.submit(_run_job, cfg, job) for job in jobs]
                for future in concurrent.futures.as_completed(futures):
                    done(future.result())
    return processed


def _run_job(
    cfg: ml_collections.ConfigDict, job: list[tuple[stages.WorkUnit, pathlib.Path]]
) -> list[dict]:
    """Runs the units of `job` in order that are unfinished or were made with another document
    limit (a chain shares one source's cap); returns the stats of the units it processed."""
    curator = stages.Curator(cfg)
    processed = []
    remaining = job[0][0].spec.max_documents
    for unit, unit_dir in job:
        if local_units.is_done(unit_dir) and local_units.made_with_limit(unit_dir, remaining):
            read = json.loads((unit_dir / "stats.json").read_text())["read"]["documents"]
        else:
            stats = local_units.process_unit(cfg, curator, unit, unit_dir, remaining)
            processed.append(stats)
            read = stats["read"]["documents"]
        if remaining >= 0:
            remaining = max(0, remaining - read)
    return processed
