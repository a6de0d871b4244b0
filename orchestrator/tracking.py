"""MLflow as the place users browse; storage stays the source of truth.

`sync` reconciles an MLflow experiment with what storage holds: one experiment
per sweep, a parent run for the sweep, a child run per cell found by its
`lnsub.cell_id` tag (never a duplicate), and per finished level its metrics
with step=level and its mask under `masks/level_<k>/`. A level counts as
logged once its metrics are there (artifacts go first), so a sync can be
repeated, interrupted or run while the server was down, and nothing is logged
twice or lost.

MLflow is imported inside the functions that call it: it takes seconds to import, and
most commands never touch it.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from lnsub.trainables import metrics as M
from lnsub.trainables.spec import CellSpec
from lnsub.trainables.storage import Storage
from lnsub.trainables.store import CellStore
from lnsub.analysis.sweeps import redact

log = logging.getLogger(__name__)

# what a level logs (names from trainables.metrics, their one home); a task's own metrics carry its name, so
# that `accuracy` never means masked-token accuracy in one run and XNLI's in another
LEVEL_METRICS = (M.LEVEL, M.SPARSITY, M.DENSITY, M.TRAIN_LOSS, M.LEVEL_SECONDS, M.SECONDS_PER_STEP)
TASK_METRIC_NAMES = {("mlm", M.ACCURACY): "mlm_masked_accuracy"}  # the rest are <task>_<metric>
MARKER_METRIC = M.LEVEL  # a level is logged when this metric holds its value
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # MLflow's classic view, not its GenAI one
TAG_SWEEP, TAG_CELL, TAG_ROLE = "lnsub.sweep", "lnsub.cell_id", "lnsub.role"
CELL_TAGS = ("model", "task", "language", "seed")


def default_tracking_uri(storage: "Storage | str | Path") -> str:
    """SQLite inside a folder storage (on an object store a sweep names its tracking server instead)."""
    return f"sqlite:///{Storage.open(storage).root / 'mlflow.db'}"


def experiment_name(sweep: str) -> str:
    return f"lnsub/{sweep}"


def _client(tracking_uri: str):
    # fail fast when a server is down: the next sync catches up, training never waits on MLflow
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # it would tear the live view
    if os.environ.get("AWS_ENDPOINT_URL") and not os.environ.get("MLFLOW_S3_ENDPOINT_URL"):
        os.environ["MLFLOW_S3_ENDPOINT_URL"] = os.environ["AWS_ENDPOINT_URL"]  # MLflow's own name for it
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # one warning of ours is enough
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def _experiment_id(client, sweep: str, storage: Storage, tracking_uri: str) -> str:
    exp = client.get_experiment_by_name(experiment_name(sweep))
    if exp is not None:
        return exp.experiment_id
    local_store = tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri
    # a server decides its own; a local store's artifacts go beside the storage's cells, in the store itself when it
    # is an object store (never into a process's scratch copy of it, gone when the process is)
    where = Storage.open(storage)
    location = None if not local_store else (f"{where.location}/mlartifacts" if where.remote
                                             else (where.root / "mlartifacts").as_uri())
    return client.create_experiment(experiment_name(sweep), artifact_location=location,
                                    tags={TAG_SWEEP: sweep, **EXPERIMENT_KIND})


def _runs_by_tag(client, experiment_id: str, sweep: str) -> tuple[object | None, dict[str, object]]:
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_SWEEP}` = '{sweep}'", max_results=10_000)
    parent, cells = None, {}
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):  # the oldest wins if ever two exist
        tags = run.data.tags
        if tags.get(TAG_ROLE) == "sweep":
            parent = parent or run
        elif TAG_CELL in tags:
            cells.setdefault(tags[TAG_CELL], run)
    return parent, cells


def task_metric(task: str, metric: str) -> str:
    """The MLflow name of a task's metric: xnli_accuracy, mlm_perplexity, mlm_masked_accuracy, ner_f1, ..."""
    return TASK_METRIC_NAMES.get((task, metric), f"{task}_{metric}")


def run_name(spec: CellSpec) -> str:
    """A cell's run as a person reads it: xnli/syn-en/s0."""
    return f"{spec.task}/{spec.language}/s{spec.seed}"


def level_steps(spec: CellSpec) -> dict[int, int]:
    """The step each level is logged at: its sparsity in percent, so MLflow's charts run against sparsity (the
    level itself where two levels would round to one percent)."""
    steps = {k: int(round(100 * s)) for k, s in enumerate(spec.sparsities)}
    return steps if len(set(steps.values())) == len(steps) else {k: k for k in steps}


def level_metrics(spec: CellSpec, record: dict, now: int) -> list:
    """A finished level's metrics, each at the level's step."""
    from mlflow.entities import Metric

    step = level_steps(spec)[record[M.LEVEL]]
    names = {k: k for k in LEVEL_METRICS}
    names.update({k: task_metric(spec.task, k) for k in M.TASK_METRICS})
    return [Metric(name, float(record[k]), now, step) for k, name in names.items()
            if isinstance(record.get(k), (int, float)) and not isinstance(record.get(k), bool)]


def _flat_params(spec: CellSpec) -> dict[str, str]:
    return {k: "None" if v is None else str(v) for k, v in spec.to_dict().items()}


def sync(sweep: str, specs: list[CellSpec], storage: "Storage | str | Path", tracking_uri: str,
         sweep_params: dict | None = None, failed: dict[str, str] | None = None,
         settled: set[str] | None = None) -> dict:
    """Bring MLflow up to date with storage; returns counts of what was logged now.

    `settled` (updated in place) holds cells known to be finished and fully logged in
    this tracking store; a caller that syncs repeatedly passes the same set to skip them.
    """
    from mlflow.entities import Param

    storage = Storage.open(storage)
    client = _client(tracking_uri)
    exp_id = _experiment_id(client, sweep, storage, tracking_uri)
    parent, cells = _runs_by_tag(client, exp_id, sweep)
    if parent is None:
        parent = client.create_run(exp_id, run_name=sweep, tags={TAG_SWEEP: sweep, TAG_ROLE: "sweep"})
        params = [Param(k, str(v)) for k, v in (sweep_params or {}).items()]
        if params:
            client.log_batch(parent.info.run_id, params=params)
    counts = {"runs_created": 0, "levels_logged": 0, "cells_finished": 0}
    settled = settled if settled is not None else set()
    for spec in specs:
        if spec.id in settled:
            continue
        store = CellStore(storage, spec)
        run = cells.get(spec.id)
        if run is None:
            if not store.has_spec():
                continue  # not started: no run yet, so the UI lists what ran
            # a run of its own, listed directly (not folded under the sweep's run), named as a person reads it
            tags = {TAG_SWEEP: sweep, TAG_CELL: spec.id, TAG_ROLE: "cell",
                    **{f"lnsub.{k}": str(getattr(spec, k)) for k in CELL_TAGS}}
            run = client.create_run(exp_id, run_name=run_name(spec), tags=tags)
            client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in _flat_params(spec).items()])
            counts["runs_created"] += 1
        run_id = run.info.run_id
        logged = {int(m.value) for m in client.get_metric_history(run_id, MARKER_METRIC)}
        for record in store.all_metrics():
            level = record[M.LEVEL]
            if level in logged:
                continue
            for path in store.mask_files(level):
                client.log_artifact(run_id, str(path), artifact_path=f"masks/level_{level}")
            client.log_batch(run_id, metrics=level_metrics(spec, record, int(time.time() * 1000)))
            counts["levels_logged"] += 1
        if store.finished():
            if run.info.status != "FINISHED":
                client.set_terminated(run_id, "FINISHED")
                counts["cells_finished"] += 1
            settled.add(spec.id)
        elif failed and spec.id in failed:
            client.set_tag(run_id, "lnsub.last_error", failed[spec.id][:4000])
    if len(settled) == len(specs) and parent.info.status != "FINISHED":
        client.set_terminated(parent.info.run_id, "FINISHED")
    return counts


def experiment_id(tracking_uri: str, sweep: str) -> str | None:
    """The id of a sweep's experiment in a tracking store (None if it has none yet, or the store does not answer)."""
    try:
        exp = _client(tracking_uri).get_experiment_by_name(experiment_name(sweep))
    except Exception:  # noqa: BLE001 - only a convenience for the URL lnsub ui prints
        return None
    return None if exp is None else exp.experiment_id


def find_cell_runs(sweep: str, tracking_uri: str) -> dict[str, list]:
    """Every child run of a sweep, grouped by cell id (a test and `lnsub status` look for duplicates)."""
    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(experiment_name(sweep))
    if exp is None:
        return {}
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_SWEEP}` = '{sweep}'",
                              max_results=10_000)
    out: dict[str, list] = {}
    for run in runs:
        if TAG_CELL in run.data.tags:
            out.setdefault(run.data.tags[TAG_CELL], []).append(run)
    return out


def log_analysis(sweep: str, storage: "Storage | str | Path", tracking_uri: str, role: str, folder: str | Path,
                 params: dict | None = None, metrics: dict[str, float] | None = None) -> str:
    """Log an analysis's files to its run (tag lnsub.role = analysis:<role>) under the sweep's experiment.

    One run per role, reused when the analysis runs again (newer files replace older
    ones under the same artifact path; options are tags, metrics get a new value);
    returns the run id.
    """
    from mlflow.entities import Metric, RunTag

    client = _client(tracking_uri)
    exp_id = _experiment_id(client, sweep, Storage.open(storage), tracking_uri)
    tag = f"analysis:{role}"
    runs = client.search_runs([exp_id], filter_string=f"tags.`{TAG_ROLE}` = '{tag}'")
    parent, _ = _runs_by_tag(client, exp_id, sweep)
    nested = {"mlflow.parentRunId": parent.info.run_id} if parent is not None else {}
    run = runs[0] if runs else client.create_run(exp_id, run_name=f"{sweep}-{role}",
                                                 tags={TAG_SWEEP: sweep, TAG_ROLE: tag, **nested})
    run_id = run.info.run_id
    client.log_artifacts(run_id, str(folder), artifact_path=role)
    now = int(time.time() * 1000)  # options as tags: a rerun with other options updates them, params cannot change
    client.log_batch(run_id, tags=[RunTag(f"lnsub.{k}", str(v)[:5000]) for k, v in (params or {}).items()],
                     metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()])
    if run.info.status != "FINISHED":
        client.set_terminated(run_id, "FINISHED")
    return run_id


def try_log_analysis(sweep: str, storage: "Storage | str | Path", tracking_uri: str, role: str, folder: str | Path,
                     **kw) -> str | None:
    """log_analysis, but a tracking store that is down costs a warning, not the analysis (files stay)."""
    try:
        return log_analysis(sweep, storage, tracking_uri, role, folder, **kw)
    except Exception as e:  # noqa: BLE001 - the files are the result; MLflow is the view
        log.warning("could not log %s to MLflow at %s (%s); the files are in %s (rerun the command to log them)",
                    role, redact(tracking_uri), str(e).splitlines()[0][:200], folder)
        return None
