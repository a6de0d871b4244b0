"""Launch, resume and inspect a sweep. Storage is the source of truth; Ray schedules, MLflow shows.

    <storage>/cells/<cell id>/...            each cell's levels (trainables.store), shared by sweeps
    <storage>/sweeps/<name>/sweep.json       the plan: grid, cells, options
    <storage>/sweeps/<name>/ray_session.json the local Ray instance a driver started (to reap after a kill)
    <storage>/sweeps/<name>/tune/            Ray Tune's experiment (restored on --resume)
    <storage>/sweeps/<name>/failures/        the last error of a cell that failed
    <storage>/mlflow.db, mlartifacts/        the default MLflow store
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.grid import validate_name
from trainables.atomic import read_json, write_json
from trainables.errors import LnsubError
from trainables.spec import TESTBED_MODEL, CellSpec
from trainables.store import CellStore

log = logging.getLogger(__name__)
DEFAULT_STORAGE = "./lnsub-runs"


def sweep_dir(storage: str | Path, name: str) -> Path:
    return Path(storage) / "sweeps" / name


def check_name(name: str) -> str:
    return validate_name(name, "--name")


def check_storage(storage: str) -> Path:
    if "://" in storage and not storage.startswith("file://"):
        raise LnsubError(f"--storage {storage!r}: cloud URIs are not supported yet; use a path on a filesystem "
                         f"every node mounts (for example an EFS or NFS mount)")
    return Path(storage.removeprefix("file://")).resolve()


def load_state(storage: str | Path, name: str) -> dict:
    path = sweep_dir(storage, check_name(name)) / "sweep.json"
    if not path.exists():
        raise LnsubError(f"no sweep named {name!r} in {Path(storage).resolve()} (see --name and --storage)")
    return read_json(path)


def state_specs(state: dict) -> list[CellSpec]:
    return [CellSpec.from_dict(c["spec"]) for c in state["cells"]]


def tracking_uri_of(state: dict, override: str | None) -> str:
    return override or state["tracking_uri"]


# --- status from storage alone -----------------------------------------------------------------

@dataclass
class CellStatus:
    spec: CellSpec
    state: str  # pending, running, done, failed
    levels_done: int
    score: float | None
    error: str | None = None


def cell_statuses(storage: str | Path, name: str, state: dict | None = None) -> list[CellStatus]:
    state = state or load_state(storage, name)
    failures = sweep_dir(storage, name) / "failures"
    out = []
    for spec in state_specs(state):
        store = CellStore(storage, spec)
        done = [k for k in range(spec.levels + 1) if store.level_done(k)]
        score = store.metrics(done[-1])["score"] if done else None
        note = failures / f"{spec.id}.txt"
        error = note.read_text().strip() if note.exists() else None
        if store.finished():
            s = "done"
        elif error:
            s = "failed"
        elif (store.root / "spec.json").exists():
            s = "running"
        else:
            s = "pending"
        out.append(CellStatus(spec, s, len(done), score, error))
    return out


def status_counts(statuses: list[CellStatus]) -> dict[str, int]:
    counts = {"done": 0, "running": 0, "failed": 0, "pending": 0}
    for s in statuses:
        counts[s.state] += 1
    return counts


# --- the sweep ----------------------------------------------------------------------------------

@dataclass
class SweepResult:
    name: str
    storage: Path
    tracking_uri: str
    errors: dict[str, str | None]
    statuses: list[CellStatus]
    seconds: float
    mlflow_synced: bool
    compute_seconds: float = 0.0  # sum over cells of the levels' own wall time
    extra: dict = field(default_factory=dict)


def prepare_testbed(specs: list[CellSpec]) -> None:
    """Pretrain the tiny model once, in the driver, before trials race to do it."""
    from trainables.testbed.generate import ensure_testbed
    from trainables.testbed.tinybert import ensure_tiny_model

    for config in {s.testbed_config() for s in specs if s.model == TESTBED_MODEL}:
        ensure_testbed(config.testbed)
        ensure_tiny_model(config)


class Monitor(threading.Thread):
    """Polls storage: draws progress and keeps MLflow in step, without ever blocking training."""

    def __init__(self, storage: Path, name: str, state: dict, tracking_uri: str, interval: float, render):
        super().__init__(daemon=True)
        self.storage, self.name, self.state, self.tracking_uri = storage, name, state, tracking_uri
        self.interval, self.render = interval, render
        self.stopped = threading.Event()
        self.synced = False
        self.settled: set[str] = set()  # cells finished and fully logged: not asked about again
        self.lock = threading.Lock()

    def sync_once(self) -> bool:
        from orchestrator import tracking

        try:
            statuses = cell_statuses(self.storage, self.name, self.state)
            failed = {s.spec.id: s.error for s in statuses if s.error}
            with self.lock:
                tracking.sync(self.name, state_specs(self.state), self.storage, self.tracking_uri,
                              sweep_params={"grid": self.state["grid_name"], "cells": len(self.state["cells"])},
                              failed=failed, settled=self.settled)
            if not self.synced:
                log.debug("MLflow in step with storage")
            self.synced = True
        except Exception as e:  # noqa: BLE001 - MLflow is a view; training goes on without it
            if self.synced or not hasattr(self, "_warned"):
                log.warning("MLflow at %s unreachable (%s); will retry, storage keeps everything",
                            self.tracking_uri, str(e).splitlines()[0][:200])
                self._warned = True
            self.synced = False
        return self.synced

    def run(self) -> None:
        self.sync_once()  # creates the experiment (and a new SQLite store's schema) while cells already train
        while not self.stopped.wait(self.interval):
            self.render(cell_statuses(self.storage, self.name, self.state))
            self.sync_once()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=60)


def run_sweep(grid: str | None, name: str | None = None, storage: str = DEFAULT_STORAGE,
              tracking_uri: str | None = None, workers_per_cell: int | None = None,
              gpus_per_worker: float | None = None, max_concurrent: int | None = None, resume: bool = False,
              address: str | None = None, max_failures: int = 3, sync_interval: float = 10.0,
              render=None, checkpoint_every: int = 100, extra_resources: dict | None = None,
              final_sync_wait: float = 30.0,
              inject_crash: dict | None = None) -> SweepResult:
    """Plan, launch (or resume) and finish a sweep; the whole call is idempotent per cell and level."""
    from orchestrator import ray_backend, tracking
    from orchestrator.grid import Resources
    from orchestrator.grid import plan as make_plan

    started = time.perf_counter()
    if workers_per_cell is not None and workers_per_cell < 1:
        raise LnsubError(f"--workers-per-cell must be >= 1, got {workers_per_cell}")
    if gpus_per_worker is not None and gpus_per_worker < 0:
        raise LnsubError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}")
    if max_concurrent is not None and max_concurrent < 1:
        raise LnsubError(f"--max-concurrent must be >= 1, got {max_concurrent}")
    root = check_storage(storage)

    def existing(sweep: str) -> dict | None:
        path = sweep_dir(root, sweep) / "sweep.json"
        return read_json(path) if path.exists() else None

    state = existing(check_name(name)) if name else None
    if grid is None and state is None:
        raise LnsubError("--grid is required to start a sweep (with --resume, a known --name is enough)")
    overrides = {"workers_per_cell": workers_per_cell, "gpus_per_worker": gpus_per_worker}
    p = make_plan(grid, **overrides) if grid is not None else None
    name = check_name(name or p.name)
    state = state or existing(name)
    if state is not None and not resume:
        raise LnsubError(f"sweep {name!r} already exists in {root}; add --resume to continue it, "
                         f"or choose another --name")
    if state is not None and p is not None and [c["id"] for c in state["cells"]] != [c.spec.id for c in p.cells]:
        raise LnsubError(f"grid {p.source} no longer gives the cells sweep {name!r} started with; "
                         f"resume without --grid, or start a new --name")
    tracking_uri = tracking_uri or (state or {}).get("tracking_uri") or tracking.default_tracking_uri(root)
    if state is None:  # a new sweep: its plan is written before anything runs
        state = {"name": name, "grid_name": p.name, "grid_source": p.source, "grid": p.grid,
                 "cells": [{"id": c.spec.id, "spec": c.spec.to_dict(), "cost_hours": c.cost_hours} for c in p.cells],
                 "skipped": [sk.__dict__ for sk in p.skipped], "tracking_uri": tracking_uri,
                 "resources": p.resources.__dict__, "created": time.time()}
        write_json(sweep_dir(root, name) / "sweep.json", state)
    # a resume runs the stored plan; resource options may change (a bigger cluster, say)
    res = Resources(**{**state["resources"], **{k: v for k, v in overrides.items() if v is not None}})
    specs = state_specs(state)
    prepare_testbed(specs)

    monitor = Monitor(root, name, state, tracking_uri, sync_interval, render or (lambda statuses: None))
    with ray_instance(sweep_dir(root, name) / "ray_session.json", address):
        try:
            fits = ray_backend.fitting_concurrency(res.workers_per_cell, res.cpus_per_worker, res.gpus_per_worker)
            concurrency = min(max_concurrent or fits, fits) if res.workers_per_cell > 1 else (max_concurrent or fits)
            log.info("sweep %s: %d cells, up to %d at a time; storage %s", name, len(specs), concurrency, root)
            monitor.start()
            errors = ray_backend.run_tune(
                state["cells"], root, sweep_dir(root, name), workers_per_cell=res.workers_per_cell,
                cpus_per_worker=res.cpus_per_worker, gpus_per_worker=res.gpus_per_worker,
                max_concurrent=concurrency, max_failures=max_failures, resume=resume,
                checkpoint_every=checkpoint_every, extra_resources=extra_resources, inject_crash=inject_crash)
        finally:
            monitor.stop()
    synced = monitor.sync_once()
    deadline = time.time() + final_sync_wait
    while not synced and time.time() < deadline:  # a server that is restarting gets a moment
        time.sleep(3)
        synced = monitor.sync_once()
    statuses = cell_statuses(root, name, state)
    compute = sum(r.get("level_seconds", 0.0) for s in specs for r in CellStore(root, s).all_metrics())
    return SweepResult(name, root, tracking_uri, errors, statuses, time.perf_counter() - started, synced, compute)


@contextlib.contextmanager
def ray_instance(session: Path, address: str | None = None):
    """Ray for one driver: the given cluster, or a private local instance stopped on the way out.

    The private instance's temp dir is written to `session` first, so that after a
    SIGKILL the next driver using the same session file stops the daemons left
    behind (only those, found by that temp dir).
    """
    from orchestrator import ray_backend

    if session.exists():
        old = read_json(session)
        if old.get("pid") and not _alive(old["pid"]):
            reaped = ray_backend.reap_orphans(old["temp_dir"])
            if reaped:
                log.info("stopped %d Ray processes left by the interrupted driver (pid %s)", reaped, old["pid"])
    address = address or os.environ.get("RAY_ADDRESS")
    temp_dir = None
    if not address:
        temp_dir = tempfile.mkdtemp(prefix="lnsub-ray-")
        write_json(session, {"pid": os.getpid(), "temp_dir": temp_dir})
    we_started = ray_backend.start(address=address, temp_dir=temp_dir)
    try:
        yield
    finally:
        if we_started:
            ray_backend.stop()
            session.unlink(missing_ok=True)
            shutil.rmtree(temp_dir, ignore_errors=True)  # our private Ray's sessions and sockets


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sync_sweep(name: str, storage: str = DEFAULT_STORAGE, tracking_uri: str | None = None) -> dict:
    """Push everything storage holds for a sweep to MLflow (idempotent)."""
    from orchestrator import tracking

    root = check_storage(storage)
    state = load_state(root, name)
    statuses = cell_statuses(root, name, state)
    return tracking.sync(name, state_specs(state), root, tracking_uri_of(state, tracking_uri),
                         sweep_params={"grid": state["grid_name"], "cells": len(state["cells"])},
                         failed={s.spec.id: s.error for s in statuses if s.error})
