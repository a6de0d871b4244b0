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
from lnsub.trainables import objectstore
from lnsub.trainables.spec import CellSpec
from lnsub.trainables.store import CellStore
from lnsub.trainables.sweep_state import redact

log = logging.getLogger(__name__)

# what a level logs (names from trainables.metrics, their one home)
LEVEL_METRICS = (M.SPARSITY, M.DENSITY, M.SCORE, *M.TASK_METRICS, M.TRAIN_LOSS, M.LEVEL_SECONDS, M.SECONDS_PER_STEP)
MARKER_METRIC = M.SPARSITY  # a level is logged when this metric has its step
TAG_SWEEP, TAG_CELL, TAG_ROLE = "lnsub.sweep", "lnsub.cell_id", "lnsub.role"
CELL_TAGS = ("model", "task", "language", "seed")


def default_tracking_uri(storage: str | Path) -> str:
    return f"sqlite:///{Path(storage).resolve() / 'mlflow.db'}"


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


def _experiment_id(client, sweep: str, storage: Path, tracking_uri: str) -> str:
    exp = client.get_experiment_by_name(experiment_name(sweep))
    if exp is not None:
        return exp.experiment_id
    local_store = tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri
    # a server decides its own; a local store's artifacts go beside the storage's cells, in the store itself when it
    # is an object store (never into a process's scratch copy of it, gone when the process is)
    where = objectstore.location_of(storage)
    location = None if not local_store else (f"{where}/mlartifacts" if objectstore.is_remote(where)
                                             else (Path(where) / "mlartifacts").as_uri())
    return client.create_experiment(experiment_name(sweep), artifact_location=location, tags={TAG_SWEEP: sweep})


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


def _flat_params(spec: CellSpec) -> dict[str, str]:
    return {k: "None" if v is None else str(v) for k, v in spec.to_dict().items()}


def sync(sweep: str, specs: list[CellSpec], storage: str | Path, tracking_uri: str,
         sweep_params: dict | None = None, failed: dict[str, str] | None = None,
         settled: set[str] | None = None) -> dict:
    """Bring MLflow up to date with storage; returns counts of what was logged now.

    `settled` (updated in place) holds cells known to be finished and fully logged in
    this tracking store; a caller that syncs repeatedly passes the same set to skip them.
    """
    from mlflow.entities import Metric, Param

    storage = Path(storage)
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
            tags = {TAG_SWEEP: sweep, TAG_CELL: spec.id, TAG_ROLE: "cell", "mlflow.parentRunId": parent.info.run_id,
                    **{f"lnsub.{k}": str(getattr(spec, k)) for k in CELL_TAGS}}
            run = client.create_run(exp_id, run_name=spec.id, tags=tags)
            client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in _flat_params(spec).items()])
            counts["runs_created"] += 1
        run_id = run.info.run_id
        logged = {m.step for m in client.get_metric_history(run_id, MARKER_METRIC)}
        for record in store.all_metrics():
            level = record[M.LEVEL]
            if level in logged:
                continue
            for path in store.mask_files(level):
                client.log_artifact(run_id, str(path), artifact_path=f"masks/level_{level}")
            now = int(time.time() * 1000)
            metrics = [Metric(k, float(record[k]), now, level) for k in LEVEL_METRICS
                       if isinstance(record.get(k), (int, float))]
            client.log_batch(run_id, metrics=metrics)
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


def log_analysis(sweep: str, storage: str | Path, tracking_uri: str, role: str, folder: str | Path,
                 params: dict | None = None, metrics: dict[str, float] | None = None) -> str:
    """Log an analysis's files to its run (tag lnsub.role = analysis:<role>) under the sweep's experiment.

    One run per role, reused when the analysis runs again (newer files replace older
    ones under the same artifact path; options are tags, metrics get a new value);
    returns the run id.
    """
    from mlflow.entities import Metric, RunTag

    client = _client(tracking_uri)
    exp_id = _experiment_id(client, sweep, Path(storage), tracking_uri)
    tag = f"analysis:{role}"
    runs = client.search_runs([exp_id], filter_string=f"tags.`{TAG_ROLE}` = '{tag}'")
    run = runs[0] if runs else client.create_run(exp_id, run_name=f"{sweep}-{role}",
                                                 tags={TAG_SWEEP: sweep, TAG_ROLE: tag})
    run_id = run.info.run_id
    client.log_artifacts(run_id, str(folder), artifact_path=role)
    now = int(time.time() * 1000)  # options as tags: a rerun with other options updates them, params cannot change
    client.log_batch(run_id, tags=[RunTag(f"lnsub.{k}", str(v)[:5000]) for k, v in (params or {}).items()],
                     metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()])
    if run.info.status != "FINISHED":
        client.set_terminated(run_id, "FINISHED")
    return run_id


def try_log_analysis(sweep: str, storage: str | Path, tracking_uri: str, role: str, folder: str | Path,
                     **kw) -> str | None:
    """log_analysis, but a tracking store that is down costs a warning, not the analysis (files stay)."""
    try:
        return log_analysis(sweep, storage, tracking_uri, role, folder, **kw)
    except Exception as e:  # noqa: BLE001 - the files are the result; MLflow is the view
        log.warning("could not log %s to MLflow at %s (%s); the files are in %s (rerun the command to log them)",
                    role, redact(tracking_uri), str(e).splitlines()[0][:200], folder)
        return None
