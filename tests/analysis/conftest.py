"""Shared by the analysis tests: real cells in storage with the sweep state that names them (no Ray needed), and
every analysis run on the README's smoke sweep (slow: once a session)."""

from __future__ import annotations

import os
import signal

import pytest

from lnsub.analysis.transfer_matrix import plan_jobs
from lnsub.orchestrator.analyses import analyze, similarity, tickets, transfer
from lnsub.orchestrator.jobs import held_ray, session_file
from lnsub.orchestrator import faults
from lnsub.trainables.imp import run_cell
from lnsub.trainables.spec import make_spec
from lnsub.analysis.sweeps import Resources, PlannedCell, SweepState, load_state, save_state

FAST = {"lr": 1e-3, "batch_size": 16, "max_length": 32, "levels": 2, "steps": 8, "train_size": 300,
        "valid_size": 64}
SMOKE_LEVEL = 3  # the smoke grid's deepest level: 30% sparsity


@pytest.fixture(scope="module")
def mini_sweep(tmp_path_factory, tiny_model):
    """NER cells of syn-en (seeds 0 and 1) and syn-ar (seed 0), and a sweep "mini" that lists them."""
    storage = tmp_path_factory.mktemp("mini")
    specs = [make_spec("ner", "syn-en", **FAST), make_spec("ner", "syn-ar", **FAST),
             make_spec("ner", "syn-en", seed=1, **FAST)]
    for spec in specs:
        run_cell(spec, storage)
    save_state(storage, SweepState(
        name="mini", grid_name="mini", grid_source="(test)", grid={}, cells=[PlannedCell(s, 0.0) for s in specs],
        skipped=[], tracking_uri=f"sqlite:///{storage / 'mlflow.db'}",
        resources=Resources()))
    return storage, specs


@pytest.fixture(scope="session")
def analysed(smoke_sweep, tmp_path_factory, lnsub_cli):
    """Every analysis on the smoke sweep, once a session, as `lnsub study` runs them (in one process, the θ0 jobs and
    the transfer jobs on one private Ray); transfer (NER) with one job killed mid-training once. The command line is
    run where it adds something: `lnsub tickets` and `lnsub transfer` again (all done: they only read and tabulate),
    and `lnsub report` (its printed path)."""
    lnsub = lnsub_cli
    cwd, sweep = smoke_sweep
    out = {"cwd": cwd, "lnsub": lnsub}
    assert sweep.returncode == 0, sweep.stdout[-3000:]
    storage = cwd / "lnsub-runs"
    out["storage"] = storage
    specs = load_state(storage, "smoke").specs
    jobs = plan_jobs(specs, SMOKE_LEVEL, ["ner"])
    victim = next(j for j in jobs if j.source == "syn-ur" and j.target.language == "syn-en")
    folder = tmp_path_factory.mktemp("crash")
    marker = folder / "crashed"
    sigint = signal.getsignal(signal.SIGINT)
    # the fault plan is set before Ray starts: the instance hands it to its workers (a transfer job's id: no θ0 job's)
    os.environ[faults.ENV] = str(faults.write_plan(folder / "faults.json", [
        {"unit": victim.id, "step": 6, "action": "crash", "marker": str(marker)}]))
    try:
        with held_ray(session_file(storage, "study-smoke")):
            out["theta0"] = tickets("smoke", str(storage))  # θ0 scores, which analyze's tickets read
            out["transfer"] = transfer("smoke", str(storage), SMOKE_LEVEL, tasks=["ner"], checkpoint_every=4)
    finally:
        os.environ.pop(faults.ENV)
    out["sigint"] = (sigint, signal.getsignal(signal.SIGINT))  # Ray Tune ran in this process: whose Ctrl-C now?
    out.update(jobs=jobs, victim=victim, marker=marker)
    out["tickets"] = lnsub("tickets", "--name", "smoke", cwd=cwd)
    out["analyze"] = analyze("smoke", str(storage))
    out["rerun"] = lnsub("transfer", "--name", "smoke", "--level", str(SMOKE_LEVEL), "--task", "ner", cwd=cwd)
    out["similarity"] = similarity("smoke", str(storage), sentences=60)
    out["report"] = lnsub("report", "--name", "smoke", cwd=cwd)
    return out
