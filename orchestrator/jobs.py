"""Run any list of idempotent jobs (IMP cells, transfer jobs, whatever comes next) on Ray.

One entry point, `run_jobs`, for every batch lnsub schedules: the same private-Ray
lifecycle (and reaping of what a killed driver left), the same concurrency rule, the
same Tune FailureConfig and restore. Each job keeps its own state in storage, so a
retried trial or a rerun of the command continues where the job stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lnsub.orchestrator import ray_backend
from lnsub.orchestrator.makespan import concurrency_rule
from lnsub.trainables import objectstore
from lnsub.trainables.atomic import read_json, remove, write_json
from lnsub.trainables.spec import TESTBED_BERT_MODELS, TESTBED_MODELS, TESTBED_MT5_MODEL, CellSpec
from lnsub.trainables.sweep_state import pid_alive
from lnsub.trainables.testbed.generate import ensure_testbed
from lnsub.trainables.testbed.tinybert import ensure_tiny_model
from lnsub.trainables.testbed.tinymt5 import ensure_tiny_mt5

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Batch:
    """A list of jobs of one kind and where the scheduler keeps its state for exactly them."""

    kind: str  # a key of ray_backend.TRIALS: "cell" or "transfer"
    items: list[dict]  # each with a unique "id"; its other keys are what the trial reads
    experiment: Path  # Tune's experiment folder (restored on a rerun)
    failures: Path  # where a failed job's last error is noted, <id>.txt
    storage: Path


@dataclass(frozen=True)
class Placement:
    workers_per_job: int = 1
    cpus_per_worker: float = 1
    gpus_per_worker: float = 0
    # Run the next job in a finished job's warm process (no second torch import: seconds a job). Only for
    # the testbed's small models: an mBERT-sized job leaves a process of gigabytes, and Tune does not
    # survive the OOM killer taking a process while it is being reset for reuse (the driver raises).
    reuse_processes: bool = False


def placement_for(specs: list[CellSpec], workers_per_job: int, cpus_per_worker: float,
                  gpus_per_worker: float) -> Placement:
    """Where jobs on these cells' models run; processes are reused only when every model is the testbed's."""
    small = all(s.model in TESTBED_MODELS for s in specs)
    return Placement(workers_per_job, cpus_per_worker, gpus_per_worker, reuse_processes=small)


def prepare_testbed(specs: list[CellSpec]) -> None:
    """Pretrain the tiny model once, in the driver, before trials race to do it."""
    for config in {s.testbed_config() for s in specs if s.model in TESTBED_BERT_MODELS}:
        ensure_testbed(config.testbed)
        ensure_tiny_model(config)
    for config in {s.testbed_mt5_config() for s in specs if s.model == TESTBED_MT5_MODEL}:
        ensure_testbed(config.testbed)
        ensure_tiny_mt5(config)


@contextlib.contextmanager
def ray_instance(session: Path, address: str | None = None):
    """Ray for one driver: the given cluster, or a private local instance stopped on the way out.

    The private instance's temp dir is written to `session` first, so that after a
    SIGKILL the next driver using the same session file stops the daemons left
    behind (only those, found by that temp dir).
    """
    if session.exists():
        old = read_json(session)
        if old.get("pid") and not pid_alive(old["pid"]):
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
            remove(session)  # here and, on an object store, there
            shutil.rmtree(temp_dir, ignore_errors=True)  # our private Ray's sessions and sockets


def concurrency(placement: Placement, max_concurrent: int | None) -> int:
    """Jobs at once: what the cluster fits now (multi-worker jobs never more), capped by --max-concurrent."""
    fits = ray_backend.fitting_concurrency(placement.workers_per_job, placement.cpus_per_worker,
                                           placement.gpus_per_worker)
    return concurrency_rule(fits, placement.workers_per_job, max_concurrent)  # `lnsub plan --gpus` applies it too


def run_jobs(batch: Batch, placement: Placement, *, address: str | None = None, max_concurrent: int | None = None,
             max_failures: int = 3, resume: bool = True, checkpoint_every: int = 100,
             watch: Callable[[], None] | None = None, watch_interval: float = 2.0,
             started: Callable[[int], None] | None = None) -> dict[str, str | None]:
    """Run every job of the batch as a Tune trial (in the given order); job id -> error or None.

    `watch` is called every `watch_interval` seconds from a thread while the jobs run
    (progress, MLflow sync); `started(k)` once Ray is up, with the concurrency chosen.
    """
    if not batch.items:
        return {}
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(watch, watch_interval, stop), daemon=True) if watch else None
    with ray_instance(batch.experiment.parent / "ray_session.json", address):
        k = concurrency(placement, max_concurrent)
        if started:
            started(k)
        if watcher:
            watcher.start()
        try:
            # what a trial on any node can open: the store's URI (or the shared path), notes relative to it
            config = {"storage": objectstore.location_of(batch.storage),
                      "failures": batch.failures.relative_to(batch.storage).as_posix(),
                      "checkpoint_every": checkpoint_every}
            return ray_backend.run_trials(
                batch.kind, batch.items, batch.experiment, config, workers_per_cell=placement.workers_per_job,
                cpus_per_worker=placement.cpus_per_worker, gpus_per_worker=placement.gpus_per_worker,
                max_concurrent=k, max_failures=max_failures, resume=resume,
                reuse_actors=placement.reuse_processes)
        finally:
            stop.set()
            if watcher:
                watcher.join(timeout=60)


def _watch(watch: Callable[[], None], interval: float, stop: threading.Event) -> None:
    while not stop.wait(interval):
        try:
            watch()
        except Exception as e:  # noqa: BLE001 - a watcher (progress, sync) never ends the batch
            log.warning("watcher failed (%s: %s); the jobs go on", type(e).__name__, str(e).splitlines()[0][:200])
