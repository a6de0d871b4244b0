"""What every analysis shares: opening a sweep by name, its analysis folder, tidy CSV in and out."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from trainables.atomic import write_text
from trainables.spec import CellSpec


@dataclass
class Sweep:
    name: str
    root: Path  # --storage, resolved
    state: dict  # sweep.json
    specs: list[CellSpec]
    tracking_uri: str
    analysis: Path  # --out, or <storage>/sweeps/<name>/analysis; each analysis writes a subfolder of it

    def folder(self, kind: str) -> Path:
        path = self.analysis / kind
        path.mkdir(parents=True, exist_ok=True)
        return path


def open_sweep(name: str, storage: str, tracking_uri: str | None = None, out: str | None = None) -> Sweep:
    """A sweep as `lnsub sweep` left it in storage (one clear line if there is none)."""
    from orchestrator.sweep import check_storage, load_state, state_specs, sweep_dir, tracking_uri_of

    root = check_storage(storage)
    state = load_state(root, name)
    analysis = Path(out).resolve() if out else sweep_dir(root, name) / "analysis"
    return Sweep(name, root, state, state_specs(state), tracking_uri_of(state, tracking_uri), analysis)


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
