"""What every analysis shares: opening a sweep by name, its analysis folder, tidy CSV in and out."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from lnsub.trainables import transfer as transfer_jobs
from lnsub.trainables.atomic import write_text
from lnsub.trainables.spec import CellSpec
from lnsub.trainables.sweep_state import SweepState, check_storage, load_state, pull_cells, sweep_dir


@dataclass
class Sweep:
    name: str
    root: Path  # --storage, resolved
    state: SweepState  # sweep.json
    specs: list[CellSpec]
    tracking_uri: str
    analysis: Path  # --out, or <storage>/sweeps/<name>/analysis; each analysis writes a subfolder of it

    def folder(self, kind: str) -> Path:
        path = self.analysis / kind
        path.mkdir(parents=True, exist_ok=True)
        return path


def open_sweep(name: str, storage: str, tracking_uri: str | None = None, out: str | None = None) -> Sweep:
    """A sweep as `lnsub sweep` left it in storage (one clear line if there is none)."""
    root = check_storage(storage)
    state = load_state(root, name)
    pull_cells(root, state.specs)  # an object store's cells and transfer results, into this process's copy
    transfer_jobs.pull_results(root)
    analysis = Path(out).resolve() if out else sweep_dir(root, name) / "analysis"
    return Sweep(name, root, state, state.specs, state.tracking(tracking_uri), analysis)


@dataclass
class AnalysisResult:
    """What an analysis wrote, and what the orchestrator logs of it to MLflow (files, params, metrics)."""

    kind: str  # the MLflow role: overlap, transfer-level<L>, similarity, report
    sweep: Sweep
    folder: Path
    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # what the command prints (tables, counts)


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows of one shape as CSV, written atomically (an empty list gives an empty file)."""
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_text(path, buf.getvalue())


def read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
