"""Every Ray call of lnsub lives here (Ray's API moves between releases; pinned to 2.60).

Train V2 is on in Ray 2.60: a Trainer cannot be handed to a Tuner. A cell with
several workers runs as a `TorchTrainer` built and `.fit()`-ed inside its Tune
function trial (or directly, from `run_cell_on_workers`), with a run name derived
from the cell id so a retried or restarted cell finds its own run. See
docs/ray-2.60-notes.md for what was checked and how.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from trainables.imp import CellResult, run_cell
from trainables.spec import CellSpec

log = logging.getLogger(__name__)

QUIET_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",  # with verbose=0 the legacy engine prints nothing; we draw our own progress
    "RAY_AUTH_MODE": "disabled",  # no token file in ~/.ray for a local instance
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
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
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        return False
    temp_dir = temp_dir or tempfile.mkdtemp(prefix="lnsub-ray-")
    ray.init(address="local", _temp_dir=str(Path(temp_dir).resolve()), include_dashboard=False,
             num_cpus=num_cpus, resources=resources, log_to_driver=False, logging_level=logging.WARNING)
    return True


def stop() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def cluster_resources() -> dict:
    import ray

    return dict(ray.cluster_resources())


def _cell_worker(config: dict) -> None:
    """Per-worker function of a cell's TorchTrainer: Accelerate inside, rank 0 writes."""
    import ray.train

    from trainables.imp import Hooks
    from trainables.imp import run_cell as run

    spec = CellSpec.from_dict(config["spec"])
    hooks = None
    crash = config.get("inject_crash")  # fault injection for tests: {"rank", "level", "step", "marker"}
    if crash and ray.train.get_context().get_world_rank() == crash["rank"]:
        def after_step(level: int, step: int) -> None:
            marker = Path(crash["marker"])
            if (level, step) == (crash["level"], crash["step"]) and not marker.exists():
                marker.write_text("crashed once\n")
                os._exit(1)  # a hard death, as when a node or process is lost
        hooks = Hooks(after_step=after_step)
    result = run(spec, config["storage"], checkpoint_every=config["checkpoint_every"], hooks=hooks)
    ray.train.report({"levels": len(result.levels), "steps_trained": result.steps_trained})


def train_run_name(spec: CellSpec) -> str:
    return f"cell-{spec.id}"


def run_cell_on_workers(spec: CellSpec, storage: str | Path, workers: int = 1, use_gpu: bool = False,
                        resources_per_worker: dict | None = None, max_failures: int = 2,
                        checkpoint_every: int = 100, inject_crash: dict | None = None) -> CellResult:
    """Run a cell on `workers` Ray Train workers; with one worker, in this process (no Train start-up).

    A worker that dies makes Train restart the group (up to max_failures times);
    the cell then resumes from its own last checkpoint in storage.
    """
    if workers <= 1:
        return run_cell(spec, storage, checkpoint_every=checkpoint_every)
    import ray.train
    from ray.train.torch import TorchTrainer

    from trainables.store import CellStore

    storage = Path(storage).resolve()
    trainer = TorchTrainer(
        _cell_worker,
        train_loop_config={"spec": spec.to_dict(), "storage": str(storage), "checkpoint_every": checkpoint_every,
                           "inject_crash": inject_crash},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                               resources_per_worker=resources_per_worker or {"CPU": 1}),
        run_config=ray.train.RunConfig(name=train_run_name(spec), storage_path=str(storage / "ray-train"),
                                       failure_config=ray.train.FailureConfig(max_failures=max_failures)),
    )
    result = trainer.fit()
    store = CellStore(storage, spec)  # storage, not Ray's result, is the source of truth
    if not store.finished():
        raise RuntimeError(f"cell {spec.id}: Ray Train returned but the cell is not finished in {store.root}")
    return CellResult(spec.id, store.all_metrics(), int((result.metrics or {}).get("steps_trained", 0)), store.root)
