"""`lnsub study`: a grid's whole study in one command, idempotent and resumable like a sweep.

The steps, for the grid's sweep (and, with a control grid, for the control's sweep too):

    sweep -> tickets -> analyze -> transfer at each of the grid's study levels -> similarity
    then one report

tickets trains each level's mask from θ0 with a fresh head (analysis/tickets.py): the scores the winning-ticket
table and claim (c) read; analyze comes after it. (side by side with the control's claims when there is one)

Each step is idempotent on its own (cells, transfer jobs and analyses keep their state in
storage). On top of that, a finished step leaves a marker, <storage>/sweeps/<name>/study/<step>.json,
written last, naming the markers it came after: a rerun of the study skips every step whose marker
stands and whose upstream did not run again, so a killed study resumes where it stopped and a
finished step is not redone.

A grid may say which levels its transfer runs at, and for which tasks:

    study: {transfer_levels: [3, 5], transfer_tasks: [ner, xnli], control: science-control}

Without it, transfer runs at the level nearest the paper's 50% sparsity and at the grid's last level,
for every task. `steps` chooses the analyses between sweep and report (default: analyze, transfer,
similarity); a one-shot grid asks for `steps: [oneshot]` (overlap beyond θ0, transfer by evaluation,
LAPE: analysis/oneshot_study.py), since its cells train nothing to transfer or rewind.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lnsub.analysis.tables import read_csv
from lnsub.orchestrator import analyses
from lnsub.orchestrator.grid import STUDY_STEPS, plan
from lnsub.orchestrator.jobs import held_ray, session_file
from lnsub.orchestrator.sweep import DEFAULT_STORAGE, run_sweep
from lnsub.orchestrator import faults
from lnsub.trainables.errors import LnsubError
from lnsub.analysis.sweeps import SweepState, exists, load_state, open_storage, sweep_dir
from lnsub.trainables.storage import Storage, read_json

log = logging.getLogger(__name__)
STUDY_DIR = "study"
DEFAULT_STEPS = ("tickets", "analyze", "transfer", "similarity")
STEPS = STUDY_STEPS  # what a grid's study.steps may name, in the order they run (sweep and report always run)


@dataclass
class StudyResult:
    name: str
    report: str | None  # the report's path, or its URI on an object store
    claims: list[dict]
    ran: list[str] = field(default_factory=list)  # "<sweep>:<step>" run now
    skipped: list[str] = field(default_factory=list)  # ... found finished


def transfer_levels(state: SweepState) -> list[int]:
    """The grid's study levels, or the level nearest 50% sparsity and the last level."""
    study = state.grid.get("study") or {}
    if study.get("transfer_levels"):
        return sorted(set(int(k) for k in study["transfer_levels"]))
    sparsities = state.specs[0].sparsities
    nearest = min(range(1, len(sparsities)), key=lambda k: (abs(sparsities[k] - 0.5), k))
    return sorted({nearest, len(sparsities) - 1})


def study_steps(state: SweepState) -> tuple[str, ...]:
    """The grid's analysis steps, in the order they run."""
    wanted = (state.grid.get("study") or {}).get("steps") or DEFAULT_STEPS
    return tuple(step for step in STEPS if step in wanted)


def step_markers(state: SweepState, transfer: bool = True) -> list[str]:
    """The markers a sweep's analysis steps leave (one per transfer level)."""
    out = []
    for step in study_steps(state):
        if step == "transfer":
            out += [f"transfer-level{k}" for k in transfer_levels(state)] if transfer else []
        else:
            out.append(step)
    return out


def _marker(root: Storage, name: str, step: str) -> Path:
    return sweep_dir(root, name) / STUDY_DIR / f"{step}.json"


class Steps:
    """Runs a study's steps, each once: a step whose marker stands (and whose upstream did not rerun) is skipped."""

    def __init__(self, root: Storage, result: StudyResult, announce: Callable[[str], None]):
        self.root, self.result, self.announce = root, result, announce
        self.count = 0

    def run(self, name: str, step: str, after: list[tuple[str, str]], action: Callable[[], None]) -> None:
        self.count += 1
        marker = _marker(self.root, name, step)
        self.root.pull(marker.parent)
        upstream = {f"{n}:{s}": self.stamp(n, s) for n, s in after}
        if marker.exists() and read_json(marker).get("after") == upstream:
            self.result.skipped.append(f"{name}:{step}")
            self.announce(f"{name}: {step} finished before; kept")
            return
        self.announce(f"{name}: {step} ...")
        started = time.perf_counter()
        action()
        seconds = time.perf_counter() - started
        self.root.write_json(marker, {"step": step, "seconds": seconds, "finished": time.time(), "after": upstream})
        self.result.ran.append(f"{name}:{step}")
        self.announce(f"{name}: {step} done in {seconds:.0f} s")
        faults.at_step(f"study:{name}", None, self.count)  # tests: kill the study between two steps

    def stamp(self, name: str, step: str) -> float | None:
        marker = _marker(self.root, name, step)
        return read_json(marker)["finished"] if marker.exists() else None


def _sweep_steps(steps: Steps, grid: str, name: str | None, storage: str, tracking_uri: str | None,
                 address: str | None, max_concurrent: int | None, render) -> str:
    """A sweep's steps up to similarity; its name."""
    root = steps.root

    def sweep() -> None:
        result = run_sweep(None if name and exists(root, name) else grid, name=name, storage=storage,
                           tracking_uri=tracking_uri, resume=bool(name and exists(root, name)), address=address,
                           max_concurrent=max_concurrent, render=render)
        failed = {cid: err for cid, err in result.errors.items() if err}
        undone = [s.spec.id for s in result.statuses if s.state != "done"]
        if failed or undone:
            first = next(iter(failed.items()), (undone[0], "unfinished"))
            raise LnsubError(f"sweep {result.name}: {len(failed) or len(undone)} cell(s) not done ({first[0]}: "
                             f"{first[1]}); rerun lnsub study to resume it")

    name = name or _planned_name(grid)
    steps.run(name, "sweep", [], sweep)
    state = load_state(root, name)
    tasks = (state.grid.get("study") or {}).get("transfer_tasks")
    wanted = study_steps(state)
    analyze_after = [(name, "sweep")]
    if "tickets" in wanted:
        def tickets() -> None:
            _, errors = analyses.tickets(name, storage, tracking_uri, address=address, max_concurrent=max_concurrent)
            if errors:
                job, err = next(iter(errors.items()))
                raise LnsubError(f"tickets from θ0: {len(errors)} job(s) failed ({job}: {err}); rerun lnsub study "
                                 f"to resume")

        steps.run(name, "tickets", [(name, "sweep")], tickets)
        analyze_after.append((name, "tickets"))
    if "analyze" in wanted:
        steps.run(name, "analyze", analyze_after, lambda: analyses.analyze(name, storage, tracking_uri))
    for level in transfer_levels(state) if "transfer" in wanted else []:
        def transfer(level=level) -> None:
            result = analyses.transfer(name, storage, level, tracking_uri, tasks=tasks, address=address,
                                       max_concurrent=max_concurrent)
            if result.transfer.errors:
                job, err = next(iter(result.transfer.errors.items()))
                raise LnsubError(f"transfer at level {level}: {len(result.transfer.errors)} job(s) failed ({job}: "
                                 f"{err}); rerun lnsub study to resume")
        steps.run(name, f"transfer-level{level}", [(name, "sweep")], transfer)
    if "similarity" in wanted:
        steps.run(name, "similarity", [(name, "sweep")], lambda: analyses.similarity(name, storage, tracking_uri))
    if "oneshot" in wanted:
        steps.run(name, "oneshot", [(name, "sweep")], lambda: analyses.oneshot(name, storage, tracking_uri))
    return name


def _planned_name(grid: str) -> str:
    return plan(grid).name


def run_study(grid: str, name: str | None = None, storage: str = DEFAULT_STORAGE, tracking_uri: str | None = None,
              control: str | None = None, address: str | None = None, max_concurrent: int | None = None,
              announce: Callable[[str], None] | None = None, render=None) -> StudyResult:
    """Run (or resume) the grid's study, and its control's with `control` (a grid); the report's path and claims."""
    root = open_storage(storage)
    announce = announce or (lambda text: log.info("%s", text))
    result = StudyResult(name or "", None, [])
    steps = Steps(root, result, announce)
    name = name or _planned_name(grid)
    with held_ray(session_file(root, f"study-{name}")):  # one private Ray for every step that runs jobs
        _sweep_steps(steps, grid, name, storage, tracking_uri, address, max_concurrent, render)
        control = control or ((load_state(root, name).grid.get("study") or {}).get("control"))
        upstream = [(name, s) for s in step_markers(load_state(root, name))]
        control_name = None
        if control:
            control_name = _sweep_steps(steps, control, None, storage, tracking_uri, address, max_concurrent, render)
            upstream += [(control_name, s) for s in step_markers(load_state(root, control_name), transfer=False)]

        def report() -> None:
            analyses.report(name, storage, tracking_uri, control=control_name)

        steps.run(name, "report" if not control_name else f"report-vs-{control_name}", upstream, report)
    folder = sweep_dir(root, name) / "analysis" / "report"
    root.pull(folder)
    result.name, result.report = name, f"{root.location}/sweeps/{name}/analysis/report/report.html"
    result.claims = read_csv(folder / "claims.csv")
    return result


def study_markers(storage: str, name: str) -> dict[str, dict]:
    """Every finished step of a study, by step (tests and `lnsub status` read them)."""
    root = open_storage(storage)
    folder = sweep_dir(root, name) / STUDY_DIR
    root.pull(folder)
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}
