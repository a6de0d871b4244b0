"""Tickets from θ0: each level's mask trained from θ0 with a fresh head, the score the winning-ticket rule reads.

An IMP round's score is the wrong one for that rule: the task head is not rewound, so at level L it has
trained L + 1 rounds, and the scores rise with sparsity for the head's sake, not the mask's. docs/method.md
defines a ticket as a mask whose sub-network, *trained from θ0*, scores within one std of the full model:
that is exactly the transfer matrix's diagonal (trainables/transfer_job.py with the cell as its own source),
at every level 0..L (level 0, the all-ones mask, is the full model on the same schedule). The jobs share
their ids with the transfer matrix's diagonal, so a level that `lnsub transfer` ran is not run again, and
level 0 of a task whose sub-network training is discovery's schedule (NER, XNLI) takes the IMP round's record:
the same training from θ0, figure for figure (trainables/transfer_job.py, repeats_imp_level_0).
The orchestrator runs them (orchestrator/analyses.py `tickets`); this module plans them and reads their scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lnsub.analysis.results import AnalysisResult
from lnsub.analysis.sweeps import Sweep, open_sweep, sweep_dir
from lnsub.analysis.tables import write_csv
from lnsub.trainables import transfer_job
from lnsub.trainables.ids import stable_id
from lnsub.trainables.metrics import SCORE
from lnsub.trainables.spec import CellSpec
from lnsub.trainables.storage import Storage
from lnsub.trainables.store import CellStore
from lnsub.trainables.transfer_job import TransferJob

THETA0 = "θ0"  # the winning-ticket table's score source: each level's mask trained from θ0 with a fresh head
ROUND = "IMP round"  # the head-carried score of the IMP round that ended at the level
SOURCE_TEXT = {THETA0: "each level's mask trained from θ0 with a fresh head (the transfer matrix's diagonal)",
               ROUND: "the IMP round's score (the task head carried over, trained level + 1 rounds)"}


def theta0_job(spec: CellSpec, level: int) -> TransferJob:
    """The diagonal transfer job of a cell at a level: its own mask, trained from θ0 with a fresh head."""
    cell = spec.to_dict()
    return TransferJob("ticket", spec.language, cell, target_cell=cell, level=level, sparsity=spec.sparsities[level])


def theta0_jobs(specs: list[CellSpec]) -> list[TransferJob]:
    """Every cell's θ0 job at every level 0..levels."""
    return [theta0_job(spec, level) for spec in specs for level in range(spec.levels + 1)]


def theta0_score(storage: Storage, spec: CellSpec, level: int) -> float | None:
    """A level's θ0 score, or None while its job has not finished."""
    job = theta0_job(spec, level)
    return float(transfer_job.result(storage, job)[SCORE]) if transfer_job.finished(storage, job) else None


def score_rows(storage: Storage, specs: list[CellSpec]) -> list[dict]:
    """theta0_scores.csv: per cell and finished IMP level, the round score beside the θ0 score (empty if missing)."""
    rows = []
    for spec in specs:
        store = CellStore(storage, spec)
        for level in range(spec.levels + 1):
            if not store.level_done(level):
                continue
            theta0 = theta0_score(storage, spec, level)
            rows.append({"task": spec.task, "language": spec.language, "seed": spec.seed, "level": level,
                         "sparsity": spec.sparsities[level], "round_score": store.metrics(level)[SCORE],
                         "theta0_score": theta0, "cell": spec.id, "job": theta0_job(spec, level).id})
    return rows


@dataclass
class TicketPlan:
    sweep: Sweep
    jobs: list[TransferJob]  # for every finished IMP level of every cell
    experiment: Path  # where the scheduler keeps its state for exactly this set of jobs

    @property
    def pending(self) -> list[TransferJob]:
        return [j for j in self.jobs if not transfer_job.finished(self.sweep.storage, j)]


def plan(name: str, storage: str, tracking_uri: str | None = None, out: str | None = None) -> TicketPlan:
    """The θ0 jobs of a sweep's finished levels (a level IMP has not finished has no mask to train yet)."""
    sweep = open_sweep(name, storage, tracking_uri, out)
    jobs = [j for j in theta0_jobs(sweep.specs) if CellStore(sweep.storage, j.target).level_done(j.level)]
    key = stable_id(sorted(j.id for j in jobs), transfer_job.SCHEMA, prefix="tickets-", length=12)
    return TicketPlan(sweep, jobs, sweep_dir(sweep.storage, name) / "tickets" / key)


def tabulate(p: TicketPlan) -> AnalysisResult:
    """<analysis>/tickets/theta0_scores.csv from whatever jobs have finished."""
    folder = p.sweep.folder("tickets")
    rows = score_rows(p.sweep.storage, p.sweep.specs)
    write_csv(folder / "theta0_scores.csv", rows)
    done = sum(r["theta0_score"] is not None for r in rows)
    p.sweep.publish(folder)
    return AnalysisResult("tickets", p.sweep, folder, params={"jobs": len(p.jobs), "jobs_done": done},
                          metrics={"theta0_levels_missing": len(rows) - done})
