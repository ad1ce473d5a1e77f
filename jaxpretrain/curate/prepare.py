"""Prepare a data directory from a data config (the whole curation pipeline), or from one source.

    from jaxpretrain.curate import config as data_config, prepare
    cfg = data_config.default_data_config()          # or a configs/data/*.py file
    manifest_path = prepare.prepare_from_config(cfg, "/data/prepared")

    manifest_path = prepare.prepare("/tmp/data/stdlib", source="stdlib", vocab_size=4096)

Stages (see `stages.py`): read ─► clean ─► quality filters ─► exact dedup ─► MinHash LSH dedup
─► split ─► tokenizer ─► ArrayRecord shards per source and split ─► report ─► manifest (last).
The format written is defined in `jaxpretrain/data/manifest.py`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import ml_collections

from jaxpretrain.curate import config as config_lib
from jaxpretrain.curate import executors, sources


def prepare_from_config(
    cfg: ml_collections.ConfigDict, output_dir: str | os.PathLike, progress: bool = True
) -> str:
    """Runs the pipeline described by the data config `cfg` into `output_dir`.

    Validates `cfg` and checks that every source can be read before any work starts (one clear
    error otherwise). The executor is `cfg.executor.name` ('local' by default: resumable, a
    rerun skips finished input shards). `progress` shows progress bars on stderr.

    Returns:
      The path of `manifest.json`, written only once every other file is complete.
    """
    config_lib.validate_data_config(cfg)
    return executors.run(cfg, output_dir, progress=progress)


def config_for_source(
    source: str = sources.STDLIB_SOURCE,
    *,
    vocab_size: int = 4096,
    validation_fraction: float = 0.05,
    seed: int = 0,
    max_documents: int = -1,
    shard_bytes: int | None = None,
    tokenizer_model_type: str = "bpe",
    num_threads: int | None = None,
) -> ml_collections.ConfigDict:
    """The data config `prepare` runs: one source, cleaning and exact dedup only.

    Quality filters and near-duplicate removal are off: they are tuned for web prose and would
    drop most of the embedded stdlib corpus (code, short docstrings). Use a data config file for
    a curated mixture.

    Args:
      source: 'stdlib' (embedded corpus), a directory or a file (see `curate/sources.py`).
      vocab_size: tokenizer vocabulary including the 364 reserved ids.
      validation_fraction: expected fraction of documents in the validation split, in [0, 1).
      seed: seeds the tokenizer's training sample (the split does not depend on it).
      max_documents: read at most this many documents (in source order); -1 reads all.
      shard_bytes: a new ArrayRecord shard is started once one holds this many bytes of
        tokens (None: the data config's default, `output.shard_bytes`).
      tokenizer_model_type: 'bpe' or 'unigram'.
      num_threads: worker processes and tokenizer threads (default: all cores).
    """
    cfg = config_lib.default_data_config()
    spec = config_lib.source_config(
        **dataclasses.asdict(sources.spec_for(source, max_documents=max_documents))
    )
    cfg.sources = [spec]
    cfg.filters.chain = ()
    cfg.filters.code_chain = ()
    cfg.dedup.minhash.enabled = False
    cfg.tokenizer.vocab_size = vocab_size
    cfg.tokenizer.model_type = tokenizer_model_type
    cfg.tokenizer.seed = seed
    cfg.split.validation_fraction = validation_fraction
    if shard_bytes is not None:
        cfg.output.shard_bytes = shard_bytes
    cfg.executor.workers = num_threads or 0
    return cfg


def prepare(
    output_dir: str | os.PathLike,
    source: str = sources.STDLIB_SOURCE,
    *,
    progress: bool = True,
    **options: Any,
) -> str:
    """Prepares `output_dir` from one `source` and returns the path of its `manifest.json`.

    `options` are those of `config_for_source` (vocab_size, validation_fraction, seed, ...).
    A previous manifest and shards in `output_dir` are replaced; `progress` shows progress bars
    on stderr.
    """
    return prepare_from_config(config_for_source(source, **options), output_dir, progress=progress)


def ensure_prepared_data(config: ml_collections.ConfigDict, workdir: str) -> str:
    """The prepared data of a training config, curated first if it has no finished manifest.

    With `data.curation` set, the data config file it names drives curation; otherwise the one
    source `data.source` is cleaned, exact-deduplicated and tokenized. Returns the directory
    (`data.dir`, or WORKDIR/data; a gs:// URL is written through, its work on local disk).
    """
    from absl import logging

    from jaxpretrain import config as run_config
    from jaxpretrain.data import manifest as manifest_lib

    data_dir = run_config.data_dir(config, workdir)
    if manifest_lib.is_prepared(data_dir):
        return data_dir
    if config.data.curation:
        logging.info("no prepared data in %s: curating with %s", data_dir, config.data.curation)
        curation = run_config.load_config_file(config.data.curation, key="data.curation")
        prepare_from_config(curation, data_dir)
    else:
        logging.info("no prepared data in %s: preparing from %r", data_dir, config.data.source)
        prepare(
            data_dir,
            source=config.data.source,
            vocab_size=config.data.vocab_size,
            validation_fraction=config.data.validation_fraction,
            seed=config.train.seed,
            max_documents=config.data.max_documents,
            shard_bytes=config.data.shard_bytes,
        )
    return data_dir
