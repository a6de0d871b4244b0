"""The analysis commands as the CLI runs them: compute (analysis), schedule (transfer jobs on Ray), log to MLflow.

`analysis` computes from storage and never touches Ray or MLflow; this module adds
the two: the transfer jobs go through `jobs.run_jobs` like a sweep's cells, and every
analysis's files are logged to its MLflow run (a tracking store that is down costs a
warning, never the files).
"""

from __future__ import annotations

from typing import Callable

from lnsub.analysis import transfer as transfer_analysis
from lnsub.analysis.analyze import analyze as overlap_analysis
from lnsub.analysis.report import report as report_analysis
from lnsub.analysis.similarity_job import similarity as similarity_analysis
from lnsub.analysis.tables import AnalysisResult
from lnsub.orchestrator.jobs import Batch, placement_for, prepare_testbed, run_jobs
from lnsub.orchestrator.tracking import try_log_analysis
from lnsub.trainables import transfer as jobs_io
from lnsub.trainables.errors import LnsubError
from lnsub.trainables.sweep_state import FAILURES_DIR, check_storage, load_state


def log(result: AnalysisResult) -> AnalysisResult:
    sweep = result.sweep
    try_log_analysis(sweep.name, sweep.root, sweep.tracking_uri, result.kind, result.folder,
                     params=result.params, metrics=result.metrics)
    return result


def analyze(name: str, storage: str, tracking_uri: str | None = None, out: str | None = None) -> AnalysisResult:
    result = overlap_analysis(name, storage, tracking_uri, out)
    return log(result)


def similarity(name: str, storage: str, tracking_uri: str | None = None, out: str | None = None,
               level: int | None = None, sentences: int = 200) -> AnalysisResult:
    if level is not None:  # before anything is built or loaded
        levels = min(s.levels for s in load_state(check_storage(storage), name).specs)
        if not 1 <= level <= levels:
            raise LnsubError(f"--level {level}: the sweep's sub-networks are levels 1..{levels} (level 0 is dense)")
    result = similarity_analysis(name, storage, tracking_uri, out, level, sentences)
    return log(result)


def report(name: str, storage: str, tracking_uri: str | None = None, out: str | None = None,
           control: str | None = None) -> AnalysisResult:
    result = report_analysis(name, storage, tracking_uri, out, control)
    return log(result)


def transfer(name: str, storage: str, level: int, tracking_uri: str | None = None, out: str | None = None,
             tasks: list[str] | None = None, cross_task: bool = False, max_concurrent: int | None = None,
             address: str | None = None, max_failures: int = 3, checkpoint_every: int = 100,
             render: Callable[[int, int], None] | None = None) -> AnalysisResult:
    """Plan, run (or resume) and tabulate the transfer jobs; errors of failed jobs in result.extra["errors"]."""
    p = transfer_analysis.plan(name, storage, level, tracking_uri, out, tasks, cross_task)
    pending = p.pending
    errors: dict[str, str | None] = {}
    if pending:
        prepare_testbed(p.sweep.specs)
        res = p.sweep.state.resources
        batch = Batch("transfer", [{"id": j.id, "job": j.to_dict()} for j in pending], f"transfer-{p.experiment.name}",
                      p.experiment / FAILURES_DIR, p.sweep.root)
        draw = render or (lambda done, total: None)

        def progress() -> None:
            jobs_io.pull_results(p.sweep.root)
            draw(sum(jobs_io.finished(p.sweep.root, j) for j in p.jobs), len(p.jobs))

        errors = run_jobs(batch, placement_for(p.sweep.specs, 1, res["cpus_per_worker"], res["gpus_per_worker"]),
                          address=address,
                          max_concurrent=max_concurrent, max_failures=max_failures,
                          checkpoint_every=checkpoint_every,
                          watch=progress)
        jobs_io.pull_results(p.sweep.root)
    result = transfer_analysis.tabulate(p)
    result.extra["errors"] = {k: v for k, v in errors.items() if v}
    return log(result)
