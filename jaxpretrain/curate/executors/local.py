"""Local multiprocess executor: curate units in a process pool, dedup out of core, finalize.

    OUTPUT/.work/config.json               the config the work below belongs to
    OUTPUT/.work/units/<source>-<shard>/   one finished work unit (renamed into place when done):
        docs.jsonl      documents kept by clean + filters (id, text, source, kind, order_key)
        keys.npz        exact-dedup hashes and LSH band keys of those documents
        removed.jsonl   removals at stages 'clean' and 'filter'
        scores.jsonl    filter scores of every document that reached the filters
        stats.json      the unit's counters (report.new_unit_stats)
    OUTPUT/.work/dedup/                    dedup result (DONE marker written last)

A rerun with the same config skips every finished unit and a finished dedup; a changed config
starts the work over. The outputs (shards, report, manifest last) are rewritten by `finalize`.
Units run in `executor.workers` processes (0 = all cores; 1 = in this process). A source with
`max_documents >= 0` is read unit after unit so that the cap means "the first N documents".
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import pathlib
import shutil
import time
from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np
import tqdm

from jaxpretrain.curate import config as config_lib
from jaxpretrain.curate import report as report_lib
from jaxpretrain.curate import sources, stages
from jaxpretrain.curate.dedup.clusters import IdLog, UnionFind, build_result
from jaxpretrain.curate.dedup.spill import SpillSorter, star_edges
from jaxpretrain.curate.document import Document

WORK_DIRNAME = ".work"
_DONE = "DONE"
_HASH_RECORD = np.dtype([("hash_high", "<u8"), ("hash_low", "<u8"), ("doc", "<i8")])
_BUCKET_RECORD = np.dtype([("band", "<u4"), ("bucket", "<u8"), ("doc", "<i8")])
# Separates source and id in the dedup id log (ids are unique per source, not across sources).
_ID_SEPARATOR = "\x1f"


def run(
    cfg: ml_collections.ConfigDict, output_dir: str | os.PathLike, progress: bool = True
) -> str:
    """Runs the whole pipeline for `cfg` into `output_dir`; returns the manifest path."""
    started = time.perf_counter()
    config_lib.validate_data_config(cfg)
    units = stages.list_work_units(cfg)  # Raises for a missing source before any work.
    output_path = pathlib.Path(output_dir)
    work = _prepare_work_dir(output_path / WORK_DIRNAME, cfg)
    unit_dirs = [work / "units" / unit.name for unit in units]
    processed = _curate_units(cfg, units, unit_dirs, progress)
    curate_seconds = time.perf_counter() - started
    dedup = _dedup(cfg, units, unit_dirs, work / "dedup", progress)
    dedup_seconds = time.perf_counter() - started - curate_seconds
    removed_mask = np.load(work / "dedup" / "removed_mask.npy")
    total_kept = int((~removed_mask).sum())

    passes = iter(("check", "train tokenizer", "tokenize and write"))

    def kept_documents() -> Iterator[Document]:
        index = 0
        desc = next(passes, "read kept documents")
        quiet = not progress or desc == "check"  # finalize only peeks at the first document
        bar = tqdm.tqdm(total=total_kept, desc=desc, unit="doc", disable=quiet)
        with bar:
            for unit_dir in unit_dirs:
                for record in _read_jsonl(unit_dir / "docs.jsonl"):
                    if not removed_mask[index]:
                        bar.update()
                        yield Document(
                            id=record["id"],
                            text=record["text"],
                            source=record["source"],
                            kind=record["kind"],
                            metadata={stages.ORDER_KEY: record["order_key"]},
                        )
                    index += 1

    def removals() -> Iterator[dict]:
        for unit_dir in unit_dirs:
            yield from _read_jsonl(unit_dir / "removed.jsonl")
        yield from _read_jsonl(work / "dedup" / "removed.jsonl")

    def scores() -> Iterator[dict]:
        for unit_dir in unit_dirs:
            yield from _read_jsonl(unit_dir / "scores.jsonl")

    stats = {
        "units": [json.loads((d / "stats.json").read_text()) for d in unit_dirs],
        "dedup": dedup,
        "seconds": {
            "curate_units": round(curate_seconds, 2),
            "dedup": round(dedup_seconds, 2),
        },
        "units_processed": processed,
    }
    return stages.finalize(kept_documents, removals(), scores(), stats, cfg, output_path)


def _config_fingerprint(cfg: ml_collections.ConfigDict) -> str:
    content = config_lib.as_json(cfg)
    content.pop("executor", None)  # How many workers ran does not change the work.
    return json.dumps(content, sort_keys=True, default=str)


def _prepare_work_dir(work: pathlib.Path, cfg: ml_collections.ConfigDict) -> pathlib.Path:
    """Keeps finished work only if it was done for the same config."""
    fingerprint = _config_fingerprint(cfg)
    recorded = work / "config.json"
    if work.exists() and (not recorded.exists() or recorded.read_text() != fingerprint):
        shutil.rmtree(work)
    (work / "units").mkdir(parents=True, exist_ok=True)
    recorded.write_text(fingerprint)
    return work


def _is_done(directory: pathlib.Path) -> bool:
    return (directory / _DONE).exists()


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
        elif not _is_done(unit_dir):
            jobs.append([(unit, unit_dir)])
    pending_units = sum(not _is_done(d) for job in jobs for _, d in job)
    workers = int(cfg.executor.workers) or os.cpu_count() or 1
    bar = tqdm.tqdm(total=pending_units, desc="curate", unit="shard", disable=not progress)
    documents = 0
    started = time.perf_counter()

    def done(job_stats: list[dict]) -> None:
        nonlocal documents
        documents += sum(stats["read"]["documents"] for stats in job_stats)
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
    return pending_units


def _run_job(
    cfg: ml_collections.ConfigDict, job: list[tuple[stages.WorkUnit, pathlib.Path]]
) -> list[dict]:
    """Runs the unfinished units of `job` in order (a chain shares one source's document cap);
    returns the stats of the units it processed."""
    curator = stages.Curator(cfg)
    processed = []
    remaining = job[0][0].spec.max_documents
    for unit, unit_dir in job:
        if _is_done(unit_dir):
            read = json.loads((unit_dir / "stats.json").read_text())["read"]["documents"]
        else:
            stats = _process_unit(cfg, curator, unit, unit_dir, remaining)
            processed.append(stats)
            read = stats["read"]["documents"]
        if remaining >= 0:
            remaining = max(0, remaining - read)
    return processed


def _process_unit(
    cfg: ml_collections.ConfigDict,
    curator: stages.Curator,
    unit: stages.WorkUnit,
    unit_dir: pathlib.Path,
    limit: int,
) -> dict[str, Any]:
    """Reads, cleans and filters one unit into a temporary directory, then renames it."""
    temporary = unit_dir.with_name(f"{unit_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    stats = report_lib.new_unit_stats(unit.spec.name, unit.shard.index, str(unit.shard.location))
    source_report = sources.SourceReport(source=unit.spec.name)
    texts = []
    with (
        open(temporary / "docs.jsonl", "w", encoding="utf-8") as docs_file,
        open(temporary / "removed.jsonl", "w", encoding="utf-8") as removed_file,
        open(temporary / "scores.jsonl", "w", encoding="utf-8") as scores_file,
    ):
        for document in stages.read_work_unit(unit, source_report, limit):
            report_lib.count_read(stats, document)
            outcome = curator.process(document)
            report_lib.count_outcome(stats, document, outcome, cfg.output.examples_per_reason)
            if outcome.scores:
                scores_file.write(_json_line({
                    "id": document.id, "source": document.source, "kept": outcome.removal is None,
                    "reason": outcome.removal["reason"] if outcome.removal else None,
                    "scores": outcome.scores,
                }))  # fmt: skip
            if outcome.removal is not None:
                removed_file.write(_json_line(outcome.removal))
                continue
            kept = outcome.document
            texts.append(kept.text)
            docs_file.write(_json_line({
                "id": kept.id, "text": kept.text, "source": kept.source, "kind": kept.kind,
                "order_key": stages.order_key(kept),
            }))  # fmt: skip
    report_lib.add_source_report(stats, source_report)
    signatures = stages.minhash_signatures(texts, cfg)
    exact = np.array(
        [[int(k[:16], 16), int(k[16:], 16)] for k in map(_exact_key, texts)], dtype=np.uint64
    ).reshape(-1, 2)
    np.savez(
        temporary / "keys.npz",
        exact=exact,
        bands=stages.band_key_array(signatures, cfg),
        has_words=stages.has_words(signatures),
        # Kept only when collisions are verified against estimated Jaccard (the default is not).
        signatures=signatures if cfg.dedup.minhash.verify_threshold is not None else signatures[:0],
    )
    (temporary / "stats.json").write_text(json.dumps(stats))
    (temporary / _DONE).write_text("")
    shutil.rmtree(unit_dir, ignore_errors=True)
    os.replace(temporary, unit_dir)  # Atomic: a unit directory is either absent or complete.
    return stats


def _exact_key(text: str) -> str:
    return stages.exact_dedup_key(Document(id="", text=text))


def _json_line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def _read_jsonl(path: pathlib.Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            yield json.loads(line)


def _dedup(
    cfg: ml_collections.ConfigDict,
    units: list[stages.WorkUnit],
    unit_dirs: list[pathlib.Path],
    dedup_dir: pathlib.Path,
    progress: bool,
) -> dict[str, Any]:
    """Exact, then MinHash LSH dedup over all units in order (index order = order_key order).

    Writes removed_mask.npy (bool per kept-by-filter document, in unit order), removed.jsonl
    and summary.json; a finished dedup (DONE marker) is reused.
    """
    if _is_done(dedup_dir):
        return json.loads((dedup_dir / "summary.json").read_text())
    shutil.rmtree(dedup_dir, ignore_errors=True)
    dedup_dir.mkdir(parents=True)
    max_records = int(cfg.dedup.max_records_in_memory)
    ids = IdLog(dedup_dir / "ids.jsonl")
    exact_sorter = SpillSorter(_HASH_RECORD, dedup_dir / "exact_runs", max_records)
    for unit_dir in tqdm.tqdm(unit_dirs, desc="dedup: hash", unit="shard", disable=not progress):
        first = ids.count
        for record in _read_jsonl(unit_dir / "docs.jsonl"):
            ids.append(f"{record['source']}{_ID_SEPARATOR}{record['id']}")
        exact = np.load(unit_dir / "keys.npz")["exact"]
        records = np.empty(len(exact), _HASH_RECORD)
        records["hash_high"], records["hash_low"] = exact[:, 0], exact[:, 1]
        records["doc"] = np.arange(first, ids.count)
        if cfg.dedup.exact:
            exact_sorter.add(records)
    total = ids.count
    removed = np.zeros(total, dtype=bool)
    removals: list[dict] = []
    summary: dict[str, Any] = {"exact": None, "minhash": None}

    exact_union = UnionFind(total)
    exact_runs = len(exact_sorter.run_paths)
    for kept, duplicate in star_edges(exact_sorter.merged(), key_length=2):
        exact_union.union(kept, duplicate)
    exact_sorter.cleanup()
    if cfg.dedup.exact:
        result = build_result(exact_union, ids, {"spilled_runs": float(exact_runs)})
        summary["exact"] = report_lib.dedup_summary(result)
        removed |= exact_union.roots() != np.arange(total)
        removals.extend(_dedup_removals(result.duplicate_of, "exact_dedup", "exact duplicate"))

    if cfg.dedup.minhash.enabled:
        band_sorter = SpillSorter(_BUCKET_RECORD, dedup_dir / "lsh_runs", max_records)
        verify = cfg.dedup.minhash.verify_threshold
        signature_path = dedup_dir / "signatures.u32"
        first = 0
        for unit_dir in unit_dirs:
            keys = np.load(unit_dir / "keys.npz")
            if verify is not None:
                with open(signature_path, "ab") as signature_file:
                    signature_file.write(keys["signatures"].tobytes())
            count = len(keys["has_words"])
            indices = np.arange(first, first + count)
            usable = keys["has_words"] & ~removed[first : first + count]
            bands = keys["bands"][usable]
            records = np.empty(bands.size, _BUCKET_RECORD)
            records["band"] = np.tile(np.arange(bands.shape[1], dtype=np.uint32), len(bands))
            records["bucket"] = bands.reshape(-1)
            records["doc"] = np.repeat(indices[usable], bands.shape[1])
            band_sorter.add(records)
            first += count
        signatures = (
            np.memmap(signature_path, np.uint32, "r", shape=(total, cfg.dedup.minhash.num_perm))
            if verify is not None and total
            else None
        )
        minhash_union = UnionFind(total)
        runs, candidates, rejected = len(band_sorter.run_paths), 0, 0
        for kept, duplicate in star_edges(band_sorter.merged(), key_length=2):
            candidates += 1
            if (
                signatures is not None
                and minhash_union.find(kept) != minhash_union.find(duplicate)
                and np.mean(signatures[kept] == signatures[duplicate]) < verify
            ):
                rejected += 1  # LSH collided but the estimated Jaccard is below the threshold
                continue
            minhash_union.union(kept, duplicate)
        band_sorter.cleanup()
        del signatures
        result = build_result(
            minhash_union,
            ids,
            {"spilled_runs": float(runs), "candidate_edges": float(candidates),
             "rejected_edges": float(rejected)},
        )  # fmt: skip
        summary["minhash"] = report_lib.dedup_summary(result)
        summary["minhash"]["documents_in"] = int(total - removed.sum())
        removed |= minhash_union.roots() != np.arange(total)
        removals.extend(_dedup_removals(result.duplicate_of, "minhash_dedup", "near duplicate"))
    np.save(dedup_dir / "removed_mask.npy", removed)
    report_lib.write_jsonl(dedup_dir / "removed.jsonl", removals)
    report_lib.write_json(dedup_dir / "summary.json", summary)
    (dedup_dir / _DONE).write_text("")
    return summary


def _dedup_removals(duplicate_of: dict[str, str], stage: str, reason: str) -> list[dict]:
    records = []
    for removed_key, kept_key in duplicate_of.items():
        source, doc_id = removed_key.split(_ID_SEPARATOR, 1)
        kept_id = kept_key.split(_ID_SEPARATOR, 1)[1]
        records.append(
            {"id": doc_id, "source": source, "stage": stage, "reason": reason,
             "duplicate_of": kept_id}
        )  # fmt: skip
    return records
