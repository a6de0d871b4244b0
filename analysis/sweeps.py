"""A sweep as storage holds it: the typed, versioned plan (`sweep.json`), its cells' states, and the sweep opened
for analysis.

    <storage>/sweeps/<name>/sweep.json     the plan: grid, cells (spec, expected cost), resources, options
    <storage>/sweeps/<name>/failures/      a failed cell's last error (<id>.txt, one line) and its traceback
    <storage>/sweeps/<name>/analysis/      what the analyses write (one folder each)

This is the one module that reads and writes those files; the analyses and the orchestrator both read a
sweep through it, so its keys are spelled in one place. A sweep's bookkeeping is not a cell's work: the
cells (trainables) know nothing of sweeps.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from lnsub.trainables.errors import LnsubError
from lnsub.trainables.ids import coerce
from lnsub.trainables.metrics import LEVEL_SECONDS, METRIC, SCORE, SPARSITY
from lnsub.trainables.spec import CellSpec
from lnsub.trainables.storage import Storage, read_json
from lnsub.trainables.storage.layout import SWEEPS
from lnsub.trainables.storage.remote import is_remote
from lnsub.trainables.store import CellStore, pull_transfer_results

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


def open_storage(storage: "str | Path | Storage") -> Storage:
    """The storage a command names (--storage): a folder, or an object store's URI; one line if it is unusable."""
    if isinstance(storage, Storage):
        return storage
    text = str(storage)
    if not text.strip():
        raise LnsubError("--storage is empty: give a folder or an object store's URI (default ./lnsub-runs)")
    if is_remote(text):
        try:
            return Storage.open(text)
        except (OSError, ValueError, ImportError) as e:
            raise LnsubError(f"--storage {text!r}: {str(e).splitlines()[0][:300]}") from e
    path = Path(text.removeprefix("file://")).resolve()
    if path.exists() and not path.is_dir():
        raise LnsubError(f"--storage {text!r} is a file, not a folder")
    return Storage.open(path)


def sweep_dir(storage: "Storage | str | Path", name: str) -> Path:
    return open_storage(storage).path(SWEEPS, check_name(name))


@dataclass(frozen=True)
class Resources:
    """What one cell (or job) asks of the cluster: its workers, each with CPUs and GPUs."""

    workers_per_cell: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    def with_overrides(self, **overrides) -> "Resources":
        """These resources with the command line's values where it gave one."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class PlannedCell:
    spec: CellSpec
    cost_hours: float  # expected device-hours for the whole IMP job, on one worker

    @property
    def id(self) -> str:
        return self.spec.id


@dataclass
class SweepState:
    name: str
    grid_name: str
    grid_source: str
    grid: dict
    cells: list[PlannedCell]  # longest first: the order cells start in
    skipped: list[dict]  # {"task", "language", "reason"}
    tracking_uri: str
    resources: Resources
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
            cells = [PlannedCell(CellSpec.from_dict(c["spec"]), float(c["cost_hours"])) for c in d["cells"]]
            for c, stored in zip(cells, d["cells"]):
                if c.spec.id != stored["id"]:
                    raise LnsubError(f"{source}: cell {stored['id']} has a spec whose id is {c.spec.id} (edited by "
                                     f"hand, or from another schema)")
            return cls(name=d["name"], grid_name=d["grid_name"], grid_source=d["grid_source"], grid=dict(d["grid"]),
                       cells=cells, skipped=list(d["skipped"]), tracking_uri=d["tracking_uri"],
                       resources=Resources(**coerce(Resources, dict(d["resources"]))),
                       created=float(d.get("created", 0.0)), version=VERSION)
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


def state_path(storage: "Storage | str | Path", name: str) -> Path:
    return sweep_dir(storage, name) / STATE_FILE


def pull_sweep(storage: Storage, name: str) -> None:
    """Bring the sweep's own files (plan, failures, analyses) from an object store; the lease is read in place."""
    storage.pull(sweep_dir(storage, name), exclude=("tune", "lease"))


def pull_cells(storage: Storage, specs: list[CellSpec], skip_finished: bool = False) -> None:
    """Bring the cells' finished work (not their checkpoints) from an object store; `skip_finished` spares
    the listing of cells this copy already holds finished (a monitor asks every few seconds)."""
    if not storage.remote:
        return  # a folder: nothing to bring
    for spec in specs:
        store = CellStore(storage, spec)
        if not (skip_finished and store.finished()):
            store.pull()


def exists(storage: "Storage | str | Path", name: str) -> bool:
    storage = open_storage(storage)
    pull_sweep(storage, name)
    return state_path(storage, name).exists()


def load_state(storage: "Storage | str | Path", name: str) -> SweepState:
    """The stored plan of sweep `name`: one clear line if it is missing, unreadable or damaged."""
    storage = open_storage(storage)
    path = state_path(storage, name)
    try:
        pull_sweep(storage, name)
        if not storage.root.is_dir():
            raise LnsubError(f"storage {storage.location} does not exist or is not a folder (see --storage)")
        if not path.exists():
            raise LnsubError(f"no sweep named {name!r} in {storage.location} (see --name and --storage)")
        data = read_json(path)
    except PermissionError as e:
        raise LnsubError(f"cannot read {e.filename or path}: permission denied") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LnsubError(f"{path}: damaged sweep file ({type(e).__name__}); restore it or start a new --name") from e
    if not isinstance(data, dict):
        raise LnsubError(f"{path}: damaged sweep file (not a JSON object)")
    return SweepState.from_dict(data, str(path))


def save_state(storage: "Storage | str | Path", state: SweepState) -> None:
    storage = open_storage(storage)
    storage.write_json(state_path(storage, state.name), state.to_dict())


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


def failure_note(storage: "Storage | str | Path", name: str, unit_id: str) -> Path:
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


def cell_statuses(storage: "Storage | str | Path", state: SweepState, driver_alive: bool = False) -> list[CellStatus]:
    """Each cell's state; a started, unfinished cell is `running` only while a driver holds the sweep."""
    storage = open_storage(storage)
    storage.pull(sweep_dir(storage, state.name) / FAILURES_DIR)
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


# --- a sweep opened for its analyses --------------------------------------------------------------

@dataclass
class Sweep:
    name: str
    storage: Storage
    state: SweepState  # sweep.json
    specs: list[CellSpec]
    tracking_uri: str
    analysis: Path  # --out, or <storage>/sweeps/<name>/analysis; each analysis writes a subfolder of it

    @property
    def root(self) -> Path:
        """The folder the sweep's files are read from (on an object store, this process's copy)."""
        return self.storage.root

    def folder(self, kind: str) -> Path:
        path = self.analysis / kind
        path.mkdir(parents=True, exist_ok=True)
        return path

    def publish(self, folder: Path) -> None:
        """What an analysis wrote to `folder`, into the store (a no-op on a folder, or outside the storage)."""
        if self.storage.root in folder.parents:
            self.storage.push(folder)


def open_sweep(name: str, storage: "str | Path | Storage", tracking_uri: str | None = None,
               out: str | None = None) -> Sweep:
    """A sweep as `lnsub sweep` left it in storage (one clear line if there is none)."""
    storage = open_storage(storage)
    state = load_state(storage, name)
    pull_cells(storage, state.specs)  # an object store's cells and transfer results, into this process's copy
    pull_transfer_results(storage)
    analysis = Path(out).resolve() if out else sweep_dir(storage, name) / "analysis"
    return Sweep(name, storage, state, state.specs, state.tracking(tracking_uri), analysis)
