"""What an analysis hands back: the files it wrote and what the orchestrator logs of it to MLflow, typed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lnsub.analysis.sweeps import Sweep


@dataclass
class TransferOutcome:
    """What `lnsub transfer` ran and found: jobs planned and finished, the failed ones, and the summary rows."""

    jobs: int
    done: int
    summary: list[dict]  # per task and source: the mean relative drop and the successes
    errors: dict[str, str] = field(default_factory=dict)  # job id -> its root cause, for jobs that failed


@dataclass
class AnalysisResult:
    """What an analysis wrote (its folder) and what is logged of it (params, metrics)."""

    kind: str  # the MLflow role: overlap, transfer-level<L>, similarity, report
    sweep: Sweep
    folder: Path
    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    report: Path | None = None  # the report's page (lnsub report)
    claims: list[dict] = field(default_factory=list)  # the claims table's rows (lnsub report)
    transfer: TransferOutcome | None = None  # lnsub transfer
    skipped: dict = field(default_factory=dict)  # languages left out, with the reason (lnsub similarity)
