"""Manifest reading, the grain loader (packing, sharding, restore, eval) and the device put.

The data here is written directly (not through curate/) so token values are chosen by the test:
documents contain the id 0 as a real token and the pad id is 7, so padding is never confused
with data.
"""

import collections
import json
import pathlib

import jax
import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from jaxpretrain import config as config_lib
from jaxpretrain import mesh as mesh_lib
from jaxpretrain.data import device, pipeline
from jaxpretrain.data import manifest as manifest_lib
from jaxpretrain.tokenizer import SpecialIds

PAD_ID = 7
BOS_ID = 2
EOS_ID = 1
SEQ_LEN = 16
_SPECIAL_IDS = SpecialIds(pad=PAD_ID, bos=BOS_ID, eos=EOS_ID, unk=3, mask=4, sentinels=(5, 6))


def _document_tokens(index: int) -> np.ndarray:
    """Document `index`: starts with 1000 + index (identifies it), has zeros inside it."""
    length = 3 + (index * 7) % 40
    tokens = (np.arange(length, dtype=np.int32) * (index + 3)) % 50
    tokens[0] = 1000 + index
    tokens[1] = 0  # A real token with id 0.
    return tokens


def _write_prepared(
    directory, num_documents: dict[str, int], num_shards: int = 3, shard_sources=("",) * 3
):
    """Prepared data of synthetic documents; shard k of every split belongs to source
    `shard_sources[k]` ("" for an unnamed single source)."""
    directory.mkdir(parents=True, exist_ok=True)
    splits = {}
    first_index = 0
    for split, count in num_documents.items():
        shards = []
        indices = list(range(first_index, first_index + count))
        first_index += count
        shard_count = min(num_shards, max(1, count))
        for shard in range(shard_count):
            filename = f"{split}-{shard:05d}-of-{shard_count:05d}.array_record"
            writer = ArrayRecordWriter(str(directory / filename), "group_size:1")
            tokens = 0
            shard_indices = indices[shard::shard_count]
            for index in shard_indices:
                record = _document_tokens(index)
                writer.write(record.astype("<i4").tobytes())
                tokens += len(record)
            writer.close()
            shards.append(
                manifest_lib.ShardInfo(filename, len(shard_indices), tokens, shard_sources[shard])
            )
        splits[split] = manifest_lib.SplitInfo(tuple(shards))
    (directory / "tokenizer.model").write_bytes(b"unused by the loader")
    manifest_lib.write_manifest(
        manifest_lib.Manifest(
            data_dir=str(directory),
            tokenizer_file="tokenizer.model",
            vocab_size=1100,
            special_ids=_SPECIAL_IDS,
            splits=splits,
            sources=tuple(
                {"name": name or "synthetic", "weight": 1.0}
                for name in dict.fromkeys(shard_sources)
            ),
        )
    )
    return manifest_lib.read_manifest(directory)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return _write_prepared(tmp_path_factory.mktemp("data"), {"train": 40, "validation": 13})


def clm_examples(token_ids: np.ndarray, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    """[bos] + ids + [eos], cut into windows of SEQ_LEN + 1 overlapping by one token."""
    del rng
    sequence = np.concatenate([[BOS_ID], token_ids, [EOS_ID]]).astype(np.int32)
    examples = []
    for start in range(0, len(sequence) - 1, SEQ_LEN):
        window = sequence[start : start + SEQ_LEN + 1]
        examples.append(
            {
                "inputs": window[:-1],
                "targets": window[1:],
                "loss_weights": np.ones(len(window) - 1, np.float32),
                "bidirectional": np.zeros(len(window) - 1, np.int32),
            }
        )
    return examples


def random_crop_examples(token_ids, rng):
    """A stochastic objective: a random prefix, a random bidirectional prefix length."""
    length = int(rng.integers(1, min(len(token_ids), SEQ_LEN) + 1))
    prefix = int(rng.integers(0, length + 1))
    return [
        {
            "inputs": token_ids[:length],
            "targets": token_ids[:length],
            "loss_weights": rng.random(length).astype(np.float32),
            "bidirectional": (np.arange(length) < prefix).astype(np.int32),
        }
    ]


def _train_iterator(manifest, **overrides):
    arguments = dict(
        examples_fn=clm_examples,
        seq_len=SEQ_LEN,
        batch_size_per_process=4,
        seed=0,
        process_index=0,
        process_count=1,
        read_threads=2,
    )
    arguments.update(overrides)
    return pipeline.make_train_iterator(manifest, **arguments)


def _eval_batches(manifest, **overrides):
    arguments = dict(
        examples_fn=clm_examples,
        seq_len=SEQ_LEN,
        batch_size_per_process=4,
        num_batches=-1,
        process_index=0,
        process_count=1,
        read_threads=2,
    )
    arguments.update(overrides)
    return list(pipeline.make_eval_batches(manifest, **arguments))


def _segments(batch):
    """Yields (row, segment id, columns) for every packed example of a batch."""
    for row in range(batch["segment_ids"].shape[0]):
        for segment in np.unique(batch["segment_ids"][row]):
            if segment:
                yield row, segment, np.flatnonzero(batch["segment_ids"][row] == segment)


def _assert_packing_invariants(batch):
    segment_ids, positions = batch["segment_ids"], batch["positions"]
    for row in range(segment_ids.shape[0]):
        used = segment_ids[row] > 0
        # Segments are 1, 2, ... in order, contiguous, and padding only follows them.
        assert np.all(np.diff(segment_ids[row][used]) >= 0)
        assert np.all(used[: used.sum()])
        assert list(np.unique(segment_ids[row][used])) == list(range(1, segment_ids[row].max() + 1))
        padding = ~used
        assert np.all(batch["inputs"][row][padding] == PAD_ID)
        assert np.all(batch["targets"][row][padding] == PAD_ID)
        assert np.all(batch["loss_weights"][row][padding] == 0)
        assert np.all(positions[row][padding] == 0)
        assert np.all(batch["bidirectional"][row][padding] == 0)
    for row, _, columns in _segments(batch):
        assert np.array_equal(positions[row, columns], np.arange(len(columns)))


def test_train_batches_follow_the_contract(manifest):
    iterator = _train_iterator(manifest)
    for _ in range(5):
        batch = next(iterator)
        assert set(batch) == set(pipeline.BATCH_FEATURES)
        for feature, values in batch.items():
            assert values.shape == (4, SEQ_LEN), feature
            expected = np.float32 if feature == "loss_weights" else np.int32
            assert values.dtype == expected, feature
        _assert_packing_invariants(batch)


def test_packing_keeps_every_example_token_and_nothing_else(manifest):
    """One eval pass packs exactly the examples clm_examples made, each as one segment."""
    made = collections.Counter()
    for index in range(40, 53):  # The validation documents.
        for example in clm_examples(_document_tokens(index), None):
            made[(tuple(example["inputs"]), tuple(example["targets"]))] += 1
    packed = collections.Counter()
    for batch in _eval_batches(manifest):
        _assert_packing_invariants(batch)
        for row, _, columns in _segments(batch):
            assert np.all(batch["loss_weights"][row, columns] == 1)
            packed[
                (tuple(batch["inputs"][row, columns]), tuple(batch["targets"][row, columns]))
            ] += 1
    assert packed == made


def test_token_zero_inside_a_document_is_a_real_token(manifest):
    batch = _eval_batches(manifest)[0]
    zeros = batch["inputs"] == 0
    assert zeros.any()
    assert np.all(batch["segment_ids"][zeros] > 0)
    assert np.all(batch["loss_weights"][zeros] == 1)


def test_processes_read_disjoint_documents_covering_the_split(manifest):
    seen = []
    for process_index in range(2):
        iterator = _train_iterator(
            manifest, process_index=process_index, process_count=2, batch_size_per_process=8
        )
        first_tokens = set()
        for _ in range(30):
            batch = next(iterator)
            first_tokens.update(int(t) for t in batch["inputs"][batch["inputs"] >= 1000])
        seen.append(first_tokens)
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(1000, 1040))


def test_seed_changes_the_order_and_is_reproducible(manifest):
    def first_batch(seed):
        return next(_train_iterator(manifest, seed=seed))["inputs"]

    assert np.array_equal(first_batch(0), first_batch(0))
    assert not np.array_equal(first_batch(0), first_batch(1))


@pytest.mark.parametrize(
    ("taken", "prefetch_batches", "num_packing_bins"), [(0, 2, None), (3, 2, 11), (7, 0, 5)]
)
def test_restored_iterator_yields_the_same_batches(
    manifest, taken, prefetch_batches, num_packing_bins
):
    def make():
        return _train_iterator(
            manifest,
            examples_fn=random_crop_examples,
            prefetch_batches=prefetch_batches,
            num_packing_bins=num_packing_bins,
        )

    iterator = make()
    for _ in range(taken):
        next(iterator)
    state = json.loads(json.dumps(iterator.get_state()))
    expected = [next(iterator) for _ in range(12)]  # 12 batches cross an epoch boundary.
    restored = make()
    restored.set_state(state)
    for want, got in zip(expected, [next(restored) for _ in range(12)], strict=True):
        for feature in pipeline.BATCH_FEATURES:
            np.testing.assert_array_equal(got[feature], want[feature], err_msg=feature)


def test_eval_batches_are_finite_deterministic_and_padded(manifest):
    first, second = _eval_batches(manifest), _eval_batches(manifest)
    assert len(first) == len(second) > 1
    for a, b in zip(first, second, strict=True):
        for feature in pipeline.BATCH_FEATURES:
            np.testing.assert_array_equal(a[feature], b[feature])
    assert len(_eval_batches(manifest, num_batches=2)) == 2
    assert _eval_batches(manifest, num_batches=0) == []


def test_eval_completes_the_last_batch_with_padding_rows(manifest):
    rows = sum(
        int(batch["segment_ids"].any(axis=1).sum())
        for batch in _eval_batches(manifest, batch_size_per_process=1, num_packing_bins=4)
    )
    batch_size = next(size for size in range(2, rows) if rows % size)
    batches = _eval_batches(manifest, batch_size_per_process=batch_size, num_packing_bins=4)
    assert len(batches) == -(-rows // batch_size)
    last = batches[-1]
    empty_rows = ~last["segment_ids"].any(axis=1)
    assert empty_rows.sum() == batch_size - rows % batch_size
    assert np.all(last["inputs"][empty_rows] == PAD_ID)
    assert np.all(last["loss_weights"][empty_rows] == 0)


def test_eval_rows_are_the_same_on_one_process_or_two(manifest):
    """Each process packs only its own streams' rows, and a step's rows depend on the streams,
    not on the process count."""
    whole = _eval_batches(manifest, batch_size_per_process=4, num_streams=2)
    halves = [
        _eval_batches(
            manifest, batch_size_per_process=2, process_index=i, process_count=2, num_streams=2
        )
        for i in range(2)
    ]
    # With the whole split (-1) streams end apart: processes pad to the longest (train.py
    # agrees on the count across processes), as one process running both streams does.
    assert max(len(half) for half in halves) == len(whole)
    halves = [
        half + [pipeline.padding_batch(2, SEQ_LEN, PAD_ID)] * (len(whole) - len(half))
        for half in halves
    ]
    for batch, first, second in zip(whole, *halves, strict=True):
        for feature in pipeline.BATCH_FEATURES:
            np.testing.assert_array_equal(
                batch[feature], np.concatenate([first[feature], second[feature]])
            )


def _documents_in(batches) -> collections.Counter:
    """The (inputs, targets) of every packed example of `batches`."""
    return collections.Counter(
        (tuple(batch["inputs"][row, columns]), tuple(batch["targets"][row, columns]))
        for batch in batches
        for row, _, columns in _segments(batch)
    )


def _examples_of(indices) -> collections.Counter:
    return collections.Counter(
        (tuple(example["inputs"]), tuple(example["targets"]))
        for index in indices
        for example in clm_examples(_document_tokens(index), None)
    )


def test_eval_of_one_source_reads_all_of_it_and_nothing_else(tmp_path):
    mixture = _write_prepared(
        tmp_path, {"train": 30, "validation": 12}, shard_sources=("a", "b", "b")
    )
    validation = list(range(30, 42))  # shard k holds documents validation[k::3]
    assert _documents_in(_eval_batches(mixture, source="a")) == _examples_of(validation[0::3])
    b_documents = validation[1::3] + validation[2::3]
    assert _documents_in(_eval_batches(mixture, source="b")) == _examples_of(b_documents)
    with pytest.raises(ValueError, match="source 'c' has no documents.*'a', 'b'"):
        _eval_batches(mixture, source="c")


def test_a_capped_eval_samples_the_whole_source_not_its_first_shard(tmp_path):
    mixture = _write_prepared(tmp_path, {"train": 30, "validation": 60}, shard_sources="bbb")
    # One batch holds a few documents: read in shard order they would all come from shard 0.
    first = _documents_in(_eval_batches(mixture, source="b", num_batches=1))
    shards_seen = {
        shard for shard in range(3) if _examples_of(list(range(30, 90))[shard::3]) & first
    }
    assert len(shards_seen) >= 2


def test_broken_examples_fn_is_a_clear_error(manifest):
    def too_long(token_ids, rng):
        return [{feature: np.ones(SEQ_LEN + 1) for feature in pipeline.EXAMPLE_FEATURES}]

    with pytest.raises(ValueError, match="seq_len=16"):
        next(_train_iterator(manifest, examples_fn=too_long, prefetch_batches=0))
    with pytest.raises(ValueError, match="exactly the keys"):
        next(_train_iterator(manifest, examples_fn=lambda ids, rng: [{"inputs": ids}]))

    def with_bidirectional(values):  # attention kernels need a bidirectional prefix of 0/1
        example = {feature: np.ones(len(values)) for feature in pipeline.EXAMPLE_FEATURES}
        return lambda token_ids, rng: [{**example, "bidirectional": np.array(values)}]

    for values, message in [
        ([0, 0, 1, 1], r"bidirectional\[2\]=1 \(after 0\) for document \d+; .*first"),
        ([1, 2, 0, 0], r"bidirectional\[1\]=2 \(after 1\) for document \d+; it must be 0 or 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            next(
                _train_iterator(
                    manifest, examples_fn=with_bidirectional(values), prefetch_batches=0
                )
            )
    batch = next(_train_iterator(manifest, examples_fn=with_bidirectional([1, 1, 0, 0])))
    assert batch["bidirectional"][0, :4].tolist() == [1, 1, 0, 0]


def test_objective_that_never_makes_examples_raises_instead_of_hanging(manifest):
    with pytest.raises(ValueError, match="no example"):
        next(_train_iterator(manifest, examples_fn=lambda ids, rng: [], prefetch_batches=0))


def test_empty_split_and_bad_process_index_are_clear_errors(tmp_path, manifest):
    empty = _write_prepared(tmp_path / "empty", {"train": 2, "validation": 0})
    with pytest.raises(ValueError, match="'validation'.*no documents"):
        _eval_batches(empty)
    with pytest.raises(ValueError, match="gets no documents"):
        _train_iterator(empty, process_index=2, process_count=3)
    with pytest.raises(ValueError, match="process_index=2"):
        _train_iterator(manifest, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="Split 'test'"):
        _train_iterator(manifest, split="test")


def test_manifest_round_trip_and_accessors(manifest):
    assert manifest.special_ids == _SPECIAL_IDS
    assert manifest.split("train").documents == 40
    assert manifest.split("validation").tokens == sum(
        len(_document_tokens(i)) for i in range(40, 53)
    )
    assert manifest.shard_paths("validation")[0].endswith("validation-00000-of-00003.array_record")
    assert manifest.tokenizer_path.endswith("tokenizer.model")
    assert manifest_lib.is_prepared(manifest.data_dir)


def test_manifest_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
        manifest_lib.read_manifest(tmp_path)
    assert not manifest_lib.is_prepared(tmp_path)
    manifest_file = tmp_path / "manifest.json"
    manifest_file.write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json is not valid JSON"):
        manifest_lib.read_manifest(tmp_path)
    manifest_file.write_text(json.dumps({"format_version": 99}))
    with pytest.raises(ValueError, match="format_version=99"):
        manifest_lib.read_manifest(tmp_path)
    manifest_file.write_text(json.dumps({"format_version": 3, "tokenizer": "t.model"}))
    with pytest.raises(ValueError, match="manifest.json is missing or has a malformed entry"):
        manifest_lib.read_manifest(tmp_path)


def test_is_prepared_is_false_when_a_shard_is_missing(tmp_path):
    prepared = _write_prepared(tmp_path / "data", {"train": 3, "validation": 1})
    assert manifest_lib.is_prepared(prepared.data_dir)
    (tmp_path / "data" / prepared.split("train").shards[0].file).unlink()
    assert not manifest_lib.is_prepared(prepared.data_dir)


@pytest.fixture(scope="module")
def batch_sharding():
    assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 4, "tensor": 1, "pipe": 1})
    return mesh_lib.batch_sharding(mesh, config_lib.DEFAULT_AXIS_RULES)


def test_global_arrays_are_sharded_over_data_and_fsdp(manifest, batch_sharding):
    batch = next(_train_iterator(manifest, batch_size_per_process=16))
    arrays = device.to_global_arrays(batch, batch_sharding, 16)
    assert set(arrays) == set(batch)
    for feature, array in arrays.items():
        assert array.shape == (16, SEQ_LEN) and array.dtype == batch[feature].dtype
        assert array.sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"), None)
        shards = array.addressable_shards
        assert len(shards) == 8 and {s.data.shape for s in shards} == {(2, SEQ_LEN)}
        rows_per_device = {s.index[0].indices(16) for s in shards}
        assert len(rows_per_device) == 8  # Each device holds different rows.
        np.testing.assert_array_equal(np.asarray(array), batch[feature])


def _write_two_sources(directory, weights: dict[str, float]):
    """Manifest v2 with sources 'a' (documents 1000+i) and 'b' (documents 2000+i)."""
    directory.mkdir(parents=True, exist_ok=True)
    shards = []
    for name, first_marker, count in (("a", 1000, 20), ("b", 2000, 60)):
        (directory / name).mkdir()
        filename = f"{name}/train-00000-of-00001.array_record"
        writer = ArrayRecordWriter(str(directory / filename), "group_size:1")
        for index in range(count):
            writer.write(np.array([first_marker + index, 9, 9], "<i4").tobytes())
        writer.close()
        shards.append(manifest_lib.ShardInfo(filename, count, 3 * count, source=name))
    (directory / "tokenizer.model").write_bytes(b"unused by the loader")
    manifest_lib.write_manifest(
        manifest_lib.Manifest(
            data_dir=str(directory),
            tokenizer_file="tokenizer.model",
            vocab_size=2100,
            special_ids=_SPECIAL_IDS,
            splits={"train": manifest_lib.SplitInfo(tuple(shards))},
            sources=tuple({"name": name, "weight": weight} for name, weight in weights.items()),
        )
    )
    return manifest_lib.read_manifest(directory)


def test_train_iterator_mixes_sources_by_manifest_weights(tmp_path):
    mixed = _write_two_sources(tmp_path / "data", {"a": 0.75, "b": 0.25})
    assert mixed.source_weights() == {"a": 0.75, "b": 0.25}
    assert mixed.shard_paths("train", source="b")[0].endswith("b/train-00000-of-00001.array_record")

    def markers(iterator, batches):
        found = []
        for _ in range(batches):
            inputs = next(iterator)["inputs"]
            found.extend(int(t) for t in inputs[inputs >= 1000])
        return found

    seen = markers(_train_iterator(mixed, shuffle_window=1), 40)
    from_a = sum(1000 <= marker < 2000 for marker in seen)
    # Source a has a quarter of the documents but three quarters of the samples.
    assert abs(from_a / len(seen) - 0.75) < 0.05
    # Deterministic and restorable mid-stream.
    iterator = _train_iterator(mixed, shuffle_window=1)
    markers(iterator, 5)
    state = iterator.get_state()
    expected = markers(iterator, 5)
    restored = _train_iterator(mixed, shuffle_window=1)
    restored.set_state(state)
    assert markers(restored, 5) == expected


@pytest.mark.parametrize("old_version", [1, 2])
def test_data_prepared_with_the_earlier_token_layout_is_refused(tmp_path, manifest, old_version):
    content = json.loads(pathlib.Path(manifest.manifest_path).read_text())
    content["format_version"] = old_version
    (tmp_path / "manifest.json").write_text(json.dumps(content))
    with pytest.raises(ValueError, match=r"earlier token layout.*prepare the\s+data again"):
        manifest_lib.read_manifest(tmp_path)


def test_a_document_read_again_gets_new_random_draws_even_in_an_upsampled_source(tmp_path):
    """Dynamic masking: each read of a document seeds the objective anew (its source's epoch)."""
    mixed = _write_two_sources(tmp_path / "data", {"a": 0.75, "b": 0.25})

    def draw_examples(ids, rng):  # [marker, a random draw] per document
        inputs = np.array([ids[0], rng.integers(3000, 2**30)], np.int32)
        return [
            {
                "inputs": inputs,
                "targets": inputs,
                "loss_weights": np.ones(2, np.float32),
                "bidirectional": np.zeros(2, np.int32),
            }
        ]

    draws: dict[int, list[int]] = {}
    iterator = _train_iterator(mixed, examples_fn=draw_examples, shuffle_window=1)
    for _ in range(30):
        inputs = next(iterator)["inputs"].reshape(-1)
        for position in np.flatnonzero((inputs >= 1000) & (inputs < 3000)):
            draws.setdefault(int(inputs[position]), []).append(int(inputs[position + 1]))
    # Source a's 20 documents are read about 3 times per pass over all 80 documents.
    repeated = {marker: found for marker, found in draws.items() if len(found) > 1}
    assert sum(1000 <= marker < 2000 for marker in repeated) == 20
    for found in repeated.values():
        assert len(set(found)) == len(found)
