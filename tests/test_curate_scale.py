"""The scale test: memory stays bounded as the corpus grows, and dedup decides the planted
duplicates as a brute-force reference does.

The same generated web-like corpus (`curate/synthetic.py`: English-like pages with planted
exact, near and distant copies) is prepared at N and 4N documents with the default filter chain,
exact and MinHash dedup and 2 workers, in a subprocess whose process tree is sampled with
psutil. The peak of the summed resident memory of the launcher and all its worker processes
(shared pages counted once per process, so an upper bound) must grow by well under
`MAX_MIB_PER_INPUT_MIB` per extra MiB of input and stay under `MEMORY_BOUND_MIB`.

The reference computes the exact Jaccard similarity of word 5-gram shingle sets for every pair
within each planted group (an original and its copies) among the documents the filters kept,
and calls a pair duplicate at or above the LSH threshold of the MinHash settings.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from jaxpretrain.curate import config as data_config
from jaxpretrain.curate import synthetic
from jaxpretrain.curate.dedup.exact import normalize_for_exact_match
from jaxpretrain.curate.dedup.minhash import shingles

pytestmark = pytest.mark.slow

# Documents of the small corpus; the large one has 4x as many, in 4x as many files (input
# files of a real corpus have a bounded size; their number grows with the corpus).
N_DOCUMENTS = 10_000
_DOCUMENTS_PER_FILE = 250
# Every this many documents, a verbatim copy is planted at the end (synthetic's own exact
# copies are upper-cased, and Gopher's stop-word rule removes those before dedup).
_VERBATIM_EVERY = 40
# Bound on the peak summed resident memory of the whole run (launcher + workers), in MiB.
MEMORY_BOUND_MIB = 600
# Growth of that peak per extra MiB of input; the issue asks for well under 0.25.
MAX_MIB_PER_INPUT_MIB = 0.15
_SAMPLE_SECONDS = 0.05

_RUN = textwrap.dedent(
    """
    import json, sys
    from jaxpretrain.curate import config as data_config, prepare

    if __name__ == "__main__":  # worker processes are spawned and re-import this file
        cfg = data_config.default_data_config()
        for key, value in json.loads(sys.argv[1]).items():
            cfg.update_from_flattened_dict({key: value})
        cfg.sources = [data_config.source_config(name="web", type="jsonl", path=sys.argv[2])]
        prepare.prepare_from_config(cfg, sys.argv[3], progress=False)
    """
)
# Memory is bounded by config, not by the corpus: these bounds are set low so that both sizes
# spill and sample (their defaults are sized for a real machine).
_SETTINGS = {
    "executor.workers": 2,
    "tokenizer.vocab_size": 1_000,
    "tokenizer.max_training_bytes": 1 << 20,
    "dedup.max_records_in_memory": 1 << 15,
    "output.sort_buffer_bytes": 1 << 20,
}


def _tree_rss(process: psutil.Process) -> int:
    """Resident bytes of `process` and all its descendants (0 for those that just ended)."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # it ended between listing and reading
            total += member.memory_info().rss
    return total


def run_and_measure_peak(tmp_path, corpus, output) -> int:
    """Prepares `corpus` into `output` in a subprocess; returns the peak summed RSS in bytes."""
    script = tmp_path / "run_prepare.py"
    script.write_text(_RUN)
    command = [sys.executable, str(script), json.dumps(_SETTINGS), str(corpus), str(output)]
    child = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    process, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        peak = max(peak, _tree_rss(process))
        time.sleep(_SAMPLE_SECONDS)
    stderr = child.stderr.read()
    assert child.returncode == 0, stderr[-3000:]
    return peak


def _minhash_threshold() -> float:
    """The similarity at which LSH's candidate probability rises steepest: (1/bands)^(1/rows)."""
    minhash = data_config.minhash_config(data_config.default_data_config())
    return (1.0 / minhash.bands) ** (1.0 / minhash.rows)


def write_corpus(directory, num_documents: int) -> list[synthetic.PlantedCopy]:
    """The synthetic web corpus plus a last file of verbatim copies; returns all planted copies."""
    files = num_documents // _DOCUMENTS_PER_FILE
    planted = synthetic.write_web_corpus(directory, num_documents, num_files=files)
    copies = []
    with open(directory / "zz-verbatim.jsonl", "w", encoding="utf-8") as out:
        for path in sorted(directory.glob("part-*.jsonl")):
            for record in _read_jsonl(path)[::_VERBATIM_EVERY]:
                copy_id = f"verbatim-{record['id']}"
                out.write(json.dumps({**record, "id": copy_id}) + "\n")
                copies.append(synthetic.PlantedCopy(copy_id, record["id"], "exact"))
    return planted + copies


def jaccard(first: str, second: str) -> float:
    """Exact Jaccard similarity of two texts' word 5-gram shingle sets."""
    a, b = set(shingles(first)), set(shingles(second))
    return len(a & b) / max(1, len(a | b))


def _read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _planted_groups(planted) -> list[set[str]]:
    """Documents linked by planted copies (a copy of a copy joins its original's group)."""
    parent: dict[str, str] = {}

    def root(doc_id: str) -> str:
        while parent.setdefault(doc_id, doc_id) != doc_id:
            doc_id = parent[doc_id]
        return doc_id

    for copy in planted:
        parent[root(copy.copy_id)] = root(copy.original_id)
    groups: dict[str, set[str]] = {}
    for doc_id in parent:
        groups.setdefault(root(doc_id), set()).add(doc_id)
    return list(groups.values())


def reference_decisions(texts: dict[str, str], planted, surviving: set[str]):
    """The brute-force reference over each planted group among the `surviving` documents, in
    input order (that of `texts`), with the pipeline's definitions: exact dedup first (a document
    whose normalised text an earlier one has), then near dedup among what exact kept (a document
    at Jaccard >= the LSH threshold from an earlier one still kept).

    Returns {removed id: the id it duplicates} for each stage ('exact', 'near') and the Jaccard
    of the pairs compared by the near stage, split at the threshold {(kept id, later id): s}.
    """
    threshold = _minhash_threshold()
    position = {doc_id: index for index, doc_id in enumerate(texts)}
    removed: dict[str, dict[str, str]] = {"exact": {}, "near": {}}
    above: dict[tuple[str, str], float] = {}
    below: dict[tuple[str, str], float] = {}
    for group in _planted_groups(planted):
        first_of_text: dict[str, str] = {}
        kept: list[str] = []
        for doc_id in sorted(group & surviving, key=position.__getitem__):
            normal = normalize_for_exact_match(texts[doc_id])
            if normal in first_of_text:
                removed["exact"][doc_id] = first_of_text[normal]
                continue
            first_of_text[normal] = doc_id
            values = {k: jaccard(texts[k], texts[doc_id]) for k in kept}
            for k, value in values.items():
                (above if value >= threshold else below)[k, doc_id] = value
            match = next((k for k in kept if values[k] >= threshold), None)
            if match is None:
                kept.append(doc_id)
            else:
                removed["near"][doc_id] = match
    return removed, above, below


def _allowed_misses(chances: list[float]) -> float:
    """How many of independent events with these probabilities may happen: mean + 4 sigma + 1."""
    return sum(chances) + 4 * math.sqrt(sum(p * (1 - p) for p in chances)) + 1


def test_memory_is_bounded_and_dedup_matches_the_reference(tmp_path):
    peaks, sizes = {}, {}
    for scale in (1, 4):
        corpus = tmp_path / f"corpus-{scale}"
        planted = write_corpus(corpus, N_DOCUMENTS * scale)
        sizes[scale] = sum(path.stat().st_size for path in corpus.iterdir())
        output = tmp_path / f"prepared-{scale}"
        peaks[scale] = run_and_measure_peak(tmp_path, corpus, output)
    mib = 2.0**20
    slope = (peaks[4] - peaks[1]) / (sizes[4] - sizes[1])
    figures = {
        "input_mib": [round(sizes[s] / mib, 1) for s in (1, 4)],
        "peak_rss_mib": [round(peaks[s] / mib, 1) for s in (1, 4)],
        "mib_per_input_mib": round(slope, 3),
    }
    print("scale figures:", json.dumps(figures))

    # Dedup decisions of the 4N run against the brute-force reference.
    texts = {}
    for path in sorted(corpus.iterdir()):
        texts.update((r["id"], r["text"]) for r in _read_jsonl(path))
    removals = _read_jsonl(output / "removed.jsonl")
    filtered = {r["id"] for r in removals if r["stage"] in ("clean", "filter")}
    assert len(filtered) < 0.2 * len(texts)  # the default chain keeps most of the pages
    expected, above, below = reference_decisions(texts, planted, set(texts) - filtered)
    deduplicated = {r["id"]: r["duplicate_of"] for r in removals if r["stage"].endswith("dedup")}
    copies = {copy.copy_id: copy for copy in planted}
    # Nothing but planted exact or near copies is removed.
    removed_kinds = {copies[d].kind if d in copies else "not a copy" for d in deduplicated}
    assert removed_kinds <= {"exact", "near"}
    # Exact copies: exactly the reference's decisions, pointing at the same kept document.
    exact = {r["id"]: r["duplicate_of"] for r in removals if r["stage"] == "exact_dedup"}
    assert exact == expected["exact"]
    # Near copies: LSH joins a pair at Jaccard s with probability 1 - (1 - s^rows)^bands, so it
    # may miss a few of the reference's pairs above the threshold and join a few below it, but
    # no more than those probabilities allow.
    minhash = data_config.minhash_config(data_config.default_data_config())
    missed = [pair for pair in above if pair[1] not in deduplicated]
    miss_chances = [1 - minhash.candidate_probability(s) for s in above.values()]
    assert len(missed) <= _allowed_misses(miss_chances), (missed, len(above))
    extra = set(deduplicated) - set(expected["exact"]) - set(expected["near"])
    join_chances = [minhash.candidate_probability(s) for s in below.values()]
    assert len(extra) <= _allowed_misses(join_chances), (extra, len(below))
    kinds = ("exact", "near", "distant")
    print("dedup figures:", json.dumps({
        "planted": {kind: sum(c.kind == kind for c in planted) for kind in kinds},
        "filtered": len(filtered),
        "reference_removed": {stage: len(ids) for stage, ids in expected.items()},
        "pipeline_removed": len(deduplicated), "missed": len(missed), "extra": len(extra),
    }))  # fmt: skip
    assert slope < MAX_MIB_PER_INPUT_MIB, figures
    assert max(peaks.values()) < MEMORY_BOUND_MIB * mib, figures
