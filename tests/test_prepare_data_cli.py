"""tools/prepare_data.py end to end in a subprocess: config file, overrides, errors."""

import json
import pathlib
import subprocess
import sys

from jaxpretrain.data import manifest as manifest_lib

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_PROSE = "The river of the valley and the hills is quiet with birds in the morning.\n"


def _run(*arguments):
    return subprocess.run(
        [sys.executable, str(_ROOT / "tools" / "prepare_data.py"), *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=_ROOT,
    )


def test_cli_prepares_a_tiny_corpus_and_reports_bad_config(tmp_path):
    corpus = tmp_path / "tiny"
    corpus.mkdir()
    for index in range(8):
        (corpus / f"doc_{index}.txt").write_text(f"Document {index}. " + _PROSE * (index + 1))
    output = tmp_path / "prepared"
    result = _run(
        "--config=configs/data/stdlib.py",
        f"--output={output}",
        "--config.sources[0].name=tiny",
        "--config.sources[0].type=files",
        f"--config.sources[0].path={corpus}",
        "--config.tokenizer.vocab_size=450",
        "--config.executor.workers=1",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(output / "manifest.json")
    assert "curate" in result.stderr and "docs_per_s" in result.stderr  # progress bars
    manifest = manifest_lib.read_manifest(output)
    assert manifest.sources[0]["name"] == "tiny"
    assert manifest.split("train").documents + manifest.split("validation").documents == 8
    report = json.loads((output / "report.json").read_text())
    assert report["sources"]["tiny"]["stages"]["read"]["documents_out"] == 8

    missing = _run(
        "--config=configs/data/seed_mixture.py",
        f"--output={tmp_path / 'seed'}",
        f"--config.input_dir={tmp_path / 'nowhere'}",
    )
    assert missing.returncode != 0
    assert "Source 'web'" in missing.stderr and "nowhere" in missing.stderr
    assert not (tmp_path / "seed").exists()
