"""`lnsub transfer`: how well one language's sub-network trains another's task (docs/method.md, transfer matrix).

For a sweep and an IMP level, one job per (source mask, target language) within a
task, per seed: every language's ticket (the diagonal is the target's own), a
random mask and θ0's one-shot magnitude mask of the same sparsity, and, with
--cross-task, the same language's ticket from each other task. The jobs run as a
Ray Tune sweep with the same fault tolerance as `lnsub sweep`; each job is
idempotent in <storage>/transfer/<job id>/, so rerunning the command resumes it.

Outputs in <analysis folder>/transfer/: the scores a(s,t) (tidy), the matrix of
a(s,t) - a(t,t) with which transfers succeed (within one std of a(t,t) over seeds,
or within TICKET_TOLERANCE of it with one seed), the mean relative drop per source,
and one heatmap per task.
"""

from __future__ import annotations

import logging
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lnsub.analysis.analyze import TICKET_TOLERANCE, cells_by_task_seed
from lnsub.analysis.figures import delta_heatmap
from lnsub.analysis.results import AnalysisResult, TransferOutcome
from lnsub.analysis.sweeps import Sweep, open_sweep, sweep_dir
from lnsub.analysis.tables import write_csv
from lnsub.trainables import transfer_job
from lnsub.trainables.errors import LnsubError
from lnsub.trainables.ids import stable_id
from lnsub.trainables.metrics import SCORE
from lnsub.trainables.spec import CellSpec
from lnsub.trainables.storage import Storage
from lnsub.trainables.storage.layout import ONESHOT_PRETRAINED
from lnsub.trainables.store import CellStore
from lnsub.trainables.tasks import get_task
from lnsub.trainables.transfer_job import STEPS_FACTOR, TransferJob

log = logging.getLogger(__name__)
RANDOM, ONESHOT = "random", "one-shot θ0"


def plan_jobs(specs: list[CellSpec], level: int, tasks: list[str] | None = None,
              cross_task: bool = False) -> list[TransferJob]:
    """Every (source, target) job of the given tasks at IMP level `level`, per seed."""
    cells = cells_by_task_seed(specs)
    known = sorted({s.task for s in specs})
    for t in tasks or []:
        if t not in known:
            raise LnsubError(f"--task {t}: the sweep has no {t} cells (it has {', '.join(known)})")
    jobs = []
    for (task, seed), by_lang in sorted(cells.items()):
        if tasks and task not in tasks:
            continue
        for target_lang, target in sorted(by_lang.items()):
            if not 1 <= level <= target.levels:
                raise LnsubError(f"--level {level}: cell {target.id} has levels 1..{target.levels} "
                                 f"(level 0 is the dense model)")
            sparsity = target.sparsities[level]
            row = dict(target_cell=target.to_dict(), level=level, sparsity=sparsity)
            for source_lang, source in sorted(by_lang.items()):
                jobs.append(TransferJob("ticket", source_lang, source.to_dict(), **row))
            jobs.append(TransferJob("random", RANDOM, None, **row))
            jobs.append(TransferJob("oneshot", ONESHOT, None, **row))
            if cross_task:
                for other in known:
                    source = cells.get((other, seed), {}).get(target_lang)
                    if other == task or source is None:
                        continue
                    if source.levels < level or abs(source.sparsities[level] - sparsity) > 1e-9:
                        raise LnsubError(f"--cross-task: {other} cells have no level {level} at {sparsity:.0%} "
                                         f"sparsity")
                    jobs.append(TransferJob("ticket", f"{other} mask", source.to_dict(), **row))
    if not jobs:
        raise LnsubError("no transfer jobs: the sweep has no cells for the chosen --task")
    return jobs


def check_sources(storage: Storage, jobs: list[TransferJob]) -> None:
    """Every source mask must exist before anything is scheduled (one line naming what is missing)."""
    missing = set()
    for job in jobs:
        if job.kind == "ticket":
            source = CellSpec.from_dict(job.source_cell)
            if not CellStore(storage, source).level_done(job.level):
                missing.add(source.id)
        elif job.kind == "oneshot":
            if not CellStore(storage, job.target).has_baseline(ONESHOT_PRETRAINED, job.sparsity):
                missing.add(f"{job.target.id} (one-shot θ0 baseline)")
    if missing:
        level = jobs[0].level
        raise LnsubError(f"{len(missing)} source(s) have no mask at level {level} yet: "
                         f"{', '.join(sorted(missing)[:4])}{' ...' if len(missing) > 4 else ''}; "
                         f"finish the sweep first (lnsub sweep --name ... --resume)")


def plan_id(jobs: list[TransferJob]) -> str:
    return stable_id(sorted(j.id for j in jobs), transfer_job.SCHEMA, prefix="plan-", length=12)


# --- the tables ---------------------------------------------------------------------------------

@dataclass
class Cellwise:
    score: float  # mean over seeds
    scores: list[float]


def _scores(storage: Storage, jobs: list[TransferJob]) -> tuple[list[dict], dict]:
    """Tidy per-job rows, and {(task, source, target): Cellwise} averaged over seeds."""
    rows, grouped = [], defaultdict(list)
    for job in jobs:
        if not transfer_job.finished(storage, job):
            continue
        r = transfer_job.result(storage, job)
        rows.append({"task": r["task"], "source": job.source, "source_kind": job.kind, "target": r["target"],
                     "seed": r["seed"], "level": job.level, "sparsity": job.sparsity, "density": r["density"],
                     "metric": r["metric"], "score": r["score"], "job": job.id})
        grouped[(r["task"], job.source, r["target"])].append(r["score"])
    return rows, {k: Cellwise(statistics.fmean(v), v) for k, v in grouped.items()}


def transfer_tables(storage: Storage, jobs: list[TransferJob]) -> dict[str, list[dict]]:
    """scores (per job), matrix (a(s,t) - a(t,t) and success) and summary (per source) rows."""
    score_rows, cells = _scores(storage, jobs)
    matrix, summary = [], []
    for task in sorted({k[0] for k in cells}):
        greater = get_task(task).greater_is_better
        targets = sorted({t for (tk, _, t) in cells if tk == task})
        sources = list(dict.fromkeys(j.source for j in jobs if j.target.task == task))
        for source in sources:
            drops = []
            successes = 0
            for target in targets:
                own, got = cells.get((task, target, target)), cells.get((task, source, target))
                if own is None or got is None:
                    continue
                if len(own.scores) >= 2:
                    slack, rule = statistics.stdev(own.scores), "one std over seeds"
                else:
                    slack, rule = TICKET_TOLERANCE * abs(own.score), f"{TICKET_TOLERANCE:.0%} (one seed)"
                delta = got.score - own.score
                ok = delta >= -slack - 1e-12 if greater else delta <= slack + 1e-12
                relative = delta / own.score if own.score else float("nan")
                matrix.append({"task": task, "source": source, "target": target, "a_st": got.score,
                               "a_tt": own.score, "delta": delta, "relative": relative, "slack": slack,
                               "rule": rule, "success": bool(ok), "seeds": len(got.scores),
                               "greater_is_better": greater})
                if source != target:
                    drops.append(relative)
                    successes += bool(ok)
            if drops:
                summary.append({"task": task, "source": source, "targets": len(drops),
                                "mean_relative_drop": float(np.mean(drops)), "successes": successes})
    return {"scores": score_rows, "matrix": matrix, "summary": summary}


def head_carryover(storage: Storage, jobs: list[TransferJob]) -> list[dict]:
    """The IMP ticket's score (its head carried over from level to level, so trained once per level)
    against the same mask trained on the same schedule with a fresh head: the diagonal job a(t,t).

    Their difference is what the head's extra rounds of training add to the IMP curve at this sparsity,
    not the mask: IMP scores that rise with sparsity can be this artefact (docs/method.md keeps the
    carried head, as the paper does; this makes it visible). Only where both train on the same schedule.
    """
    rows = []
    for job in jobs:
        if job.kind != "ticket" or job.source != job.target.language or STEPS_FACTOR.get(job.target.task, 1.0) != 1.0:
            continue
        if not transfer_job.finished(storage, job):
            continue
        target = job.target
        store = CellStore(storage, target)
        if not store.level_done(job.level):
            continue
        carried = store.metrics(job.level)[SCORE]
        fresh = transfer_job.result(storage, job)["score"]
        rows.append({"task": target.task, "language": target.language, "seed": target.seed, "level": job.level,
                     "sparsity": job.sparsity, "carried_head": carried, "fresh_head": fresh,
                     "difference": carried - fresh, "greater_is_better": get_task(target.task).greater_is_better})
    return rows


def heatmaps(matrix: list[dict], folder: Path, level: int, sparsity: dict[str, float]) -> list[Path]:
    paths = []
    for task in sorted({r["task"] for r in matrix}):
        rows = [r for r in matrix if r["task"] == task]
        sources = list(dict.fromkeys(r["source"] for r in rows))
        targets = sorted({r["target"] for r in rows})
        index = {(r["source"], r["target"]): r for r in rows}
        grid = np.full((len(sources), len(targets)), np.nan)
        ok = [[False] * len(targets) for _ in sources]
        for i, s in enumerate(sources):
            for j, t in enumerate(targets):
                if (s, t) in index:
                    grid[i, j] = index[(s, t)]["delta"]
                    ok[i][j] = index[(s, t)]["success"]
        metric = get_task(task).metric
        greater = get_task(task).greater_is_better
        flipped = "" if greater else ", sign flipped: up = better"
        paths.append(delta_heatmap(
            grid if greater else -grid, sources, targets,
            f"{task}: transfer at {sparsity[task]:.0%} sparsity ({metric}{flipped})\n"
            f"* = within one std of the target's own ticket",
            folder / f"transfer_{task}_level{level}.png", success=ok,
            label="a(s,t) - a(t,t)" if greater else "a(t,t) - a(s,t)"))
    return paths


# --- the analysis: plan, then (after the orchestrator ran the jobs) tabulate -------------------------

@dataclass
class TransferPlan:
    sweep: Sweep
    level: int
    tasks: list[str] | None
    cross_task: bool
    jobs: list[TransferJob]
    experiment: Path  # where the scheduler keeps its state for exactly this set of jobs

    @property
    def pending(self) -> list[TransferJob]:
        return [j for j in self.jobs if not transfer_job.finished(self.sweep.storage, j)]

    def done(self) -> int:
        return sum(transfer_job.finished(self.sweep.storage, j) for j in self.jobs)


def plan(name: str, storage: str, level: int, tracking_uri: str | None = None, out: str | None = None,
         tasks: list[str] | None = None, cross_task: bool = False) -> TransferPlan:
    """The jobs of `lnsub transfer`, checked against storage before anything is scheduled."""
    sweep = open_sweep(name, storage, tracking_uri, out)
    jobs = plan_jobs(sweep.specs, level, tasks, cross_task)
    check_sources(sweep.storage, jobs)
    experiment = sweep_dir(sweep.storage, name) / "transfer" / plan_id(jobs)
    return TransferPlan(sweep, level, tasks, cross_task, jobs, experiment)


def tabulate(p: TransferPlan) -> AnalysisResult:
    """The transfer tables and heatmaps of whatever jobs have finished."""
    folder = p.sweep.folder("transfer")
    tables = {**transfer_tables(p.sweep.storage, p.jobs), "head": head_carryover(p.sweep.storage, p.jobs)}
    for kind, rows in tables.items():
        write_csv(folder / f"transfer_{kind}_level{p.level}.csv", rows)
    heatmaps(tables["matrix"], folder, p.level, {j.target.task: j.sparsity for j in p.jobs})
    done = p.done()
    metrics = {f"mean_relative_drop/{r['task']}/{_metric_name(r['source'])}": r["mean_relative_drop"]
               for r in tables["summary"]}
    params = {"level": p.level, "tasks": ",".join(p.tasks or []) or "all", "cross_task": p.cross_task,
              "jobs": len(p.jobs), "jobs_done": done}
    p.sweep.publish(folder)
    return AnalysisResult(f"transfer-level{p.level}", p.sweep, folder, params=params, metrics=metrics,
                          transfer=TransferOutcome(len(p.jobs), done, tables["summary"]))


def _metric_name(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
