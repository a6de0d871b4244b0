"""`lnsub study`: a grid's whole study in one command; killed between two steps, a rerun resumes where it
stopped and redoes nothing that had finished."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml

from lnsub.analysis.tickets import theta0_jobs
from lnsub.orchestrator import ray_backend
from lnsub.orchestrator.jobs import session_file
from lnsub.orchestrator.study import study_markers, transfer_levels
from lnsub.trainables import transfer_job
from lnsub.trainables.store import CellStore
from lnsub.analysis.sweeps import load_state

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _study(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lnsub.orchestrator.cli", "study", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _names(process: psutil.Process, folder: str) -> bool:
    try:
        return any(folder in arg for arg in process.cmdline())
    except psutil.Error:
        return False


def test_a_study_killed_between_steps_resumes_with_nothing_redone(tmp_path, tiny_model, fault_plan):
    grid = {"name": "tiny", "model": "testbed", "languages": ["syn-en", "syn-ar"],
            "tasks": {"ner": {"steps": 12, "lr": 1.0e-3, "batch_size": 16, "max_length": 32, "train_size": 400,
                              "valid_size": 96}},
            "levels": 2, "prune_fraction": 0.2, "study": {"transfer_levels": [2]}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(grid))
    killed = tmp_path / "killed"
    fault_plan([{"unit": "study:tiny", "step": 3, "action": "crash", "marker": str(killed)}])  # after analyze
    first = _study(tmp_path, "--grid", "tiny.yaml")
    assert first.returncode != 0 and json.loads(killed.read_text())["step"] == 3, first.stdout[-2000:]
    storage = tmp_path / "lnsub-runs"
    # the study's steps shared one private Ray, recorded for the study (not per step) when its driver was killed
    held = session_file(storage, "study-tiny")
    left = ray_backend.SessionRecord.parse(held.read_bytes()).temp_dir
    before = study_markers(str(storage), "tiny")
    assert set(before) == {"sweep", "tickets", "analyze"}  # the study died between analyze and transfer
    # the tickets step trained every level's mask from θ0 (a fresh head), before analyze read them
    specs = load_state(storage, "tiny").specs
    theta0 = theta0_jobs(specs)
    assert len(theta0) == 2 * 3 and all(transfer_job.finished(storage, j) for j in theta0)
    assert before["tickets"]["finished"] <= before["analyze"]["finished"]
    tickets = list(csv.DictReader(open(storage / "sweeps/tiny/analysis/overlap/winning_tickets.csv")))
    assert tickets and all(t["score_source"] == "θ0" and t["theta0_missing"] == "" for t in tickets)
    theta0_stamps = {p: p.stat().st_mtime_ns for j in theta0 for p in transfer_job.job_dir(storage, j).rglob("*")
                     if p.is_file()}
    cells = [CellStore(storage, s) for s in load_state(storage, "tiny").specs]
    stamps = {p: p.stat().st_mtime_ns for c in cells for p in c.root.rglob("*") if p.is_file()}
    overlap = storage / "sweeps/tiny/analysis/overlap/overlap.csv"
    overlap_stamp = overlap.stat().st_mtime_ns

    second = _study(tmp_path, "--grid", "tiny.yaml")
    out = second.stdout
    assert second.returncode == 0, (out + second.stderr)[-3000:]
    after = study_markers(str(storage), "tiny")
    assert not held.exists() and not any(_names(p, left) for p in psutil.process_iter())  # reaped, then its own gone
    assert set(after) == {"sweep", "tickets", "analyze", "transfer-level2", "similarity", "report"}
    assert {k: after[k] for k in before} == before  # the finished steps were kept, not redone ...
    assert "sweep finished before; kept" in out and "analyze finished before; kept" in out
    assert "tickets finished before; kept" in out
    # ... no θ0 job ran again, not even the level-2 diagonal the transfer step shares with the tickets step
    assert all(p.stat().st_mtime_ns == t for p, t in theta0_stamps.items())
    assert overlap.stat().st_mtime_ns == overlap_stamp
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # ... and no cell file was touched
    assert "3 step(s) run, 3 kept from before" in out
    report = storage / "sweeps/tiny/analysis/report/report.html"
    assert report.is_file() and f"report: {report}" in out.replace("\n", "")
    assert "the paper's claims on tiny" in out and any(v in out for v in ("holds", "cannot tell", "does not hold"))
    assert transfer_levels(load_state(storage, "tiny")) == [2]
