"""finalize: partitions written in parallel into byte-sized shards, the same output for any number
of workers, a bounded tokenizer sample, and removals sorted out of core in bounded memory."""

import json
import random
import tracemalloc

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordReader
from etils import epath

from jaxpretrain import tokenizer as tokenizer_lib
from jaxpretrain.curate import config as data_config
from jaxpretrain.curate import finalize as finalize_lib
from jaxpretrain.curate import report as report_lib
from jaxpretrain.curate import stages, tokenizer_sample
from jaxpretrain.curate.document import Document
from jaxpretrain.data import manifest as manifest_lib

_SYLLABLES = ("ka", "lo", "mi", "ren", "tas", "vel", "dor", "pin", "sul", "gar", "bet", "nox")
_WORDS = [a + b + c for a in _SYLLABLES for b in _SYLLABLES for c in ("", "e", "an")]
_SOURCES = ("web", "code")


def _text(seed: int, sentences: int) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(
        f"The {' '.join(rng.choice(_WORDS, size=5))} of the {rng.choice(_WORDS)}."
        for _ in range(sentences)
    )


def _document(source_rank: int, shard: int, position: int) -> Document:
    seed = source_rank * 100_000 + shard * 1_000 + position
    return Document(
        id=f"{_SOURCES[source_rank]}-{shard}-{position}",
        text=_text(seed, sentences=1 + seed % 7),
        source=_SOURCES[source_rank],
        metadata={stages.ORDER_KEY: f"{source_rank:04d}:{shard:08d}:{position:012d}"},
    )


def _partitions(documents_per_partition: int = 40) -> list[finalize_lib.InMemoryPartition]:
    """Three partitions in order: web shard 0, web shard 1, code shard 0."""
    return [
        finalize_lib.InMemoryPartition(
            tuple(_document(rank, shard, i) for i in range(documents_per_partition))
        )
        for rank, shard in ((0, 0), (0, 1), (1, 0))
    ]


def _config(workers: int = 1, **output):
    cfg = data_config.default_data_config()
    cfg.sources = [data_config.source_config(name=name, type="jsonl") for name in _SOURCES]
    cfg.tokenizer.vocab_size = 450
    cfg.split.validation_fraction = 0.25
    cfg.output.shard_bytes = 256
    cfg.executor.workers = workers
    cfg.output.update(output)
    return cfg


def _stats():
    return {"units": [report_lib.new_unit_stats(name, 0, name) for name in _SOURCES]}


def _finalize(partitions, output, cfg, removals=()):
    finalize_lib.finalize(partitions, removals, [], _stats(), cfg, output)
    return manifest_lib.read_manifest(output)


def _records(path) -> list[np.ndarray]:
    reader = ArrayRecordReader(str(path))
    try:
        return [
            np.frombuffer(record, dtype=manifest_lib.TOKEN_DTYPE) for record in reader.read_all()
        ]
    finally:
        reader.close()


def _token_streams(manifest) -> dict[tuple[str, str], list[list[int]]]:
    """{(source, split): every document's token ids, in manifest shard order}."""
    streams = {}
    for split in finalize_lib.SPLITS:
        for shard in manifest.split(split).shards:
            records = _records(manifest.data_dir + "/" + shard.file)
            streams.setdefault((shard.source, split), []).extend(r.tolist() for r in records)
    return streams


@pytest.fixture(scope="module")
def one_and_two_workers(tmp_path_factory):
    partitions = _partitions()
    one = _finalize(partitions, tmp_path_factory.mktemp("one"), _config(workers=1))
    two = _finalize(partitions, tmp_path_factory.mktemp("two"), _config(workers=2))
    return partitions, one, two


def test_output_does_not_depend_on_the_number_of_workers(one_and_two_workers):
    _, one, two = one_and_two_workers
    one_model = (one.data_dir + "/" + one.tokenizer_file, two.data_dir + "/" + two.tokenizer_file)
    with open(one_model[0], "rb") as a, open(one_model[1], "rb") as b:
        assert a.read() == b.read()
    assert one.splits == two.splits
    assert _token_streams(one) == _token_streams(two)


def test_every_source_and_split_holds_its_documents_in_order(one_and_two_workers):
    partitions, _, two = one_and_two_workers
    tokenizer = tokenizer_lib.Tokenizer.load(two.data_dir + "/" + two.tokenizer_file)
    cfg = _config()
    expected: dict[tuple[str, str], list[list[int]]] = {}
    for partition in partitions:
        for document in partition():
            key = (document.source, stages.assign_split(document, cfg))
            expected.setdefault(key, []).append(tokenizer.encode(document.text))
    assert set(expected) == {(s, split) for s in _SOURCES for split in finalize_lib.SPLITS}
    assert _token_streams(two) == expected


def test_each_partition_writes_its_own_shards_cut_by_bytes(one_and_two_workers):
    _, _, two = one_and_two_workers
    shard_bytes = _config().output.shard_bytes
    files = [shard.file for split in finalize_lib.SPLITS for shard in two.split(split).shards]
    assert "web/train-p00000-00000.array_record" in files
    assert "web/train-p00001-00000.array_record" in files
    assert "code/validation-p00002-00000.array_record" in files
    sequences: dict[str, list] = {}
    for name in sorted(files):
        sequences.setdefault(name.rsplit("-", 1)[0], []).append(name)
    assert max(len(names) for names in sequences.values()) > 2
    for names in sequences.values():
        for name in names[:-1]:  # every shard but a sequence's last one is full
            lengths = [len(record) * 4 for record in _records(two.data_dir + "/" + name)]
            assert sum(lengths) >= shard_bytes > sum(lengths[:-1])


def test_a_plain_list_of_documents_in_any_order_gives_the_same_output(
    one_and_two_workers, tmp_path
):
    partitions, one, _ = one_and_two_workers
    documents = [document for partition in partitions for document in partition()]
    random.Random(0).shuffle(documents)
    listed = _finalize(documents, tmp_path, _config())
    assert _token_streams(listed) == _token_streams(one)


def test_write_partition_runs_on_its_own_like_a_beam_worker(one_and_two_workers, tmp_path):
    partitions, one, _ = one_and_two_workers
    cfg = _config()
    result = finalize_lib.write_partition(
        partitions[2](), one.data_dir + "/" + one.tokenizer_file, str(tmp_path), 7, cfg
    )
    assert {shard.file.split("-")[1] for split in result.shards.values() for shard in split} == {
        "p00007"
    }
    counts = result.counts()
    assert set(counts) == {("code", "train"), ("code", "validation")}
    assert sum(count["documents"] for count in counts.values()) == len(partitions[2]())
    assert result.kept_characters == {"code": sum(len(d.text) for d in partitions[2]())}


def test_tokenizer_learns_from_a_bounded_sample(tmp_path, monkeypatch):
    partitions = _partitions(documents_per_partition=60)
    cfg = _config(workers=1)
    cfg.tokenizer.max_training_bytes = 8_000
    train_bytes = sum(
        len(d.text.encode())
        for partition in partitions
        for d in partition()
        if stages.assign_split(d, cfg) == "train"
    )
    assert train_bytes > 3 * cfg.tokenizer.max_training_bytes
    given = []
    real_train = tokenizer_lib.train_tokenizer

    def recording_train(texts, *args, **kwargs):
        given.extend(texts)
        return real_train(given, *args, **kwargs)

    monkeypatch.setattr(finalize_lib.tokenizer_lib, "train_tokenizer", recording_train)
    _finalize([d for partition in partitions for d in partition()], tmp_path, cfg)
    sampled_bytes = sum(len(text.encode()) for text in given)
    assert cfg.tokenizer.max_training_bytes - 1_000 < sampled_bytes <= 8_000
    validation = {
        d.text for p in partitions for d in p() if stages.assign_split(d, cfg) == "validation"
    }
    assert not validation & set(given)


def test_tokenizer_sample_does_not_depend_on_partitioning():
    partitions = _partitions(documents_per_partition=60)
    cfg = _config()
    cfg.tokenizer.max_training_bytes = 8_000
    everything = finalize_lib.InMemoryPartition(tuple(d for p in partitions for d in p()))
    split_three_ways = tokenizer_sample.tokenizer_training_sample(partitions, cfg)
    assert split_three_ways == tokenizer_sample.tokenizer_training_sample([everything], cfg)
    reversed_order = finalize_lib.InMemoryPartition(everything.documents[::-1])
    assert split_three_ways == tokenizer_sample.tokenizer_training_sample([reversed_order], cfg)


def test_tokenizer_sample_is_the_rank_prefix_for_any_split_of_the_documents():
    """Every cut of the documents into partitions (uneven ones included: a partition that drops
    a document lowers the bar for the others) gives the brute-force prefix by rank."""
    cfg = _config()
    cfg.tokenizer.max_training_bytes = 8_000
    documents = [d for p in _partitions(documents_per_partition=60) for d in p()]
    train = [d for d in documents if stages.assign_split(d, cfg) == stages.TRAIN_SPLIT]
    reference, total = [], 0
    for doc in sorted(train, key=lambda d: tokenizer_sample.sample_rank(d, cfg.tokenizer.seed)):
        total += len(doc.text.encode("utf-8"))
        if total > cfg.tokenizer.max_training_bytes:
            break
        reference.append(doc.text)
    assert 0 < len(reference) < len(train) / 2
    rng = random.Random(0)
    one_small_piece = [[k] for k in range(1, 12)] + [[len(documents) - k] for k in range(1, 12)]
    several = [sorted(rng.sample(range(1, len(documents)), rng.randint(2, 6))) for _ in range(40)]
    for cuts in one_small_piece + several:
        pieces = [documents[a:b] for a, b in zip([0, *cuts], [*cuts, len(documents)], strict=True)]
        partitions = [finalize_lib.InMemoryPartition(tuple(piece)) for piece in pieces]
        assert tokenizer_sample.tokenizer_training_sample(partitions, cfg) == reference, cuts


def test_merging_a_sample_that_dropped_a_document_drops_what_ranks_after_it():
    """Partition B had to drop rank 10 for room, so the corpus's sample ends before rank 10:
    A's rank-100 document must go, and must not reopen room for C's rank 50 afterwards."""
    budget = 95

    def sample(ranks: list[int], size: int) -> tokenizer_sample.TrainingSample:
        part = tokenizer_sample.TrainingSample(budget)
        for rank in ranks:
            part.offer((rank, ""), f"{rank:0{size}d}")
        return part

    merged = tokenizer_sample.TrainingSample(budget)
    for part in (sample([100], 10), sample(list(range(1, 11)), 10), sample([50], 5)):
        merged.merge(part)
    assert merged.texts() == [f"{rank:010d}" for rank in range(1, 10)]


def _removal(index: int) -> dict[str, str]:
    rng = random.Random(index)
    stage = rng.choice(stages.STAGES)
    record = {
        "id": f"doc-{rng.randrange(10**9):09d}-{index}",
        "source": rng.choice(_SOURCES),
        "stage": stage,
        "reason": f"rule:{index % 3}" if stage == "filter" else "dup",
    }
    if stage.endswith("dedup"):
        record["duplicate_of"] = f"kept-{index}"
    return record


def test_removals_are_sorted_out_of_core_with_bounded_memory(tmp_path):
    count = 60_000
    cfg = _config(sort_buffer_bytes=1 << 16)
    tracemalloc.start()
    try:
        documents = [d for partition in _partitions(10) for d in partition()]
        _finalize(documents, tmp_path, cfg, removals=(_removal(i) for i in range(count)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Holding every removal (as a list to sort) takes ~30 MB here.
    assert peak < 8 * 2**20
    written = [json.loads(line) for line in (tmp_path / "removed.jsonl").read_text().splitlines()]
    expected = sorted((_removal(i) for i in range(count)), key=report_lib.removal_sort_key)
    assert written == expected
    report = json.loads((tmp_path / "report.json").read_text())
    filter_reasons = {}
    for record in expected:
        if record["stage"] == "filter":
            filter_reasons[record["reason"]] = filter_reasons.get(record["reason"], 0) + 1
    assert report["filters"]["removed_by_reason"] == filter_reasons
    assert report["examples"]["duplicates"] == [r for r in expected if "duplicate_of" in r][:3]


def test_external_sort_matches_sorted(tmp_path):
    records = [{"k": random.Random(i).randrange(50), "i": i} for i in range(2_000)]
    key = lambda record: (record["k"], record["i"])  # noqa: E731
    merged = list(report_lib.external_sort(iter(records), key, tmp_path, buffer_bytes=500))
    assert merged == sorted(records, key=key)
    # It spilled more runs than it merges at once, and merged them in passes.
    assert list(tmp_path.glob("pass1_run_*"))


def test_no_surviving_document_is_a_clear_error(tmp_path):
    empty = [finalize_lib.InMemoryPartition(()), finalize_lib.InMemoryPartition(())]
    with pytest.raises(ValueError, match="No document survived curation"):
        finalize_lib.finalize(empty, [], [], _stats(), _config(), tmp_path)


@pytest.fixture
def gcs():
    """A local GCS emulator; this process and the workers it spawns talk to it."""
    import gcs_emulator  # pytest puts tests/ on sys.path

    with gcs_emulator.serving("bucket"):
        yield


# ~40 s: manifest.write_manifest renames a temporary object, which the emulator answers slowly.
@pytest.mark.slow
def test_a_bucket_output_gets_the_same_files_with_the_manifest_last(gcs, one_and_two_workers):
    partitions, one, _ = one_and_two_workers
    # Larger shards than the local runs': each upload to the emulator takes a while.
    remote = _finalize(partitions, "gs://bucket/prepared", _config(workers=2, shard_bytes=4096))
    assert remote.data_dir == "gs://bucket/prepared"
    assert manifest_lib.is_prepared("gs://bucket/prepared")
    assert _token_streams(remote) == _token_streams(one)
    report = json.loads(epath.Path("gs://bucket/prepared/report.json").read_text())
    assert report["sources"]["web"]["stages"]["tokenize"]["documents_out"] == 80


def test_external_sort_merges_thousands_of_runs_within_a_low_open_file_limit(tmp_path):
    """A terabyte corpus's removals make thousands of runs; merging them all at once would pass
    the open-file limit (here lowered to 128) after all curation is done."""
    import resource

    records = [_removal(i) for i in range(3_000)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
    try:
        ordered = list(
            report_lib.external_sort(records, report_lib.removal_sort_key, tmp_path, 200)
        )
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert ordered == sorted(
        records, key=lambda r: (report_lib.removal_sort_key(r), json.dumps(r, sort_keys=True))
    )
    assert not list(tmp_path.glob("run_*"))  # merged runs are deleted: disk holds each once


def test_removals_sharing_a_key_come_out_in_one_order_whatever_their_arrival():
    """Repeated input ids give removals with equal sort keys; their order must not depend on
    how an executor's workers delivered them."""
    twins = [
        {"id": "x", "source": "web", "stage": "filter", "reason": f"rule:{i}"} for i in range(5)
    ]
    first = list(report_lib.external_sort(twins, report_lib.removal_sort_key, "/unused", 1 << 20))
    again = list(
        report_lib.external_sort(twins[::-1], report_lib.removal_sort_key, "/unused", 1 << 20)
    )
    assert first == again


def test_one_long_partition_does_not_hold_the_other_workers_idle():
    """Partition 0 takes long (here: until partition 3 has run); the other worker must go on
    through partitions 1, 2, 3 meanwhile instead of waiting for partition 0's result."""
    import concurrent.futures
    import threading

    third_ran = threading.Event()

    def task(index: int) -> tuple[int, bool]:
        if index == 3:
            third_ran.set()
        return index, third_ran.wait(timeout=5) if index == 0 else True

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = dict(finalize_lib._bounded_map(pool, 2, task, [(i,) for i in range(5)]))
    assert results == {index: True for index in range(5)}
