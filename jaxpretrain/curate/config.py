"""The data (curation) config: every key the prepare pipeline reads, with defaults and checks.

    from jaxpretrain.curate import config as data_config
    cfg = data_config.default_data_config()
    cfg.sources = [data_config.source_config(name="web", type="jsonl", path="/data/web")]
    data_config.validate_data_config(cfg)

Config files under `configs/data/` start from `default_data_config()` and change what differs;
`tools/prepare_data.py --config=configs/data/<name>.py --config.KEY=VALUE` overrides keys.

Keys (defaults in brackets, sources of the defaults in the comments next to each value):
  sources: list of source ConfigDicts, each with exactly the fields of `sources.SourceSpec`
    (name, type, path, text_field, id_field, kind, weight, tfds_name, tfds_split, seqio_task,
    seqio_split, max_documents, filter_chain, metadata_fields, max_document_bytes). `name`
    names the output shards; `weight` is its mixture weight; `path` may be gs://; a document
    over `max_document_bytes` [8 MiB] is skipped unread, with a reason in the report.
  input_dir: a relative source `path` is joined to it [''] (lets a config name files by a base dir).
  mixture.mode: 'weights' (p_i ∝ weight_i^(1/T)) or 'temperature' (p_i ∝ tokens_i^(1/T), the
    multilingual "temperature sampling" over source sizes) ['weights'].
  mixture.temperature: T above; 1.0 keeps the weights (or token shares) as given [1.0].
  clean.*: the fields of `clean.CleanConfig`, plus clean.enabled [True].
  filters.chain: filter names run in order (see `filters.registered_names()`).
  filters.settings.<name>: settings overriding that filter's defaults.
  filters.code_chain: filters run on 'code' documents (prose filters would drop code) [length].
  filters.chains.<name>: named filter chains; a source's `filter_chain` picks one for all its
    documents ('' = filters.chain / filters.code_chain by kind) [fineweb, prose, code].
  filters.score_all: score every filter even after one rejected, so any threshold can be
    re-tuned from scores.jsonl [True].
  dedup.exact: exact dedup of normalised text [True].
  dedup.minhash.enabled and dedup.minhash.*: the fields of `dedup.MinHashConfig` [FineWeb's].
  dedup.max_records_in_memory: hash/bucket records held before spilling a sorted run [4M].
  tokenizer.vocab_size, tokenizer.model_type ('bpe'|'unigram'), tokenizer.seed,
  tokenizer.path: an existing SentencePiece model to reuse instead of training one [''].
  tokenizer.max_training_bytes: UTF-8 bytes of train text the tokenizer learns from, taken by a
    stable hash of document ids (the same sample for any number of workers) [64 MiB].
  split.validation_fraction: share of documents (by a stable hash of the id) in validation.
  output.shard_bytes: a new ArrayRecord shard of a source and split is started once the
    current one holds this many bytes of tokens (4 per token) [256 MiB].
  output.sort_buffer_bytes: removed.jsonl lines sorted in memory before a run spills [64 MiB].
  output.examples_per_reason: removed documents quoted in report.json per removal reason.
  executor.name: 'local' (multiprocess, resumable) or 'beam' (see docs/scale_out.md).
  executor.workers: worker processes of the local executor; 0 = all cores, 1 = in process.
  executor.work_dir: the local executor's resumable work (units, dedup) ['' = OUTPUT/.work,
    or a folder under the system's temporary directory when the output is a gs:// URL].
  executor.keep_work: keep the work files after a successful run [False: deleted]. Local
    executor: ~3x the input on disk, and a rerun then redoes only changed inputs (without it a
    rerun starts over). Beam: the workers' per-document outputs under beam_work_dir.
  executor.beam_options: Beam pipeline flags as one string, e.g. '--runner=DataflowRunner
    --project=P --region=R --temp_location=gs://B/tmp' [DirectRunner].
  executor.beam_work_dir: where Beam workers write intermediate files [OUTPUT/.work/beam].
  executor.components_max_rounds: large-star/small-star rounds before the Beam dedup gives up.
"""

from __future__ import annotations

import dataclasses
import difflib
import os

import ml_collections

from jaxpretrain.curate import sources
from jaxpretrain.curate.clean import CleanConfig
from jaxpretrain.curate.dedup.minhash import MinHashConfig

MIXTURE_MODES = ("weights", "temperature")
EXECUTORS = ("local", "beam")

# What FineWeb ran on web text (datatrove examples/fineweb.py, in its order: language, Gopher
# repetition and quality, C4 with lines without end marks kept, FineWeb's own rules), after a
# cheap length floor so empty leftovers never reach langid.
FINEWEB_FILTER_CHAIN = (
    "length",
    "language",
    "gopher_repetition",
    "gopher_quality",
    "c4",
    "fineweb",
)
# Edited prose (books, wikipedia, papers): Gopher's rules only; C4's curly-bracket and FineWeb's
# line rules would drop LaTeX, tables and verse that are fine there.
PROSE_FILTER_CHAIN = ("length", "gopher_repetition", "gopher_quality")
# Source code: line-length and alphanumeric rules of Codex / The Stack / StarCoder.
CODE_FILTER_CHAIN = ("length", "code_quality")
DEFAULT_FILTER_CHAIN = FINEWEB_FILTER_CHAIN
# Code has no sentences, stop words or end marks: only the length floor applies.
DEFAULT_CODE_FILTER_CHAIN = ("length",)

# A source ConfigDict has exactly the fields of `sources.SourceSpec`, with these defaults.
_SOURCE_FIELDS = {
    "name": "",
    "type": "jsonl",
    **{
        field.name: field.default
        for field in dataclasses.fields(sources.SourceSpec)
        if field.default is not dataclasses.MISSING
    },
}


def source_config(**fields) -> ml_collections.ConfigDict:
    """A source ConfigDict with every `SourceSpec` field; `fields` override the defaults."""
    unknown = sorted(set(fields) - set(_SOURCE_FIELDS))
    if unknown:
        raise ValueError(
            f"Unknown source fields {unknown}; valid fields are {list(_SOURCE_FIELDS)}."
        )
    return ml_collections.ConfigDict({**_SOURCE_FIELDS, **fields})


def source_fields() -> tuple[str, ...]:
    """Names of the fields a source ConfigDict has (those of `sources.SourceSpec`)."""
    return tuple(_SOURCE_FIELDS)


def default_data_config() -> ml_collections.ConfigDict:
    """All data-config keys with their defaults (see the module docstring for each key)."""
    c = ml_collections.ConfigDict()
    c.sources = [source_config(name="stdlib", type="stdlib")]
    c.input_dir = ""
    c.seed = 0  # seeds the tokenizer's training sample

    c.mixture = ml_collections.ConfigDict({"mode": "weights", "temperature": 1.0})

    c.clean = ml_collections.ConfigDict(dataclasses.asdict(CleanConfig()))
    c.clean.special_strings = tuple(c.clean.special_strings)
    c.clean.enabled = True

    c.filters = ml_collections.ConfigDict()
    c.filters.chain = DEFAULT_FILTER_CHAIN
    c.filters.code_chain = DEFAULT_CODE_FILTER_CHAIN
    c.filters.chains = ml_collections.ConfigDict(
        {"fineweb": FINEWEB_FILTER_CHAIN, "prose": PROSE_FILTER_CHAIN, "code": CODE_FILTER_CHAIN}
    )
    # Length floor: FineWeb/Gopher drop pages under 50 words later; this only removes leftovers
    # that cleaning emptied, so that every later filter sees text.
    c.filters.settings = ml_collections.ConfigDict({"length": {"min_chars": 1}})
    c.filters.score_all = True

    c.dedup = ml_collections.ConfigDict()
    c.dedup.exact = True
    c.dedup.minhash = ml_collections.ConfigDict(dataclasses.asdict(MinHashConfig()))
    c.dedup.minhash.enabled = True
    c.dedup.max_records_in_memory = 1 << 22  # ~100 MB of 24-byte records

    c.tokenizer = ml_collections.ConfigDict(
        {
            "vocab_size": 4096,
            "model_type": "bpe",
            "path": "",
            "seed": 0,
            "max_training_bytes": 1 << 26,
        }
    )
    c.split = ml_collections.ConfigDict({"validation_fraction": 0.05})
    c.output = ml_collections.ConfigDict(
        {"shard_bytes": 1 << 28, "sort_buffer_bytes": 1 << 26, "examples_per_reason": 3}
    )
    c.executor = ml_collections.ConfigDict(
        {
            "name": "local",
            "workers": 0,
            "beam_options": "",
            "beam_work_dir": "",
            "work_dir": "",
            "keep_work": False,
            "components_max_rounds": 24,
        }
    )
    return c


def _fail(key: str, value, what: str) -> None:
    raise ValueError(f"Data config key {key}={value!r} {what}.")


def validate_data_config(cfg: ml_collections.ConfigDict) -> None:
    """Raises a one-sentence ValueError naming the first invalid key; returns None when valid.

    Checks shapes and ranges only; source paths are checked by `stages.check_sources` (they
    may be on another machine for the Beam executor).
    """
    from jaxpretrain.curate import filters as filters_lib

    _check_known_keys(cfg, default_data_config())
    if not cfg.sources:
        _fail("sources", list(cfg.sources), "is empty; add at least one source")
    names = []
    for index, source in enumerate(cfg.sources):
        key = f"sources[{index}]"
        fields = set(source.keys()) if hasattr(source, "keys") else set()
        if fields != set(_SOURCE_FIELDS):
            _fail(key, sorted(fields), f"must have exactly the fields {list(_SOURCE_FIELDS)}")
        try:
            sources.SourceSpec(**source.to_dict())
        except (TypeError, ValueError) as error:
            raise ValueError(f"Data config key {key}: {error}") from None
        names.append(source.name)
    if not sum(float(source.weight) for source in cfg.sources) > 0:
        _fail("sources[*].weight", [s.weight for s in cfg.sources], "are all 0; give one a weight")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        _fail("sources[*].name", duplicates, "are used by more than one source; names must differ")
    if cfg.mixture.mode not in MIXTURE_MODES:
        _fail("mixture.mode", cfg.mixture.mode, f"is not one of {MIXTURE_MODES}")
    if not float(cfg.mixture.temperature) > 0:
        _fail("mixture.temperature", cfg.mixture.temperature, "must be positive")
    known_filters = filters_lib.registered_names()
    chains = {"chain": cfg.filters.chain, "code_chain": cfg.filters.code_chain}
    chains.update({f"chains.{name}": chain for name, chain in cfg.filters.chains.items()})
    for key, chain in chains.items():
        for name in chain:
            if name not in known_filters:
                _fail(f"filters.{key}", name, f"is not a registered filter {known_filters}")
    for index, source in enumerate(cfg.sources):
        if source.filter_chain and source.filter_chain not in cfg.filters.chains:
            _fail(
                f"sources[{index}].filter_chain",
                source.filter_chain,
                f"is not a chain of filters.chains {sorted(cfg.filters.chains)}; add it there",
            )
    for name in cfg.filters.settings:
        if name not in known_filters:
            _fail(f"filters.settings.{name}", name, f"is not a registered filter {known_filters}")
    if not 0.0 <= cfg.split.validation_fraction < 1.0:
        _fail("split.validation_fraction", cfg.split.validation_fraction, "is outside [0, 1)")
    for key in ("shard_bytes", "sort_buffer_bytes"):
        if cfg.output[key] < 1:
            _fail(f"output.{key}", cfg.output[key], "must be at least 1")
    from jaxpretrain.tokenizer import MIN_VOCAB_SIZE

    if not cfg.tokenizer.path and cfg.tokenizer.vocab_size < MIN_VOCAB_SIZE:
        _fail("tokenizer.vocab_size", cfg.tokenizer.vocab_size, f"is below {MIN_VOCAB_SIZE}")
    if cfg.tokenizer.path and not os.path.isfile(os.path.expanduser(cfg.tokenizer.path)):
        _fail("tokenizer.path", cfg.tokenizer.path, "is not a file; give a SentencePiece model")
    if cfg.tokenizer.max_training_bytes < 1:
        _fail("tokenizer.max_training_bytes", cfg.tokenizer.max_training_bytes, "must be >= 1")
    if cfg.tokenizer.model_type not in ("bpe", "unigram"):
        _fail("tokenizer.model_type", cfg.tokenizer.model_type, "is not 'bpe' or 'unigram'")
    if cfg.dedup.max_records_in_memory < 1:
        _fail("dedup.max_records_in_memory", cfg.dedup.max_records_in_memory, "must be >= 1")
    if cfg.executor.name not in EXECUTORS:
        _fail("executor.name", cfg.executor.name, f"is not one of {EXECUTORS}")
    if cfg.executor.workers < 0:
        _fail("executor.workers", cfg.executor.workers, "must be >= 0 (0 = all cores)")
    # Building the typed configs runs their own checks; re-raise naming the config section.
    for section, build in (("clean", clean_config), ("dedup.minhash", minhash_config)):
        try:
            build(cfg)
        except (TypeError, ValueError) as error:
            raise ValueError(f"Data config section {section} is invalid: {error}") from error
    for name in cfg.filters.settings:
        try:
            filters_lib.get(name, **_plain(cfg.filters.settings[name]))
        except (TypeError, ValueError) as error:
            raise ValueError(f"Data config filters.settings.{name} is invalid: {error}") from error


# Sections whose keys are names chosen by the user (filter names, chain names), checked elsewhere.
_OPEN_SECTIONS = ("filters.settings", "filters.chains")


def _check_known_keys(
    cfg: ml_collections.ConfigDict, reference: ml_collections.ConfigDict, prefix: str = ""
) -> None:
    """Raises for a key the defaults do not have (a typo in a config file would otherwise be
    ignored silently), naming the nearest valid key."""
    for key in cfg:
        dotted = f"{prefix}{key}"
        if key not in reference:
            valid = list(reference.keys())
            nearest = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            hint = (
                f"did you mean {prefix + nearest[0]!r}?"
                if nearest
                else f"valid keys of {prefix.rstrip('.') or 'the data config'} are {valid}"
            )
            raise ValueError(f"Data config key {dotted!r} is not a known key; {hint}")
        value, default = cfg[key], reference[key]
        if (
            isinstance(value, ml_collections.ConfigDict)
            and isinstance(default, ml_collections.ConfigDict)
            and dotted not in _OPEN_SECTIONS
        ):
            _check_known_keys(value, default, f"{dotted}.")


def _plain(value):
    """ConfigDicts and lists as plain dicts and tuples (filters and dataclasses want those)."""
    if isinstance(value, ml_collections.ConfigDict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return tuple(_plain(item) for item in value)
    return value


def as_json(value):
    """`value` (a ConfigDict, possibly holding lists of ConfigDicts) as plain JSON types."""
    if isinstance(value, ml_collections.ConfigDict | dict):
        return {str(key): as_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [as_json(item) for item in value]
    return value


def clean_config(cfg: ml_collections.ConfigDict) -> CleanConfig:
    """The `CleanConfig` described by `cfg.clean` (without the `enabled` switch)."""
    fields = {key: _plain(value) for key, value in cfg.clean.items() if key != "enabled"}
    return CleanConfig(**fields)


def minhash_config(cfg: ml_collections.ConfigDict) -> MinHashConfig:
    """The `MinHashConfig` described by `cfg.dedup.minhash` (without `enabled`)."""
    fields = {key: value for key, value in cfg.dedup.minhash.items() if key != "enabled"}
    return MinHashConfig(**fields)


def filter_settings(cfg: ml_collections.ConfigDict, name: str) -> dict:
    """Settings of filter `name` from `cfg.filters.settings` (empty when it keeps defaults)."""
    return _plain(cfg.filters.settings[name]) if name in cfg.filters.settings else {}
