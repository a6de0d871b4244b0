"""Launch, resume and inspect a sweep. Storage is the source of truth; Ray schedules, MLflow shows.

    <storage>/cells/<cell id>/...             each cell's levels (trainables.store), shared by sweeps
    <storage>/sweeps/<name>/sweep.json        the plan (trainables.sweep_state.SweepState)
    <storage>/sweeps/<name>/lease/            the driver that runs the sweep now (orchestrator.lease)
    <storage>/sweeps/<name>/failures/         the last error of a cell that failed
    <storage>/mlflow.db, mlartifacts/         the default MLflow store
"""

from __future__ import annotations

import _thread
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lnsub.orchestrator import lease, progress, ray_backend, tracking
from lnsub.orchestrator.grid import Plan
from lnsub.orchestrator.grid import plan as make_plan
from lnsub.orchestrator.jobs import Batch, reusable, run_jobs
from lnsub.orchestrator.ray_backend import JobKind
from lnsub.trainables import providers
from lnsub.trainables.checkpointing import DEFAULT_CHECKPOINT_EVERY
from lnsub.trainables.storage import Storage
from lnsub.trainables.errors import LnsubError
from lnsub.trainables.metrics import LEVEL_SECONDS
from lnsub.trainables.store import CellStore
from lnsub.analysis.sweeps import (FAILURES_DIR, CellStatus, Resources, SweepState, cell_statuses, check_name,
                                   exists, load_state, open_storage, pull_cells, redact, save_state, status_counts,
                                   sweep_dir)

log = logging.getLogger(__name__)
DEFAULT_STORAGE = "./lnsub-runs"


@dataclass
class SweepResult:
    name: str
    storage: Storage
    tracking_uri: str
    errors: dict[str, str | None]
    statuses: list[CellStatus]
    seconds: float
    mlflow_synced: bool
    compute_seconds: float = 0.0  # sum over cells of the levels' own wall time


def compute_seconds(storage: Storage, state: SweepState) -> float:
    return sum(r.get(LEVEL_SECONDS, 0.0) for s in state.specs for r in CellStore(storage, s).all_metrics())


class Monitor:
    """Keeps MLflow in step with storage and draws progress, never blocking training (the lease has its Keeper).

    Every failure is caught and reported once with its type (again only when it changes),
    so a read error or a bug in sync costs a warning, never the rest of the sweep's progress.
    """

    def __init__(self, storage: Storage, state: SweepState, tracking_uri: str, render):
        self.storage, self.state, self.tracking_uri, self.render = storage, state, tracking_uri, render
        self.slots = 1  # cells at once, once the scheduler has chosen (started)
        self.synced = False
        self.settled: set[str] = set()  # cells finished and fully logged: not asked about again
        self.lock = threading.Lock()
        self._last_problem: dict[str, str] = {}

    def _report(self, what: str, e: Exception | None) -> None:
        text = "" if e is None else f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        if text and self._last_problem.get(what) != text:
            log.warning("%s failed (%s); will retry, storage keeps everything", what, text)
        elif not text and self._last_problem.get(what):
            log.info("%s works again", what)
        self._last_problem[what] = text

    def sync_once(self) -> bool:
        try:
            statuses = cell_statuses(self.storage, self.state, driver_alive=True)
            with self.lock:
                tracking.sync(self.state.name, self.state.specs, self.storage, self.tracking_uri,
                              sweep_params={"grid": self.state.grid_name, "cells": len(self.state.cells)},
                              failed={s.spec.id: s.error for s in statuses if s.error}, settled=self.settled)
            self.synced = True
            self._report(f"MLflow sync to {redact(self.tracking_uri)}", None)
        except Exception as e:  # noqa: BLE001 - MLflow is a view; training goes on without it
            self.synced = False
            self._report(f"MLflow sync to {redact(self.tracking_uri)}", e)
        return self.synced

    def tick(self) -> None:
        """One round of the monitor: progress, sync; each guarded on its own."""
        for what, step in (("reading progress", self._draw),
                           ("MLflow sync", self.sync_once)):
            try:
                step()
            except Exception as e:  # noqa: BLE001 - the monitor outlives any one failure
                self._report(what, e)

    def _draw(self) -> None:
        statuses = cell_statuses(self.storage, self.state, driver_alive=True)
        self.render(statuses, progress.estimate(statuses, {c.id: c.cost_hours for c in self.state.cells},
                                                self.slots))

    def started(self, slots: int) -> None:
        self.slots = slots
        log.info("sweep %s: %d cells to run, up to %d at a time; storage %s", self.state.name,
                 sum(not CellStore(self.storage, s).finished() for s in self.state.specs), slots,
                 self.storage.location)


def new_state(p: Plan, name: str, tracking_uri: str) -> SweepState:
    return SweepState(name=name, grid_name=p.name, grid_source=p.source, grid=p.grid,
                      cells=list(p.cells),
                      skipped=[sk.__dict__ for sk in p.skipped], tracking_uri=tracking_uri,
                      resources=p.resources)


def _check_options(workers_per_cell, gpus_per_worker, max_concurrent) -> None:
    if workers_per_cell is not None and workers_per_cell < 1:
        raise LnsubError(f"--workers-per-cell must be >= 1, got {workers_per_cell}")
    if gpus_per_worker is not None and gpus_per_worker < 0:
        raise LnsubError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}")
    if max_concurrent is not None and max_concurrent < 1:
        raise LnsubError(f"--max-concurrent must be >= 1, got {max_concurrent}")


def open_or_plan(root: Storage, grid: str | None, name: str | None, resume: bool, tracking_uri: str | None,
                 overrides: dict, data_dir: str | None = None, address: str | None = None) -> SweepState:
    """The sweep to run: the stored plan (on --resume) or a new one from the grid, written before anything runs
    (and only once it is known to fit where it runs)."""
    if grid is None and not (resume and name):
        raise LnsubError("--grid is required to start a sweep (with --resume, a known --name is enough)")
    if grid is None and data_dir is not None:
        raise LnsubError("--data-dir is read when a grid is planned; a resumed sweep keeps its cells' data "
                         "(give --grid as well, or leave --data-dir out)")
    state = load_state(root, name) if grid is None or (name and exists(root, name)) else None
    p = make_plan(grid, data_dir=data_dir, **overrides) if grid is not None else None
    name = check_name(name or p.name)
    if state is None and exists(root, name):
        state = load_state(root, name)
    if state is not None and not resume:
        raise LnsubError(f"sweep {name!r} already exists in {root.location}; add --resume to "
                         f"continue it, or choose another --name")
    if state is not None and p is not None and [c.id for c in state.cells] != [c.spec.id for c in p.cells]:
        raise LnsubError(f"grid {p.source} no longer gives the cells sweep {name!r} started with; "
                         f"resume without --grid, or start a new --name")
    if state is None:
        if tracking_uri is None and root.remote:
            raise LnsubError("with --storage on an object store, give --tracking-uri: an MLflow server every node "
                             "reaches (lnsub ui --storage URI starts one whose artifacts go to the same store)")
        state = new_state(p, name, redact(tracking_uri or tracking.default_tracking_uri(root)))
        check_fits(resources_of(state, overrides), address)
        save_state(root, state)
    return state


def resources_of(state: SweepState, overrides: dict) -> Resources:
    """The stored plan's resources with the command line's overrides (a resume may run on a bigger cluster)."""
    return state.resources.with_overrides(**overrides)


def check_fits(res: Resources, address: str | None) -> None:
    """Refuse, in one line, a cell that can never start on the private local Ray (it would wait forever).

    On a cluster (--address, RAY_ADDRESS) nodes may come and go, so nothing is refused there."""
    if address or os.environ.get("RAY_ADDRESS"):
        return
    cpus, gpus = res.workers_per_cell * res.cpus_per_worker, res.workers_per_cell * res.gpus_per_worker
    have_cpus, have_gpus = os.cpu_count() or 1, ray_backend.local_gpus()
    if cpus > have_cpus or gpus > have_gpus:
        raise LnsubError(f"a cell asks for {cpus:g} CPUs and {gpus:g} GPUs ({res.workers_per_cell} worker(s) x "
                         f"({res.cpus_per_worker:g} CPU, {res.gpus_per_worker:g} GPU)); this machine has "
                         f"{have_cpus} CPUs and {have_gpus} GPUs: lower the grid's resources, or run on a cluster "
                         f"with --address")


def run_sweep(grid: str | None, name: str | None = None, storage: str = DEFAULT_STORAGE,
              tracking_uri: str | None = None, workers_per_cell: int | None = None,
              gpus_per_worker: float | None = None, max_concurrent: int | None = None, resume: bool = False,
              address: str | None = None, max_failures: int = 3, sync_interval: float = 10.0,
              render=None, checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY, final_sync_wait: float = 30.0,
              data_dir: str | None = None) -> SweepResult:
    """Plan, launch (or resume) and finish a sweep; the whole call is idempotent per cell and level."""
    started = time.perf_counter()
    _check_options(workers_per_cell, gpus_per_worker, max_concurrent)
    root = open_storage(storage)
    overrides = {"workers_per_cell": workers_per_cell, "gpus_per_worker": gpus_per_worker}
    state = open_or_plan(root, grid, name, resume, tracking_uri, overrides, data_dir, address)
    tracking_uri = state.tracking(tracking_uri)
    res = resources_of(state, overrides)
    check_fits(res, address)
    holder = lease.take(root, state.name)
    lost: list[str] = []

    def on_lost(reason: str) -> None:
        lost.append(reason)
        _thread.interrupt_main()  # as a Ctrl-C: Tune stops its trials; the other driver carries on

    try:
        with lease.Keeper(root, state.name, holder, on_lost):
            errors, synced = _run_cells(root, state, tracking_uri, res, render, address=address, max_concurrent=max_concurrent,
                                        max_failures=max_failures, checkpoint_every=checkpoint_every,
                                        sync_interval=sync_interval, final_sync_wait=final_sync_wait)
    except KeyboardInterrupt:
        if lost:
            raise lease.LeaseLost(lost[0]) from None
        raise
    finally:
        if not lost:
            lease.release(root, state.name, holder)
    if lost:  # Tune took the interruption as a Ctrl-C and stopped its trials
        raise lease.LeaseLost(lost[0])
    return SweepResult(state.name, root, tracking_uri, errors, cell_statuses(root, state),
                       time.perf_counter() - started, synced, compute_seconds(root, state))


def _run_cells(root: Storage, state: SweepState, tracking_uri: str, res: Resources, render, *, address, max_concurrent, max_failures,
               checkpoint_every, sync_interval, final_sync_wait) -> tuple[dict[str, str | None], bool]:
    """The unfinished cells as Tune trials, the monitor beside them; (errors by cell id, whether MLflow is synced)."""
    monitor = Monitor(root, state, tracking_uri, render or (lambda statuses, estimate: None))
    pull_cells(root, state.specs, skip_finished=True)
    pending = [c for c in state.cells if not CellStore(root, c.spec).finished()]
    if not pending:
        log.info("sweep %s: every cell is done already; nothing left to do", state.name)
        return {}, _final_sync(monitor, final_sync_wait)
    providers.prepare([c.spec for c in pending])  # the driver builds what the cells load, before any trial
    threading.Thread(target=monitor.sync_once, daemon=True).start()  # the experiment, while cells train
    batch = Batch(JobKind.CELL, [{"id": c.id, "spec": c.spec.to_dict()} for c in pending], f"sweep-{state.name}",
                  sweep_dir(root, state.name) / FAILURES_DIR, root, res, reuse_processes=reusable(state.specs))
    errors = run_jobs(batch, address=address, max_concurrent=max_concurrent, max_failures=max_failures,
                      checkpoint_every=checkpoint_every, watch=monitor.tick, watch_interval=sync_interval,
                      started=monitor.started)
    return errors, _final_sync(monitor, final_sync_wait)


def _final_sync(monitor: Monitor, wait: float) -> bool:
    synced = monitor.sync_once()
    deadline = time.time() + wait
    while not synced and time.time() < deadline:  # a server that is restarting gets a moment
        time.sleep(3)
        synced = monitor.sync_once()
    return synced


def driver_alive(root: Storage, name: str) -> bool:
    """Whether a driver holds the sweep now (its lease is alive)."""
    held = lease.read_holder(root, name)
    return held is not None and held.alive()


def sweep_status(name: str, storage: str = DEFAULT_STORAGE) -> tuple[SweepState, list[CellStatus]]:
    root = open_storage(storage)
    state = load_state(root, name)
    return state, cell_statuses(root, state, driver_alive(root, name))


def list_sweeps(storage: str = DEFAULT_STORAGE) -> list[tuple[SweepState, dict[str, int], bool]]:
    """Every sweep in a storage: its plan, its cells' state counts, whether a driver holds it now."""
    root = open_storage(storage)
    root.pull(root.path("sweeps"), exclude=("tune", "lease", "analysis", "transfer"))
    out = []
    for path in sorted(root.path("sweeps").glob("*/sweep.json")):
        name = path.parent.name
        try:
            state = load_state(root, check_name(name))
        except LnsubError as e:
            log.warning("skipped %s: %s", path.parent, e)
            continue
        alive = driver_alive(root, name)
        out.append((state, status_counts(cell_statuses(root, state, alive)), alive))
    return out


def sync_sweep(name: str, storage: str = DEFAULT_STORAGE, tracking_uri: str | None = None) -> dict:
    """Push everything storage holds for a sweep to MLflow (idempotent)."""
    root = open_storage(storage)
    state = load_state(root, name)
    statuses = cell_statuses(root, state)
    uri = state.tracking(tracking_uri)
    try:
        return tracking.sync(name, state.specs, root, uri, sweep_params={"grid": state.grid_name,
                                                                         "cells": len(state.cells)},
                             failed={s.spec.id: s.error for s in statuses if s.error})
    except Exception as e:  # noqa: BLE001 - MLflow's many ways to fail are one fact for the user
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise LnsubError(f"MLflow at {redact(uri)} did not take the sync ({type(e).__name__}: {first}); storage "
                         f"keeps everything: run lnsub sync again once it answers") from e
