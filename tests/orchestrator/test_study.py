"""`lnsub study`: a grid's whole study in one command; killed between two steps, a rerun resumes where it
stopped and redoes nothing that had finished."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lnsub.orchestrator.study import study_markers, transfer_levels
from lnsub.trainables.store import CellStore
from lnsub.analysis.sweeps import load_state

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _study(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lnsub.orchestrator.cli", "study", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_study_killed_between_steps_resumes_with_nothing_redone(tmp_path, tiny_model, fault_plan):
    grid = {"name": "tiny", "model": "testbed", "languages": ["syn-en", "syn-ar"],
            "tasks": {"ner": {"steps": 12, "lr": 1.0e-3, "batch_size": 16, "max_length": 32, "train_size": 400,
                              "valid_size": 96}},
            "levels": 2, "prune_fraction": 0.2, "study": {"transfer_levels": [2]}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(grid))
    killed = tmp_path / "killed"
    fault_plan([{"unit": "study:tiny", "step": 2, "action": "crash", "marker": str(killed)}])  # after analyze
    first = _study(tmp_path, "--grid", "tiny.yaml")
    assert first.returncode != 0 and json.loads(killed.read_text())["step"] == 2, first.stdout[-2000:]
    storage = tmp_path / "lnsub-runs"
    before = study_markers(str(storage), "tiny")
    assert set(before) == {"sweep", "analyze"}  # the study died between analyze and transfer
    cells = [CellStore(storage, s) for s in load_state(storage, "tiny").specs]
    stamps = {p: p.stat().st_mtime_ns for c in cells for p in c.root.rglob("*") if p.is_file()}
    overlap = storage / "sweeps/tiny/analysis/overlap/overlap.csv"
    overlap_stamp = overlap.stat().st_mtime_ns

    second = _study(tmp_path, "--grid", "tiny.yaml")
    out = second.stdout
    assert second.returncode == 0, (out + second.stderr)[-3000:]
    after = study_markers(str(storage), "tiny")
    assert set(after) == {"sweep", "analyze", "transfer-level2", "similarity", "report"}
    assert {k: after[k] for k in before} == before  # the finished steps were kept, not redone ...
    assert "sweep finished before; kept" in out and "analyze finished before; kept" in out
    assert overlap.stat().st_mtime_ns == overlap_stamp
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # ... and no cell file was touched
    assert "3 step(s) run, 2 kept from before" in out
    report = storage / "sweeps/tiny/analysis/report/report.html"
    assert report.is_file() and f"report: {report}" in out.replace("\n", "")
    assert "the paper's claims on tiny" in out and any(v in out for v in ("holds", "cannot tell", "does not hold"))
    assert transfer_levels(load_state(storage, "tiny")) == [2]
