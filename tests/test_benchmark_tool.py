"""tools/benchmark.py's tables: --append_to_docs adds a run's table to the end of its docs
section, keeping the rest (.ci/run runs every subcommand on a tiny config)."""

import pathlib
import sys

TOOLS = pathlib.Path(__file__).parent.parent / "tools"
sys.path.insert(0, str(TOOLS))

import benchmark  # noqa: E402

DOCS = """# Performance

## Training throughput

old row

### A subsection

text

## Benchmark runs (`tools/benchmark.py ... --append_to_docs`)

intro

## Curation

curation text
"""


def test_append_adds_to_the_end_of_the_section_and_keeps_the_rest(tmp_path):
    docs = tmp_path / "performance.md"
    docs.write_text(DOCS)
    benchmark.append_to_docs_section("first table\n", benchmark.RUNS_DOCS_HEADING, docs)
    benchmark.append_to_docs_section("second table\n", benchmark.RUNS_DOCS_HEADING, docs)
    text = docs.read_text()
    assert text.startswith(DOCS.split("intro")[0] + "intro\n\nfirst table\n\nsecond table\n")
    assert text.endswith("## Curation\n\ncuration text\n")


def test_figures_table_is_one_markdown_row():
    table = benchmark.figures_table({"ratio": 0.99612, "tokens": 123456.7, "device_kind": "cpu"})
    assert table.splitlines() == [
        "| ratio | tokens | device_kind |",
        "| --- | --- | --- |",
        "| 0.9961 | 123,457 | cpu |",
    ]
