"""A cell that fails for good reads as its cause: one line per failed cell (the root exception's type and message)
and where its full traceback is kept in storage; Ray's stack dumps stay off the console unless -v."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_a_failed_cell_is_one_line_with_its_traceback_in_storage(tmp_path, tiny_model):
    empty = tmp_path / "no-data"
    empty.mkdir()
    grid = {"name": "broken", "model": "testbed", "languages": ["en"],
            "tasks": {"ner": {"steps": 4, "batch_size": 8, "max_length": 32, "data_dir": str(empty)}},
            "levels": 1, "prune_fraction": 0.5}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(grid))
    proc = subprocess.run([sys.executable, "-m", "lnsub.orchestrator.cli", "sweep", "--grid", "g.yaml",
                           "--max-failures", "0"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    failed = [line for line in out.splitlines() if line.startswith("failed ")]
    assert len(failed) == 1 and "LnsubError: " in failed[0] and "no-data" in failed[0], out[-3000:]
    assert "Traceback" not in out and "ray::" not in out  # no stack dump on the console
    where = next(line.split("traceback: ", 1)[1] for line in out.splitlines() if "traceback: " in line)
    dump = Path(where).read_text()
    assert dump.startswith("Traceback") and "LnsubError" in dump  # the whole story, kept in storage
