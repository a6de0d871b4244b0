"""Every Ray call of lnsub lives here (Ray's API moves between releases; pinned to 2.60).

Train V2 is on in Ray 2.60: a Trainer cannot be handed to a Tuner. A cell with
several workers runs as a `TorchTrainer` built and `.fit()`-ed inside its Tune
function trial (or directly, from `run_cell_on_workers`), with a run name derived
from the cell id so a retried or restarted cell finds its own run. See
docs/ray-2.60-notes.md for what was checked and how.

Ray itself is imported inside the functions that use it: it takes seconds to import,
and commands such as `lnsub plan` and `lnsub status` never need it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import logging
import os
import secrets
import signal
import socket
import stat
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from lnsub.analysis.sweeps import Resources
from lnsub.orchestrator import faults
from lnsub.trainables.checkpointing import DEFAULT_CHECKPOINT_EVERY
from lnsub.trainables.storage import Storage
from lnsub.trainables.errors import LnsubError
from lnsub.trainables.imp import CellResult, Hooks, run_cell
from lnsub.trainables.metrics import LEVEL, SCORE, SPARSITY
from lnsub.trainables.spec import CellSpec
from lnsub.trainables.store import CellStore
from lnsub.trainables.transfer_job import TransferJob, run_transfer_job

log = logging.getLogger(__name__)

QUIET_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",  # with verbose=0 the legacy engine prints nothing; we draw our own progress
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}
TOKEN_FILE = "auth_token"  # in a private local instance's temp dir (0700): the token only its own processes read
TOKEN_SOURCES = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
_SAVED_ENV: dict[str, str | None] | None = None  # the caller's auth variables, put back by stop()


def quiet() -> None:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def _use_token(path: str | None) -> None:
    """Token authentication on for every Ray this process starts or joins (Ray reads it from the environment,
    and its processes inherit it); `path` is this instance's own token file, None to use the caller's."""
    from ray._raylet import AuthenticationTokenLoader, Config

    if _SAVED_ENV is None:
        globals()["_SAVED_ENV"] = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", *TOKEN_SOURCES)}
    os.environ["RAY_AUTH_MODE"] = "token"
    if path is not None:
        os.environ["RAY_AUTH_TOKEN_PATH"] = path
        os.environ.pop("RAY_AUTH_TOKEN", None)
    Config.initialize("")  # Ray read its config when it was imported: read it again, with token mode on
    AuthenticationTokenLoader.instance().reset_cache()  # and forget a token an earlier instance used


def write_token(path: str | Path) -> str:
    """A fresh 256-bit token at `path` (which must not exist), readable by this user only; its path."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return str(path)


def new_token(folder: str | Path) -> str:
    """A fresh token in `folder`/auth_token (a private instance's temp dir)."""
    return write_token(Path(folder) / TOKEN_FILE)


def cluster_token(path: Path) -> tuple[Path, bool]:
    """The token file a cluster's nodes are started with (`lnsub ray-token`): made if missing, in a 0700 folder;
    (its path, whether it was made now). An existing file that others could read is refused."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise LnsubError(f"{path} is readable by others (mode {path.stat().st_mode & 0o777:o}): chmod 600 it, "
                             f"or remove it and run lnsub ray-token again")
        return path, False
    write_token(path)
    return path, True


def _cluster_token_missing() -> bool:
    default = Path.home() / ".ray" / TOKEN_FILE
    return not any(os.environ.get(k) for k in TOKEN_SOURCES) and not default.is_file()


def start(address: str | None = None, num_cpus: int | None = None, resources: dict | None = None,
          temp_dir: str | None = None) -> bool:
    """Connect to a running cluster, or start a private local instance; True if we started it.

    Either way with token authentication on: a private instance gets a fresh token in its own temp dir
    (nobody else can read it, so nobody else can run code on it); a cluster is joined with the token its
    nodes were started with (RAY_AUTH_TOKEN_PATH, RAY_AUTH_TOKEN or ~/.ray/auth_token). A local instance
    has no dashboard and never touches another Ray on the machine. Stop it with `stop()`, never `ray stop`.
    """
    import ray

    quiet()
    if ray.is_initialized():
        return False
    if address and address != "local":
        if _cluster_token_missing():
            raise LnsubError(f"--address {address}: lnsub joins a Ray cluster only with its token; set "
                             f"RAY_AUTH_TOKEN_PATH to the file the cluster's nodes were started with (see README "
                             f"\"On a cluster\")")
        _use_token(None)
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, runtime_env=_runtime_env())
        return False
    temp_dir = str(Path(temp_dir or tempfile.mkdtemp(prefix="lnsub-ray-")).resolve())
    _use_token(new_token(temp_dir))
    ray.init(address="local", _temp_dir=temp_dir, include_dashboard=False, num_cpus=num_cpus, resources=resources,
             log_to_driver=False, logging_level=logging.WARNING, runtime_env=_runtime_env())
    return True


def _runtime_env() -> dict | None:
    """Carry a test's fault plan to every worker, on every node."""
    return {"env_vars": {faults.ENV: os.environ[faults.ENV]}} if faults.active() else None


def local_gpus() -> int:
    """GPUs a private local Ray would see on this machine."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def stop() -> None:
    """Leave Ray (stopping a private instance), and put the caller's auth variables back: the instance's token
    file goes with its temp dir, and nothing may point at it afterwards."""
    global _SAVED_ENV
    import ray

    if ray.is_initialized():
        ray.shutdown()
    if _SAVED_ENV is not None:
        from ray._raylet import AuthenticationTokenLoader, Config

        for key, value in _SAVED_ENV.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _SAVED_ENV = None
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


def node_report() -> dict:
    """What a node runs lnsub with (serialised by value: it must run where lnsub does not import)."""
    import platform
    import socket as sock

    import ray as node_ray

    out = {"python": platform.python_version(), "ray": node_ray.__version__, "host": sock.gethostname()}
    try:
        import importlib
        from importlib.metadata import version

        # imported by name: this function runs on nodes that may lack lnsub, which is what it finds out
        out.update(lnsub=version("lnsub"), schema=importlib.import_module("lnsub.trainables.spec").SCHEMA)
    except Exception as e:  # noqa: BLE001 - what is wrong is the answer
        out["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return out


def probe_nodes(timeout: float = 300.0) -> dict[str, dict]:
    """Every alive node's answer to node_report, by node IP (a node that does not answer within `timeout`: an error)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0)(_by_value(node_report))
    refs = {node["NodeManagerAddress"]: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        node["NodeID"], soft=False)).remote() for node in ray.nodes() if node.get("Alive")}
    out = {}
    for ip, ref in refs.items():
        try:
            out[ip] = ray.get(ref, timeout=timeout)
        except Exception as e:  # noqa: BLE001 - a node that cannot even run the probe
            out[ip] = {"error": one_line(root_cause(e))}
    return out


def _by_value(fn):
    """A copy of a module-level function that cloudpickle sends by value, so a node need not import lnsub."""
    import types

    return types.FunctionType(fn.__code__, {"__builtins__": __builtins__}, fn.__name__)


def cluster_resources() -> dict:
    import ray

    return dict(ray.cluster_resources())


def _fault_hook(unit: str, rank: int = 0):
    """The fault plan's hook after every step (tests), or None when no plan is set."""
    if not faults.active():
        return None
    return lambda level, step: faults.at_step(unit, level, step, rank)


def _cell_worker(config: dict) -> None:
    """Per-worker function of a cell's TorchTrainer: Accelerate inside, rank 0 writes."""
    import ray.train

    spec = CellSpec.from_dict(config["spec"])
    hook = _fault_hook(spec.id, ray.train.get_context().get_world_rank())
    result = run_cell(spec, config["storage"], checkpoint_every=config["checkpoint_every"],
                      hooks=Hooks(after_step=hook))
    ray.train.report({"levels": len(result.levels), "steps_trained": result.steps_trained})


def train_run_name(spec: CellSpec) -> str:
    return f"cell-{spec.id}"


def run_cell_on_workers(spec: CellSpec, storage: Storage | str | Path, resources: Resources = Resources(),
                        max_failures: int = 2, checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY) -> CellResult:
    """Run a cell on its Ray Train workers; with one worker, in this process (no Train start-up).

    A worker that dies makes Train restart the group (up to max_failures times);
    the cell then resumes from its own last checkpoint in storage.
    """
    storage = Storage.open(storage)  # a folder, or this process's scratch copy of a store
    if resources.workers_per_cell <= 1:
        return run_cell(spec, storage, checkpoint_every=checkpoint_every, hooks=Hooks(after_step=_fault_hook(spec.id)))
    import ray.train
    from ray.train.torch import TorchTrainer

    per_worker = {"CPU": resources.cpus_per_worker, **({"GPU": resources.gpus_per_worker}
                                                       if resources.gpus_per_worker else {})}
    trainer = TorchTrainer(
        _cell_worker,
        train_loop_config={"spec": spec.to_dict(), "storage": storage.location, "checkpoint_every": checkpoint_every},
        scaling_config=ray.train.ScalingConfig(num_workers=resources.workers_per_cell,
                                               use_gpu=resources.gpus_per_worker > 0, resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(name=train_run_name(spec), storage_path=str(storage.path("ray-train")),
                                       failure_config=ray.train.FailureConfig(max_failures=max_failures)),
    )
    result = trainer.fit()
    store = CellStore(storage, spec)  # storage, not Ray's result, is the source of truth
    store.pull()
    if not store.finished():
        raise RuntimeError(f"cell {spec.id}: Ray Train returned but the cell is not finished in {store.root}")
    return CellResult(spec.id, store.all_metrics(), int((result.metrics or {}).get("steps_trained", 0)), store.root)


# --- batches of idempotent jobs: one Tune function trial each -----------------------------------------

def root_cause(e: BaseException) -> BaseException:
    """The exception underneath Ray's and Tune's wrappers (RayTaskError, TuneError, chained causes)."""
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        inner = getattr(e, "cause", None) or e.__cause__
        if not isinstance(inner, BaseException):
            break
        e = inner
    return e


def one_line(e: BaseException) -> str:
    """`Type: message`, the message's first line only (Ray's stack dumps stay in the traceback file)."""
    text = str(e).strip()
    first = next((line.strip() for line in text.splitlines() if line.strip() and not line.startswith(
        ("Traceback", "  File", "ray::", "\x1b"))), "")
    return f"{type(e).__name__}: {first[:300]}" if first else type(e).__name__


def traceback_note(note: Path) -> Path:
    """Beside a failure note (<id>.txt, one line), the full traceback (<id>.traceback.txt)."""
    return note.with_name(note.name.removesuffix(".txt") + ".traceback.txt")


@contextlib.contextmanager
def _failure_noted(storage: Storage, note: Path):
    """Leave the last error of a trial where `lnsub status` and the driver read it, as one line of its root cause
    and the whole traceback beside it; clear both on success."""
    try:
        yield
    except BaseException as e:
        with contextlib.suppress(OSError):  # the store may be what failed: the error is Tune's to report then
            storage.write_text(note, one_line(root_cause(e)) + "\n")
        with contextlib.suppress(OSError):
            storage.write_text(traceback_note(note), "".join(traceback.format_exception(e)))
        raise
    storage.remove(note)
    storage.remove(traceback_note(note))


@dataclass(frozen=True)
class TrialConfig:
    """What every trial of a batch is told, beside its item: where storage is (a URI or a shared path any node
    opens), where to note a failure (relative to it), and what each job may use."""

    storage: str
    failures: str
    checkpoint_every: int
    resources: Resources
    max_failures: int

    def failure_note(self, storage: Storage, unit_id: str) -> Path:
        return storage.path(self.failures, f"{unit_id}.txt")


class JobKind(str, enum.Enum):
    """What a batch's items are: IMP cells, or transfer jobs."""

    CELL = "cell"
    TRANSFER = "transfer"


def _cell_trial(params: dict) -> None:
    """A Tune trial: one cell. With several workers it fits a TorchTrainer named after the cell id."""
    from ray import tune

    config: TrialConfig = params["config"]
    spec = CellSpec.from_dict(params["item"]["spec"])
    torch.set_num_threads(max(1, int(config.resources.cpus_per_worker)))  # trials side by side: no oversubscription
    storage = Storage.open(config.storage)

    def level_done(level: int, record: dict) -> None:
        tune.report({LEVEL: level, SCORE: record[SCORE], SPARSITY: record[SPARSITY]})

    with _failure_noted(storage, config.failure_note(storage, spec.id)):
        if config.resources.workers_per_cell > 1:
            result = run_cell_on_workers(spec, storage, config.resources, max_failures=config.max_failures,
                                         checkpoint_every=config.checkpoint_every)
        else:
            result = run_cell(spec, storage, checkpoint_every=config.checkpoint_every,
                              hooks=Hooks(level_done=level_done, after_step=_fault_hook(spec.id)))
    last = result.levels[-1]
    tune.report({LEVEL: last[LEVEL], SCORE: last[SCORE], SPARSITY: last[SPARSITY], "done": 1})


def _transfer_trial(params: dict) -> None:
    """A Tune trial: one transfer job (a source mask trained on a target), on one worker."""
    from ray import tune

    config: TrialConfig = params["config"]
    job = TransferJob.from_dict(params["item"]["job"])
    torch.set_num_threads(max(1, int(config.resources.cpus_per_worker)))
    storage = Storage.open(config.storage)
    hook = _fault_hook(job.id)
    with _failure_noted(storage, config.failure_note(storage, job.id)):
        record = run_transfer_job(job, storage, checkpoint_every=config.checkpoint_every,
                                  after_step=(lambda step: hook(None, step)) if hook else None)
    tune.report({SCORE: record[SCORE], "done": 1})


TRIALS = {JobKind.CELL: _cell_trial, JobKind.TRANSFER: _transfer_trial}


def trial_resources(resources: Resources) -> dict:
    """What the Tune trial itself reserves.

    With one worker the trial is the worker. With several, the trial only hosts
    the TorchTrainer's controller (0 CPUs) and the workers get their own
    placement group; an all-zero request is refused, hence the token memory.
    """
    if resources.workers_per_cell == 1:
        return {"cpu": resources.cpus_per_worker, "gpu": resources.gpus_per_worker}
    return {"cpu": 0, "memory": 1024 * 1024}


def fitting_concurrency(resources: Resources) -> int:
    """How many units the cluster can run at once now, so no trial starts only to wait."""
    res = cluster_resources()
    workers = resources.workers_per_cell
    fits = [res.get("CPU", 0) / (workers * resources.cpus_per_worker)] if resources.cpus_per_worker else []
    if resources.gpus_per_worker:
        fits.append(res.get("GPU", 0) / (workers * resources.gpus_per_worker))
    return max(1, int(min(fits))) if fits else 1


def param_space(items: list[dict], config: TrialConfig) -> dict:
    """One grid point per item. Tune's BasicVariantGenerator makes the trials in this order, creating the
    next only when one of max_concurrent_trials ends, so the items' order is the order they start in
    (a sweep's: longest first, as `lnsub plan --devices` assumes; tests/orchestrator/test_makespan.py checks it)."""
    from ray import tune

    return {"item": tune.grid_search(items), "config": config}


def run_trials(kind: JobKind, items: list[dict], experiment: Path, config: TrialConfig, *, max_concurrent: int,
               reuse_actors: bool = False) -> dict[str, str | None]:
    """One Tune trial per item (each a dict with an "id"), named by that id; item id -> error or None.

    Tune keeps its state in `experiment`, a private folder of this driver: it is never restored (Tune's state
    holds pickles, and nothing is unpickled from a place a trial or another user could write). A trial that
    dies is retried up to max_failures times (Tune's FailureConfig); each item is idempotent in storage, so a
    retried one, or one a later run of the command starts again, continues where it stopped.
    """
    from ray import tune

    trainable = tune.with_resources(TRIALS[kind], trial_resources(config.resources))
    tuner = tune.Tuner(
        trainable, param_space=param_space(items, config),
        # reuse_actors: a new trial runs in a warm process, not one that re-imports torch and transformers
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, trial_name_creator=_trial_name,
                                    trial_dirname_creator=_trial_name, reuse_actors=reuse_actors),
        run_config=tune.RunConfig(name=experiment.name, storage_path=str(experiment.parent), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=config.max_failures)),
    )
    before = signal.getsignal(signal.SIGINT)
    try:
        results = tuner.fit()
    finally:  # Tune installs a SIGINT handler of its own and leaves it after fit: a later Ctrl-C (a study's
        # next step) would only log "ending Ray Tune run" and be swallowed
        if threading.current_thread() is threading.main_thread() and before is not None:
            signal.signal(signal.SIGINT, before)
    return {r.config["item"]["id"]: (one_line(root_cause(r.error)) if r.error else None) for r in results}


def _trial_name(trial) -> str:
    return trial.config["item"]["id"]


@dataclass(frozen=True)
class SessionRecord:
    """A driver's private local Ray, as recorded on its own host (never in storage)."""

    pid: int
    pid_started: float
    host: str
    uid: int
    temp_dir: str
    started: float

    @classmethod
    def mine(cls, temp_dir: str) -> "SessionRecord":
        me = psutil.Process()
        return cls(me.pid, me.create_time(), socket.gethostname(), os.getuid(), str(Path(temp_dir).resolve()),
                   time.time())

    @classmethod
    def parse(cls, raw: bytes) -> "SessionRecord":
        d = json.loads(raw.decode("utf-8"))
        return cls(int(d["pid"]), float(d["pid_started"]), str(d["host"]), int(d["uid"]), str(d["temp_dir"]),
                   float(d["started"]))

    def body(self) -> bytes:
        return (json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n").encode()


def private_temp_dir(path: str) -> bool:
    """Whether `path` is a private Ray temp dir lnsub made (tempfile.mkdtemp("lnsub-ray-")) and this user owns."""
    p = Path(path)
    if not p.is_absolute() or p.parent != Path(tempfile.gettempdir()).resolve() or not p.name.startswith("lnsub-ray-"):
        return False
    try:
        st = p.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()


def _uses_dir(cmdline: list[str], folder: str) -> bool:
    """Whether a command line names `folder`, or a path inside it, as an argument (`--x=PATH` or `PATH`)."""
    for arg in cmdline:
        value = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg
        if value == folder or value.startswith(folder + "/"):
            return True
    return False


def reap_orphans(record: SessionRecord) -> int:
    """Stop the Ray daemons a killed driver left behind; only processes provably its private Ray's.

    A victim runs on this host as this user, was started after that driver, and names the record's private temp
    dir (one lnsub made, see private_temp_dir) as a path argument. A record from another host or user, or naming
    any other folder, reaps nothing.
    """
    if record.host != socket.gethostname() or record.uid != os.getuid() or not private_temp_dir(record.temp_dir):
        log.warning("ignored a Ray session record that is not this host's and user's own private Ray (%s)",
                    record.temp_dir)
        return 0
    victims = []
    for proc in psutil.process_iter(["pid", "cmdline", "uids", "create_time"]):
        try:
            info = proc.info
            if (proc.pid != os.getpid() and info["uids"] is not None and info["uids"].real == os.getuid()
                    and (info["create_time"] or 0) >= record.pid_started - 1
                    and _uses_dir(info["cmdline"] or [], record.temp_dir)):
                victims.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for proc in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(victims, timeout=10)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    return len(victims)
