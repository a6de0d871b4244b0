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
import logging
import os
import tempfile
from pathlib import Path

import psutil
import torch

from lnsub.trainables import faults, objectstore
from lnsub.trainables.atomic import remove, write_text
from lnsub.trainables.imp import CellResult, Hooks, run_cell
from lnsub.trainables.metrics import LEVEL, SCORE, SPARSITY
from lnsub.trainables.spec import CellSpec
from lnsub.trainables.store import CellStore
from lnsub.trainables.transfer import TransferJob, run_transfer_job

log = logging.getLogger(__name__)

QUIET_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",  # with verbose=0 the legacy engine prints nothing; we draw our own progress
    "RAY_AUTH_MODE": "disabled",  # no token file in ~/.ray for a local instance
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


def quiet() -> None:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def start(address: str | None = None, num_cpus: int | None = None, resources: dict | None = None,
          temp_dir: str | None = None) -> bool:
    """Connect to a running cluster, or start a private local instance; True if we started it.

    A local instance gets a temp dir of its own and no dashboard, so it never
    touches another Ray on the same machine. Stop it with `stop()`, never `ray stop`.
    """
    import ray

    quiet()
    if ray.is_initialized():
        return False
    if address and address != "local":
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, runtime_env=_runtime_env())
        return False
    temp_dir = temp_dir or tempfile.mkdtemp(prefix="lnsub-ray-")
    ray.init(address="local", _temp_dir=str(Path(temp_dir).resolve()), include_dashboard=False,
             num_cpus=num_cpus, resources=resources, log_to_driver=False, logging_level=logging.WARNING,
             runtime_env=_runtime_env())
    return True


def _runtime_env() -> dict | None:
    """Carry a test's fault plan to every worker, on every node."""
    return {"env_vars": {faults.ENV: os.environ[faults.ENV]}} if faults.active() else None


def stop() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


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


def run_cell_on_workers(spec: CellSpec, storage: str | Path, workers: int = 1, use_gpu: bool = False,
                        resources_per_worker: dict | None = None, max_failures: int = 2,
                        checkpoint_every: int = 100) -> CellResult:
    """Run a cell on `workers` Ray Train workers; with one worker, in this process (no Train start-up).

    A worker that dies makes Train restart the group (up to max_failures times);
    the cell then resumes from its own last checkpoint in storage.
    """
    if workers <= 1:
        return run_cell(spec, storage, checkpoint_every=checkpoint_every, hooks=Hooks(after_step=_fault_hook(spec.id)))
    import ray.train
    from ray.train.torch import TorchTrainer

    root = objectstore.open_root(storage)  # a local path, or this process's scratch copy of a store
    trainer = TorchTrainer(
        _cell_worker,
        train_loop_config={"spec": spec.to_dict(), "storage": objectstore.location_of(root),
                           "checkpoint_every": checkpoint_every},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                               resources_per_worker=resources_per_worker or {"CPU": 1}),
        run_config=ray.train.RunConfig(name=train_run_name(spec), storage_path=str(root / "ray-train"),
                                       failure_config=ray.train.FailureConfig(max_failures=max_failures)),
    )
    result = trainer.fit()
    store = CellStore(root, spec)  # storage, not Ray's result, is the source of truth
    store.pull()
    if not store.finished():
        raise RuntimeError(f"cell {spec.id}: Ray Train returned but the cell is not finished in {store.root}")
    return CellResult(spec.id, store.all_metrics(), int((result.metrics or {}).get("steps_trained", 0)), store.root)


# --- batches of idempotent jobs: one Tune function trial each -----------------------------------------

@contextlib.contextmanager
def _failure_noted(note: Path):
    """Leave the last error of a trial where `lnsub status` and the driver read it; clear it on success."""
    try:
        yield
    except BaseException as e:
        with contextlib.suppress(OSError):  # the store may be what failed: the error is Tune's to report then
            write_text(note, f"{type(e).__name__}: {e}\n")
        raise
    remove(note)


def _cell_trial(config: dict) -> None:
    """A Tune trial: one cell. With several workers it fits a TorchTrainer named after the cell id."""
    from ray import tune

    spec = CellSpec.from_dict(config["item"]["spec"])
    torch.set_num_threads(max(1, int(config["cpus_per_worker"])))  # trials side by side must not oversubscribe

    def level_done(level: int, record: dict) -> None:
        tune.report({LEVEL: level, SCORE: record[SCORE], SPARSITY: record[SPARSITY]})

    with _failure_noted(objectstore.open_root(config["storage"]) / config["failures"] / f"{spec.id}.txt"):
        if config["workers_per_cell"] > 1:
            result = run_cell_on_workers(spec, config["storage"], workers=config["workers_per_cell"],
                                         use_gpu=config["gpus_per_worker"] > 0,
                                         resources_per_worker=config["resources_per_worker"],
                                         max_failures=config["max_failures"],
                                         checkpoint_every=config["checkpoint_every"])
        else:
            result = run_cell(spec, config["storage"], checkpoint_every=config["checkpoint_every"],
                              hooks=Hooks(level_done=level_done, after_step=_fault_hook(spec.id)))
    last = result.levels[-1]
    tune.report({LEVEL: last[LEVEL], SCORE: last[SCORE], SPARSITY: last[SPARSITY], "done": 1})


def _transfer_trial(config: dict) -> None:
    """A Tune trial: one transfer job (a source mask trained on a target), on one worker."""
    from ray import tune

    job = TransferJob.from_dict(config["item"]["job"])
    torch.set_num_threads(max(1, int(config["cpus_per_worker"])))
    hook = _fault_hook(job.id)
    with _failure_noted(objectstore.open_root(config["storage"]) / config["failures"] / f"{job.id}.txt"):
        record = run_transfer_job(job, config["storage"], checkpoint_every=config["checkpoint_every"],
                                  after_step=(lambda step: hook(None, step)) if hook else None)
    tune.report({SCORE: record[SCORE], "done": 1})


TRIALS = {"cell": _cell_trial, "transfer": _transfer_trial}  # what a batch's items are


def trial_resources(workers_per_cell: int, cpus_per_worker: float, gpus_per_worker: float) -> dict:
    """What the Tune trial itself reserves.

    With one worker the trial is the worker. With several, the trial only hosts
    the TorchTrainer's controller (0 CPUs) and the workers get their own
    placement group; an all-zero request is refused, hence the token memory.
    """
    if workers_per_cell == 1:
        return {"cpu": cpus_per_worker, "gpu": gpus_per_worker}
    return {"cpu": 0, "memory": 1024 * 1024}


def fitting_concurrency(workers_per_cell: int, cpus_per_worker: float, gpus_per_worker: float) -> int:
    """How many units the cluster can run at once now, so no trial starts only to wait."""
    res = cluster_resources()
    fits = [res.get("CPU", 0) / (workers_per_cell * cpus_per_worker)] if cpus_per_worker else []
    if gpus_per_worker:
        fits.append(res.get("GPU", 0) / (workers_per_cell * gpus_per_worker))
    return max(1, int(min(fits))) if fits else 1


def param_space(items: list[dict], config: dict) -> dict:
    """One grid point per item. Tune's BasicVariantGenerator makes the trials in this order, creating the
    next only when one of max_concurrent_trials ends, so the items' order is the order they start in
    (a sweep's: longest first, as `lnsub plan --gpus` assumes; tests/orchestrator/test_makespan.py checks it)."""
    from ray import tune

    return {"item": tune.grid_search(items), **config}


def run_trials(kind: str, items: list[dict], experiment: Path, config: dict, *, workers_per_cell: int,
               cpus_per_worker: float, gpus_per_worker: float, max_concurrent: int, max_failures: int,
               resume: bool, reuse_actors: bool = False) -> dict[str, str | None]:
    """One Tune trial per item (each a dict with an "id"), named by that id; item id -> error or None.

    The experiment lives in `experiment` and is restored from there on resume; a
    trial that dies is retried up to max_failures times (Tune's FailureConfig), and
    each item is idempotent in storage, so a retried or restarted one continues.
    """
    from ray import tune

    config = {**config, "workers_per_cell": workers_per_cell, "cpus_per_worker": cpus_per_worker,
              "gpus_per_worker": gpus_per_worker, "max_failures": max_failures,
              "resources_per_worker": {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}}
    trainable = tune.with_resources(TRIALS[kind], trial_resources(workers_per_cell, cpus_per_worker, gpus_per_worker))
    tuner = None
    if resume and tune.Tuner.can_restore(str(experiment)):
        try:
            tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_errored=True)
            log.info("restored the Tune experiment in %s", experiment)
        except Exception as e:  # noqa: BLE001 - the items' own idempotence covers what Tune cannot
            log.warning("could not restore the Tune experiment (%s); starting it afresh, finished work is kept", e)
    if tuner is None:
        tuner = tune.Tuner(
            trainable, param_space=param_space(items, config),
            # reuse_actors: a new trial runs in a warm process, not one that re-imports torch and transformers
            tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, trial_name_creator=_trial_name,
                                        trial_dirname_creator=_trial_name, reuse_actors=reuse_actors),
            run_config=tune.RunConfig(name=experiment.name, storage_path=str(experiment.parent), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=max_failures)),
        )
    results = tuner.fit()
    return {r.config["item"]["id"]: (f"{type(r.error).__name__}: {r.error}"[:2000] if r.error else None)
            for r in results}


def _trial_name(trial) -> str:
    return trial.config["item"]["id"]


def reap_orphans(temp_dir: str) -> int:
    """Stop the Ray daemons a killed driver left behind in its private temp dir; never anyone else's."""
    victims = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.pid != os.getpid() and temp_dir in " ".join(proc.info["cmdline"] or []):
                victims.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for proc in victims:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(victims, timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    return len(victims)
