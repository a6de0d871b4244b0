"""Run any list of idempotent jobs (IMP cells, transfer jobs, whatever comes next) on Ray.

One entry point, `run_jobs`, for every batch lnsub schedules: the same private-Ray
lifecycle (and reaping of what a killed driver left), the same concurrency rule, the
same Tune FailureConfig and restore. Each job keeps its own state in storage, so a
retried trial or a rerun of the command continues where the job stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lnsub.analysis.sweeps import Resources
from lnsub.orchestrator import ray_backend
from lnsub.orchestrator.lease import pid_alive
from lnsub.orchestrator.makespan import concurrency_rule
from lnsub.orchestrator.ray_backend import JobKind, TrialConfig
from lnsub.trainables import providers
from lnsub.trainables.checkpointing import DEFAULT_CHECKPOINT_EVERY
from lnsub.trainables.errors import LnsubError
from lnsub.trainables.storage import Storage
from lnsub.trainables.storage.local import write_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Batch:
    """A list of jobs of one kind, named so that a rerun of the same batch finds what a killed driver left."""

    kind: JobKind
    items: list[dict]  # each with a unique "id"; its other keys are what the trial reads
    name: str  # the batch within its storage: "sweep-<name>", "transfer-<plan id>"
    failures: Path  # where a failed job's last error is noted, <id>.txt (inside the storage)
    storage: Storage
    resources: Resources  # what each job asks of the cluster
    # Run the next job in a finished job's warm process (no second torch import: seconds a job). Only for
    # providers' small models: an mBERT-sized job leaves a process of gigabytes, and Tune does not survive
    # the OOM killer taking a process while it is being reset for reuse (the driver raises).
    reuse_processes: bool = False


def reusable(specs: list) -> bool:
    """Whether jobs on these cells' models may share processes: every model a provider's small one."""
    return providers.small_models(specs)


def private_dir(*parts: str) -> Path:
    """A folder only this user can read or write (0700), for state no trial and no bucket user may touch."""
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "lnsub"
    folder = base.joinpath(*parts)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for p in {base, folder}:
        if p.stat().st_uid != os.getuid():
            raise LnsubError(f"{p} belongs to another user; lnsub keeps private state there (set XDG_STATE_HOME)")
        if p.stat().st_mode & 0o077:
            p.chmod(0o700)
    return folder


def session_file(storage: Storage | Path, batch: str) -> Path:
    """This host's record of the private Ray that a driver of this batch, on this storage, started."""
    key = f"{Storage.open(storage).location}\0{batch}"
    return private_dir("ray-sessions") / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def _reap_left_behind(record_path: Path) -> None:
    """Stop the Ray daemons a killed driver of the same batch left on this host (ray_backend.reap_orphans)."""
    if not record_path.exists():
        return
    try:
        record = ray_backend.SessionRecord.parse(record_path.read_bytes())
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        log.warning("ignored a Ray session record that does not parse (%s): %s", e, record_path)
        record_path.unlink(missing_ok=True)
        return
    if pid_alive(record.pid, record.pid_started):
        return  # its driver still runs (a second driver is refused by the lease)
    reaped = ray_backend.reap_orphans(record)
    if reaped:
        log.info("stopped %d Ray processes left by the interrupted driver (pid %s)", reaped, record.pid)
    if ray_backend.private_temp_dir(record.temp_dir):
        shutil.rmtree(record.temp_dir, ignore_errors=True)
    record_path.unlink(missing_ok=True)


@contextlib.contextmanager
def ray_instance(record_path: Path, address: str | None = None):
    """Ray for one driver: the given cluster, or a private local instance stopped on the way out; yields a private
    folder for the scheduler's own state (never in storage: no trial and no bucket user writes there).

    The private instance's temp dir is recorded on this host first (session_file), so that after a SIGKILL the
    next driver of the same batch stops the daemons left behind: only those (ray_backend.reap_orphans).
    Inside `held_ray` (a study's steps) the first batch's instance stays up for the next ones.
    """
    address = address or os.environ.get("RAY_ADDRESS")
    if _HELD and not address:
        _reap_left_behind(record_path)  # what a killed driver of this batch alone left
        held = _HELD[-1]
        if held.temp_dir is None:
            held.temp_dir = held.stack.enter_context(_private_ray(held.record_path))
        yield held.temp_dir / "scheduler"
        return
    with _private_ray(record_path, address) as temp_dir:
        yield temp_dir / "scheduler"


@contextlib.contextmanager
def _private_ray(record_path: Path, address: str | None = None):
    """Start (or join) Ray, recorded at record_path; its temp dir; stopped and cleaned up on the way out."""
    _reap_left_behind(record_path)
    temp_dir = tempfile.mkdtemp(prefix="lnsub-ray-")  # 0700; Ray's sockets and logs, and Tune's state
    if not address:
        write_bytes(record_path, ray_backend.SessionRecord.mine(temp_dir).body())
    try:
        we_started = ray_backend.start(address=address, temp_dir=temp_dir if not address else None)
    except BaseException:
        record_path.unlink(missing_ok=True)
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    try:
        yield Path(temp_dir)
    finally:
        if we_started:
            ray_backend.stop()
        record_path.unlink(missing_ok=True)
        shutil.rmtree(temp_dir, ignore_errors=True)  # our private Ray's sessions and sockets, Tune's state


@dataclass
class _Held:
    record_path: Path
    stack: contextlib.ExitStack
    temp_dir: Path | None = None  # once the first batch has started the instance


_HELD: list[_Held] = []


@contextlib.contextmanager
def held_ray(record_path: Path):
    """Batches run inside the block share one private Ray: the first starts it, the block's end stops it (a study's
    steps: seconds of start-up and shutdown a step, and no instance at all when every step is done already).
    Recorded at record_path, whose next holder reaps what a killed one left; a cluster (--address) is joined per
    batch as ever."""
    _reap_left_behind(record_path)
    with contextlib.ExitStack() as stack:
        _HELD.append(_Held(record_path, stack))
        try:
            yield
        finally:
            _HELD.pop()


FIX = 'start Ray from lnsub\'s environment (~/lnsub/.venv/bin/ray start ...): see README "On a cluster"'


def check_cluster(probes: dict[str, dict], mine: dict) -> None:
    """Refuse, in one line and before any trial, a cluster whose nodes do not run lnsub as this driver does."""
    problems = []
    for ip, p in sorted(probes.items()):
        if "error" in p:
            problems.append(f"node {ip}: lnsub not importable ({p['error']}); {FIX}")
            continue
        for what, theirs, ours in (("Ray", p["ray"], mine["ray"]),
                                   ("Python", p["python"].rsplit(".", 1)[0], mine["python"].rsplit(".", 1)[0]),
                                   ("lnsub", p["lnsub"], mine["lnsub"]), ("spec schema", p["schema"], mine["schema"])):
            if theirs != ours:
                problems.append(f"node {ip}: {what} {theirs}, this driver {ours}; {FIX}")
                break
    if problems:
        more = f" (and {len(problems) - 1} more node(s))" if len(problems) > 1 else ""
        raise LnsubError(problems[0] + more)


def concurrency(resources: Resources, max_concurrent: int | None) -> int:
    """Jobs at once: what the cluster fits now (multi-worker jobs never more), capped by --max-concurrent."""
    fits = ray_backend.fitting_concurrency(resources)
    return concurrency_rule(fits, resources.workers_per_cell, max_concurrent)  # `lnsub plan --devices` applies it too


def run_jobs(batch: Batch, *, address: str | None = None, max_concurrent: int | None = None, max_failures: int = 3,
             checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY, watch: Callable[[], None] | None = None,
             watch_interval: float = 2.0, started: Callable[[int], None] | None = None) -> dict[str, str | None]:
    """Run every job of the batch as a Tune trial (in the given order); job id -> error or None.

    `watch` is called every `watch_interval` seconds from a thread while the jobs run
    (progress, MLflow sync); `started(k)` once Ray is up, with the concurrency chosen.
    """
    if not batch.items:
        return {}
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(watch, watch_interval, stop), daemon=True) if watch else None
    address = address or os.environ.get("RAY_ADDRESS")
    with ray_instance(session_file(batch.storage, batch.name), address) as scheduler:
        if address:  # a cluster someone else started: every node must run lnsub as this driver does
            check_cluster(ray_backend.probe_nodes(), ray_backend.node_report())
        k = concurrency(batch.resources, max_concurrent)
        if started:
            started(k)
        if watcher:
            watcher.start()
        try:
            # what a trial on any node can open: the store's URI (or the shared path), notes relative to it
            config = TrialConfig(storage=batch.storage.location,
                                 failures=batch.failures.relative_to(batch.storage.root).as_posix(),
                                 checkpoint_every=checkpoint_every, resources=batch.resources,
                                 max_failures=max_failures)
            return ray_backend.run_trials(batch.kind, batch.items, scheduler / batch.name, config,
                                          max_concurrent=k, reuse_actors=batch.reuse_processes)
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
