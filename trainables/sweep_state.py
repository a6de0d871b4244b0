"""A sweep as storage holds it: the typed, versioned plan (`sweep.json`) and its cells' states.

    <storage>/sweeps/<name>/sweep.json     the plan: grid, cells (id, spec, expected cost), options
    <storage>/sweeps/<name>/failures/      the last error of a cell that failed

Storage is a folder, or an object store's URI (s3://bucket/prefix, gs://...): then the
folder is this process's scratch copy of it (objectstore.py), and reading a sweep
first pulls what the store holds for it.

This is the one module that reads and writes those files; `trainables`, `analysis` and
`orchestrator` all read a sweep through it, so its keys are spelled in one place.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from lnsub.trainables import objectstore
from lnsub.trainables.atomic import read_json, remove, write_json
from lnsub.trainables.errors import LnsubError
from lnsub.trainables.metrics import LEVEL_SECONDS, METRIC, SCORE, SPARSITY
from lnsub.trainables.spec import CellSpec
from lnsub.trainables.store import CellStore

VERSION = 2  # version 1 (no "version" key) had the same fields and is read as is
STATE_FILE, FAILURES_DIR = "sweep.json", "failures"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
STATES = ("done", "running", "interrupted", "failed", "pending")


REDACTED = "***"


def redact(uri: str) -> str:
    """A URI fit to store and print: a password in it (http://user:pw@host) becomes ***."""
    parsed = urlsplit(uri)
    if parsed.password is None:
        return uri
    host = parsed.hostname or ""
    netloc = f"{parsed.username}:{REDACTED}@{host}" + (f":{parsed.port}" if parsed.port else "")
    return urlunsplit(parsed._replace(netloc=netloc))


def check_name(name: str, where: str = "sweep name") -> str:
    """A sweep's name becomes a folder under <storage>/sweeps: one plain path component, never '..' or a path."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or ".." in name:
        raise LnsubError(f"{where} {name!r}: use letters, digits, '.', '_' or '-' (at most 100, starting with a "
                         f"letter or digit, no '..')")
    return name


def check_storage(storage: str | Path) -> Path:
    """The folder to work in: a local path, or (for an object store's URI) this process's scratch copy of it."""
    storage = str(storage)
    if not storage.strip():
        raise LnsubError("--storage is empty: give a folder or an object store's URI (default ./lnsub-runs)")
    if objectstore.is_remote(storage):
        try:
            return objectstore.open_root(storage)
        except (OSError, ValueError, ImportError) as e:
            raise LnsubError(f"--storage {storage!r}: {str(e).splitlines()[0][:300]}") from e
    path = Path(storage.removeprefix("file://")).resolve()
    if path.exists() and not path.is_dir():
        raise LnsubError(f"--storage {storage!r} is a file, not a folder")
    return path


def sweep_dir(storage: str | Path, name: str) -> Path:
    return Path(storage) / "sweeps" / check_name(name)


@dataclass(frozen=True)
class PlannedCell:
    id: str
    spec: CellSpec
    cost_hours: float  # expected device-hours for the whole IMP job


@dataclass
class SweepState:
    name: str
    grid_name: str
    grid_source: str
    grid: dict
    cells: list[PlannedCell]  # longest first: the order cells start in
    skipped: list[dict]  # {"task", "language", "reason"}
    tracking_uri: str
    resources: dict  # workers_per_cell, cpus_per_worker, gpus_per_worker
    created: float = field(default_factory=time.time)
    version: int = VERSION

    @property
    def specs(self) -> list[CellSpec]:
        return [c.spec for c in self.cells]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cells"] = [{"id": c.id, "spec": c.spec.to_dict(), "cost_hours": c.cost_hours} for c in self.cells]
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = STATE_FILE) -> "SweepState":
        try:
            version = d.get("version", 1)
            if version > VERSION:
                raise LnsubError(f"{source}: written by a newer lnsub (sweep format {version}; this one reads "
                                 f"up to {VERSION})")
            cells = [PlannedCell(c["id"], CellSpec.from_dict(c["spec"]), float(c["cost_hours"])) for c in d["cells"]]
            for c in cells:
                if c.spec.id != c.id:
                    raise LnsubError(f"{source}: cell {c.id} has a spec whose id is {c.spec.id} (edited by hand, "
                                     f"or from another schema)")
            return cls(name=d["name"], grid_name=d["grid_name"], grid_source=d["grid_source"], grid=dict(d["grid"]),
                       cells=cells, skipped=list(d["skipped"]), tracking_uri=d["tracking_uri"],
                       resources=dict(d["resources"]), created=float(d.get("created", 0.0)), version=VERSION)
        except LnsubError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise LnsubError(f"{source}: not a sweep file lnsub can read ({type(e).__name__}: {e})") from e

    def tracking(self, override: str | None = None) -> str:
        """The tracking URI to use: the override, or the stored one (which never holds a password)."""
        if override:
            return override
        if REDACTED in self.tracking_uri:
            raise LnsubError(f"sweep {self.name!r} logs to {self.tracking_uri}, whose password is never stored: give "
                             f"--tracking-uri again, or set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
        return self.tracking_uri


def state_path(storage: str | Path, name: str) -> Path:
    return sweep_dir(storage, name) / STATE_FILE


def pull_sweep(storage: str | Path, name: str) -> None:
    """Bring the sweep's own files (plan, failures, analyses) from an object store; the lease is read in place."""
    objectstore.pull(sweep_dir(storage, name), exclude=("tune", "lease"))


def pull_cells(storage: str | Path, specs: list[CellSpec], skip_finished: bool = False) -> None:
    """Bring the cells' finished work (not their checkpoints) from an object store; `skip_finished` spares
    the listing of cells this copy already holds finished (a monitor asks every few seconds)."""
    if objectstore.mirror_of(storage) is None:
        return  # a local path: nothing to bring
    for spec in specs:
        store = CellStore(storage, spec)
        if not (skip_finished and store.finished()):
            store.pull()


def exists(storage: str | Path, name: str) -> bool:
    pull_sweep(storage, name)
    return state_path(storage, name).exists()


def load_state(storage: str | Path, name: str) -> SweepState:
    """The stored plan of sweep `name`: one clear line if it is missing, unreadable or damaged."""
    root = Path(storage)
    path = state_path(root, name)
    try:
        pull_sweep(root, name)
        if not root.is_dir():
            raise LnsubError(f"storage {root} does not exist or is not a folder (see --storage)")
        if not path.exists():
            raise LnsubError(f"no sweep named {name!r} in {objectstore.location_of(root)} (see --name and --storage)")
        data = read_json(path)
    except PermissionError as e:
        raise LnsubError(f"cannot read {e.filename or path}: permission denied") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LnsubError(f"{path}: damaged sweep file ({type(e).__name__}); restore it or start a new --name") from e
    if not isinstance(data, dict):
        raise LnsubError(f"{path}: damaged sweep file (not a JSON object)")
    return SweepState.from_dict(data, str(path))


def save_state(storage: str | Path, state: SweepState) -> None:
    write_json(state_path(storage, state.name), state.to_dict())


# --- where each cell stands, from storage alone ---------------------------------------------------

@dataclass
class CellStatus:
    spec: CellSpec
    state: str  # one of STATES
    levels_done: int  # levels 0.. finished (the spec's `levels` is the last one: levels + 1 in all)
    score: float | None  # the last finished level's validation metric ...
    error: str | None = None
    metric: str | None = None  # ... and its name
    sparsity: float | None = None  # that level's
    seconds: float = 0.0  # the finished levels' own wall time

    @property
    def last_level(self) -> int | None:
        """The last finished level (0: the dense model), or None before level 0 ends."""
        return self.levels_done - 1 if self.levels_done else None


def failure_note(storage: str | Path, name: str, unit_id: str) -> Path:
    """Where the last error of a failed cell (or job) of this sweep is kept."""
    return sweep_dir(storage, name) / FAILURES_DIR / f"{unit_id}.txt"


def cell_status(store: CellStore, error: str | None, driver_alive: bool) -> CellStatus:
    done = [k for k in range(store.spec.levels + 1) if store.level_done(k)]
    records = [store.metrics(k) for k in done]
    last = records[-1] if records else {}
    if store.finished():
        state = "done"
    elif error:
        state = "failed"
    elif store.has_spec():
        state = "running" if driver_alive else "interrupted"
    else:
        state = "pending"
    return CellStatus(store.spec, state, len(done), last.get(SCORE), error, last.get(METRIC), last.get(SPARSITY),
                      sum(float(r.get(LEVEL_SECONDS) or 0.0) for r in records))


def cell_statuses(storage: str | Path, state: SweepState, driver_alive: bool = False) -> list[CellStatus]:
    """Each cell's state; a started, unfinished cell is `running` only while a driver holds the sweep."""
    objectstore.pull(sweep_dir(storage, state.name) / FAILURES_DIR)
    pull_cells(storage, state.specs, skip_finished=True)
    out = []
    for spec in state.specs:
        note = failure_note(storage, state.name, spec.id)
        error = note.read_text().strip() if note.exists() else None
        out.append(cell_status(CellStore(storage, spec), error or None, driver_alive))
    return out


def status_counts(statuses: list[CellStatus]) -> dict[str, int]:
    counts = dict.fromkeys(STATES, 0)
    for s in statuses:
        counts[s.state] += 1
    return counts
