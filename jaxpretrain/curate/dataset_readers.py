"""Readers for registered datasets: TensorFlow Datasets (TFDS) and seqio Tasks.

Both need TensorFlow, so they live in extras (`pip install 'jaxpretrain[tfds]'`,
`'jaxpretrain[seqio]'`) and are imported only when such a source is used. Examples are read in
their stored order (no shuffling), so shards and ids are deterministic. Text features arrive as
bytes and are decoded as UTF-8; failures are recorded in the report, never raised.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from jaxpretrain.curate.document import Document
from jaxpretrain.curate.file_readers import record_document

if TYPE_CHECKING:
    from jaxpretrain.curate.sources import InputShard, SourceReport, SourceSpec


def import_optional(module: str, extra: str, source_name: str) -> Any:
    """Imports `module`, or raises an ImportError saying which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"Source {source_name!r} needs the {module!r} package, which is not importable "
            f"({error}); install it with: pip install 'jaxpretrain[{extra}]'."
        ) from error


# ---------------------------------------------------------------------------------------- TFDS


def tfds_builder(spec: SourceSpec) -> Any:
    """The TFDS builder of `spec.tfds_name`; `spec.path`, when set, is the TFDS data_dir."""
    tfds = import_optional("tensorflow_datasets", "tfds", spec.name)
    try:
        return tfds.builder(spec.tfds_name, data_dir=spec.path or None)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise FileNotFoundError(
            f"Source {spec.name!r}: TFDS has no dataset named tfds_name={spec.tfds_name!r} "
            f"({str(error).splitlines()[0]}); check the name with tfds.list_builders()."
        ) from error


def tfds_split_ranges(spec: SourceSpec) -> list[str]:
    """One TFDS split string per stored file shard (`train[0:1024]`, `train[1024:2048]`, ...).

    Falls back to the whole split as one range when the dataset's shard lengths are unknown
    (e.g. under `tfds.testing.mock_data`, or a split string that already slices).
    """
    builder = tfds_builder(spec)
    split_info = builder.info.splits.get(spec.tfds_split) if builder.info.splits else None
    shard_lengths = list(getattr(split_info, "shard_lengths", None) or [])
    if len(shard_lengths) <= 1:
        return [spec.tfds_split]
    ranges, start = [], 0
    for length in shard_lengths:
        ranges.append(f"{spec.tfds_split}[{start}:{start + length}]")
        start += length
    return ranges


def iter_tfds_shard(
    spec: SourceSpec, shard: InputShard, report: SourceReport
) -> Iterator[Document]:
    """Documents of one TFDS split range: `spec.text_field` of each example.

    Ids: `spec.id_field` when the example has it, else `<source>:<split range>:<index>` with a
    1-based index inside the range; `spec.metadata_fields` (e.g. C4's `url`) go into metadata.
    Report entries use the range as file and the index as line.
    """
    tfds = import_optional("tensorflow_datasets", "tfds", spec.name)
    builder = tfds_builder(spec)
    dataset = builder.as_dataset(split=shard.location, shuffle_files=False)
    where = f"tfds:{spec.tfds_name}/{shard.location}"
    id_prefix = f"{spec.name}:{shard.location}"
    for index, example in enumerate(tfds.as_numpy(dataset), start=1):
        if not isinstance(example, dict):
            report.skip(where, index, "TFDS example is not a dict of features")
            continue
        yield from record_document(spec, example, (where, index), id_prefix, report)


# --------------------------------------------------------------------------------------- seqio


def seqio_task(spec: SourceSpec) -> Any:
    """The registered seqio Task `spec.seqio_task` (mixtures are not sources: list their tasks)."""
    seqio = import_optional("seqio", "seqio", spec.name)
    if spec.seqio_task not in seqio.TaskRegistry.names():
        hint = (
            " it is a Mixture; use one source per task,"
            if (spec.seqio_task in seqio.MixtureRegistry.names())
            else ""
        )
        raise KeyError(
            f"Source {spec.name!r}: seqio_task={spec.seqio_task!r} is not a registered seqio "
            f"Task;{hint} import the module that registers it before curating."
        )
    return seqio.get_mixture_or_task(spec.seqio_task)


def seqio_shard_locations(spec: SourceSpec) -> list[str]:
    """`<split>:<i>/<n>`, one per file shard of the task's data source (1 if not file-based)."""
    task = seqio_task(spec)
    if spec.seqio_split not in task.source.splits:
        raise KeyError(
            f"Source {spec.name!r}: seqio task {spec.seqio_task!r} has no split "
            f"seqio_split={spec.seqio_split!r}; its splits are {sorted(task.source.splits)}."
        )
    num_shards = max(1, len(task.source.list_shards(spec.seqio_split)))
    return [f"{spec.seqio_split}:{index}/{num_shards}" for index in range(num_shards)]


def iter_seqio_shard(
    spec: SourceSpec, shard: InputShard, report: SourceReport
) -> Iterator[Document]:
    """Documents of one shard of a seqio Task's raw data source: `spec.text_field` of each
    example, before the task's preprocessors (which usually tokenize; curation tokenizes later).

    Ids: `spec.id_field` when present, else `<source>:<split>:<i>/<n>:<index>` (1-based index).
    """
    seqio = import_optional("seqio", "seqio", spec.name)
    split, _, shard_part = shard.location.rpartition(":")
    index, num_shards = (int(part) for part in shard_part.split("/"))
    dataset = seqio_task(spec).source.get_dataset(
        split=split, shuffle=False, shard_info=seqio.ShardInfo(index, num_shards)
    )
    where = f"seqio:{spec.seqio_task}/{shard.location}"
    id_prefix = f"{spec.name}:{shard.location}"
    for position, example in enumerate(dataset.as_numpy_iterator(), start=1):
        if not isinstance(example, dict):
            report.skip(where, position, "seqio example is not a dict of features")
            continue
        yield from record_document(spec, example, (where, position), id_prefix, report)
