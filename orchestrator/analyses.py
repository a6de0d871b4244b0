"""The analysis commands as the CLI runs them: compute (analysis), schedule (transfer jobs on Ray), log to MLflow.

`analysis` computes from storage and never touches Ray or MLflow; this module adds
the two: the transfer jobs go through `jobs.run_jobs` like a sweep's cells, and every
analysis's files are logged to its MLflow run (a tracking store that is down costs a
warning, never the files).
"""

from __future__ import annotations

from typing import Callable

from lnsub.analysis import tickets as ticket_analysis
from lnsub.analysis import transfer_matrix as transfer_analysis
from lnsub.analysis.analyze import analyze as overlap_analysis
from lnsub.analysis.oneshot_study import oneshot as oneshot_analysis
from lnsub.analysis.report import report as report_analysis
from lnsub.analysis.representations import similarity as similarity_analysis
from lnsub.analysis.results import AnalysisResult
from lnsub.analysis.sweeps import FAILURES_DIR, load_state, open_storage
from lnsub.trainables.checkpointing import DEFAULT_CHECKPOINT_EVERY
from lnsub.orchestrator.jobs import Batch, reusable, run_jobs
from lnsub.orchestrator.ray_backend import JobKind
from lnsub.orchestrator.tracking import try_log_analysis
from lnsub.trainables import providers, transfer_job
from lnsub.trainables.errors import LnsubError


def log(result: AnalysisResult) -> AnalysisResult:
    sweep = result.sweep
    try_log_analysis(sweep.name, sweep.storage, sweep.tracking_uri, result.kind, result.folder,
                     params=result.params, metrics=result.metrics)
    return result


def analyze(name: str, storage: str, tracking_uri: str | None = None, out: str | None = None) -> AnalysisResult:
    result = overlap_analysis(name, storage, tracking_uri, out)
    return log(result)


def oneshot(name: str, storage: str, tracking_uri: str | None = None, out: str | None = None) -> AnalysisResult:
    return log(oneshot_analysis(name, storage, tracking_uri, out))


def similarity(name: str, storage: str, tracking_uri: str | None = None, out: str | None = None,
               level: int | None = None, sentences: int = 200) -> AnalysisResult:
    if level is not None:  # before anything is built or loaded
        levels = min(s.levels for s in load_state(open_storage(storage), name).specs)
        if not 1 <= level <= levels:
            raise LnsubError(f"--level {level}: the sweep's sub-networks are levels 1..{levels} (level 0 is dense)")
    result = similarity_analysis(name, storage, tracking_uri, out, level, sentences)
    return log(result)


def report(name: str, storage: str, tracking_uri: str | None = None, out: str | None = None,
           control: str | None = None) -> AnalysisResult:
    result = report_analysis(name, storage, tracking_uri, out, control)
    return log(result)


def _run_transfer_jobs(sweep, pending: list, jobs: list, experiment, batch_name: str, address: str | None,
                       max_concurrent: int | None, max_failures: int, checkpoint_every: int,
                       render: Callable[[int, int], None] | None) -> dict[str, str | None]:
    """Run (or resume) transfer jobs through `run_jobs`, as Tune trials; each job's root cause if it failed."""
    if not pending:
        return {}
    providers.prepare(sweep.specs)  # the driver builds what the jobs load, before any trial
    storage = sweep.storage
    # a transfer job trains on one worker whatever its cells used
    resources = sweep.state.resources.with_overrides(workers_per_cell=1)
    batch = Batch(JobKind.TRANSFER, [{"id": j.id, "job": j.to_dict()} for j in pending], batch_name,
                  experiment / FAILURES_DIR, storage, resources, reuse_processes=reusable(sweep.specs))
    draw = render or (lambda done, total: None)

    def progress() -> None:
        transfer_job.pull_results(storage)
        draw(sum(transfer_job.finished(storage, j) for j in jobs), len(jobs))

    errors = run_jobs(batch, address=address, max_concurrent=max_concurrent, max_failures=max_failures,
                      checkpoint_every=checkpoint_every, watch=progress)
    transfer_job.pull_results(storage)
    return {k: v for k, v in errors.items() if v}


def transfer(name: str, storage: str, level: int, tracking_uri: str | None = None, out: str | None = None,
             tasks: list[str] | None = None, cross_task: bool = False, max_concurrent: int | None = None,
             address: str | None = None, max_failures: int = 3, checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
             render: Callable[[int, int], None] | None = None) -> AnalysisResult:
    """Plan, run (or resume) and tabulate the transfer jobs; failed jobs' root causes in result.transfer.errors."""
    p = transfer_analysis.plan(name, storage, level, tracking_uri, out, tasks, cross_task)
    errors = _run_transfer_jobs(p.sweep, p.pending, p.jobs, p.experiment, f"transfer-{p.experiment.name}", address,
                                max_concurrent, max_failures, checkpoint_every, render)
    result = transfer_analysis.tabulate(p)
    result.transfer.errors = errors
    return log(result)


def tickets(name: str, storage: str, tracking_uri: str | None = None, out: str | None = None,
            max_concurrent: int | None = None, address: str | None = None, max_failures: int = 3,
            checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY, render: Callable[[int, int], None] | None = None
            ) -> tuple[AnalysisResult, dict[str, str]]:
    """Run (or resume) every finished level's θ0 job (analysis/tickets.py) through the job runner and write
    theta0_scores.csv; the result, and failed jobs' root causes. `lnsub analyze` reads the scores."""
    p = ticket_analysis.plan(name, storage, tracking_uri, out)
    errors = _run_transfer_jobs(p.sweep, p.pending, p.jobs, p.experiment, f"tickets-{p.experiment.name}", address,
                                max_concurrent, max_failures, checkpoint_every, render)
    return log(ticket_analysis.tabulate(p)), errors
