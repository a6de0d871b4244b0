"""The `lnsub` command line: thin, each command calls one library function."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import os
import sys
import time
import typing
from pathlib import Path

import typer
from rich.console import Console
from rich.live import Live
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lnsub.orchestrator import analyses, cost, makespan, progress, ray_backend, tracking
from lnsub.orchestrator import ui as mlflow_ui
from lnsub.orchestrator.grid import SHIPPED
from lnsub.orchestrator.grid import plan as make_plan
from lnsub.orchestrator.study import run_study
from lnsub.orchestrator.sweep import DEFAULT_STORAGE, list_sweeps, run_sweep, sweep_status, sync_sweep
from lnsub.trainables.checkpointing import DEFAULT_CHECKPOINT_EVERY
from lnsub.trainables.errors import LnsubError
from lnsub.trainables.spec import SCHEMA
from lnsub.trainables.tasks import TASKS
from lnsub.analysis.sweeps import check_name, load_state, open_storage, redact, status_counts
from lnsub.trainables.testbed.generate import TestbedConfig
from lnsub.orchestrator.rehearsal.build import ensure_rehearsal
from lnsub.orchestrator.rehearsal.decoder import ensure_decoder_rehearsal
from lnsub.trainables.testbed.tinybert import TinyBertConfig, ensure_tiny_model, pretrain_report

GRID_HELP = f"A shipped grid ({', '.join(SHIPPED)}) or a YAML path."
TaskName = enum.Enum("TaskName", {t: t for t in TASKS}, type=str)  # --task's choices, shown in --help
DeviceName = enum.Enum("DeviceName", {d: d for d in cost.DEVICES}, type=str)  # plan --device's choices

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Language-neutral sub-networks: lottery-ticket sweeps over languages x tasks x sparsity.")
console = Console()


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=Console(stderr=True), show_path=False)], force=True)
    for noisy in ("datasets", "transformers", "urllib3", "filelock", "fsspec", "httpx", "mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for ray_logger in ("ray", "ray.tune", "ray.train"):  # a trial's failure is one line of ours; Ray's dump with -v
        logging.getLogger(ray_logger).setLevel(logging.DEBUG if verbose else logging.CRITICAL)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if not verbose:  # transformers' "Loading weights" bars would tear the live view
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # MLflow configures its own loggers when imported ("Creating initial MLflow database tables..."): tell it first
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "DEBUG" if verbose else "WARNING")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"lnsub {version('lnsub')} (spec schema {SCHEMA})")
        raise typer.Exit()


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging, and Ray's and MLflow's own."),
          version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print lnsub's version and exit.")) -> None:
    _setup_logging(verbose)


@app.command()
def testbed(
    seed: int = typer.Option(0, help="Seed of the latent grammar and lexicons."),
    anchor_fraction: float = typer.Option(0.0, help="Share of content words written the same in every twin."),
    noise: float = typer.Option(0.0, help="Per-word chance of a random replacement outside entities."),
) -> None:
    """Build the synthetic multilingual testbed and pretrain its tiny BERT (cached; a rerun does nothing)."""
    if not 0.0 <= anchor_fraction < 1.0 or not 0.0 <= noise < 1.0:
        raise LnsubError("--anchor-fraction and --noise must lie in [0, 1)")
    config = dataclasses.replace(TinyBertConfig(), testbed=TestbedConfig(seed=seed, anchor_fraction=anchor_fraction, noise=noise))
    path = ensure_tiny_model(config)
    report = pretrain_report(path)
    table = Table(title=f"tiny multilingual BERT ({report['parameters']:,} parameters, "
                        f"pretrained in {report['seconds']} s)")
    for col in ("language", "masked-token accuracy", "unigram baseline"):
        table.add_column(col, justify="right")
    for lang, r in report["per_language"].items():
        table.add_row(lang, f"{r['accuracy']:.3f}", f"{r['unigram_baseline']:.3f}")
    console.print(table)
    console.print(f"model and tokenizer: [bold]{path}[/bold]")


@app.command()
def rehearsal(out: str = typer.Option(None, "--out", help="Folder for the model and the data (default: "
                                                          "lnsub-rehearsal, or lnsub-rehearsal-decoder with --decoder; "
                                                          "the rehearsal grids read these from the current folder)."),
              decoder: bool = typer.Option(False, "--decoder", help="The Qwen2.5-0.5B-shaped decoder rehearsal of "
                                                                     "one-shot discovery (grid rehearsal-decoder).")) -> None:
    """Build the mBERT-shaped rehearsal (random weights in mBERT's architecture, hub-faithful local copies of
    Wikipedia, WikiANN and XNLI for en, fr, ar, fa, hi, sw), or with --decoder the Qwen2.5-0.5B-shaped one
    (cached; a rerun does nothing)."""
    if decoder:
        paths, grid = ensure_decoder_rehearsal(out or "lnsub-rehearsal-decoder"), "rehearsal-decoder"
    else:
        paths, grid = ensure_rehearsal(out or "lnsub-rehearsal"), "rehearsal"
    console.print(f"model: [bold]{paths['model']}[/bold]\ndata:  [bold]{paths['data']}[/bold]")
    console.print(f"next: lnsub sweep --grid {grid}   (run from the folder that holds "
                  f"{paths['model'].parent.name}/, as the grid's paths are relative)")


@app.command("ray-token")
def ray_token(path: str = typer.Option("~/.lnsub/ray_auth_token", "--path",
                                       help="Where the token lives (the cluster configs mount it from here).")) -> None:
    """Make the token a Ray cluster's nodes are started with (mode 0600; kept if it exists): `ray up` mounts it
    on every node, and only who holds it runs code on the cluster."""
    token, made = ray_backend.cluster_token(Path(path).expanduser())
    console.print(f"{'made' if made else 'kept'} the cluster's Ray token: [bold]{token}[/bold]  (next: ray up "
                  f"cluster.yaml; a driver elsewhere joins with RAY_AUTH_TOKEN_PATH={token})")


# --- options shared by every command that reads a sweep ---------------------------------------------
NameOpt = typer.Option(None, "--name", metavar="NAME", help="The sweep's name (default: the grid's name).")
StorageOpt = typer.Option(DEFAULT_STORAGE, "--storage", metavar="PATH|URI", envvar="LNSUB_STORAGE", show_envvar=True,
                          help="Where cells, sweeps and the default MLflow store live: a folder or s3://bucket/prefix.")
TrackingOpt = typer.Option(None, "--tracking-uri", metavar="URI", envvar="MLFLOW_TRACKING_URI", show_envvar=True,
                           help="MLflow tracking URI (default: the sweep's own, or SQLite inside --storage).")
AddressOpt = typer.Option(None, "--address", metavar="HOST:PORT", envvar="RAY_ADDRESS", show_envvar=True,
                          help="A running Ray cluster ('auto' on one of its nodes; joined with its token, "
                               "RAY_AUTH_TOKEN_PATH); default: a private local Ray.")
DataDirOpt = typer.Option(None, "--data-dir", metavar="DIR", help="Local copies of the datasets, DIR/<task>/<language>/<split>.jsonl "
                                                    "(or .json, .parquet) in the hub's schema, for every real-language "
                                                    "cell (over a grid's data_dir; part of the cell ids). "
                                                    "Default: the Hugging Face Hub.")


def _fmt_hours(h: float) -> str:
    return f"{h * 60:.1f} min" if h < 1 else f"{h:,.1f} h"


@app.command()
def plan(grid: str = typer.Option("smoke", "--grid", metavar="GRID", help=GRID_HELP),
         workers_per_cell: int = typer.Option(None, "--workers-per-cell", help="Ray Train workers per cell."),
         gpus_per_worker: float = typer.Option(None, "--gpus-per-worker", help="GPUs per worker."),
         gpus: int = typer.Option(None, "--devices", "--gpus", metavar="N",
                                  help="Also show the sweep's makespan on N devices beside its lower bound: GPUs, "
                                       "or CPU workers for a CPU-only grid (--gpus is the same option)."),
         max_concurrent: int = typer.Option(None, "--max-concurrent", help="The sweep's cap on cells at once."),
         device: DeviceName = typer.Option(None, "--device", help="Predict each cell's hours on this GPU from "
                                           "its FLOPs (orchestrator/cost.py); the makespan then uses them."),
         checkpoint_every: int = typer.Option(DEFAULT_CHECKPOINT_EVERY, "--checkpoint-every", min=0,
                                              help="As lnsub sweep's: steps between checkpoints (for --device)."),
         data_dir: str = DataDirOpt) -> None:
    """Show the cells a grid expands to, what each asks for, and the expected cost, before anything runs."""
    if gpus is not None and not 1 <= gpus <= makespan.MAX_DEVICES:
        raise LnsubError(f"--devices must lie in [1, {makespan.MAX_DEVICES:,}], got {gpus}")
    if max_concurrent is not None and not 1 <= max_concurrent <= makespan.MAX_DEVICES:
        raise LnsubError(f"--max-concurrent must lie in [1, {makespan.MAX_DEVICES:,}], got {max_concurrent}")
    p = make_plan(grid, data_dir=data_dir, workers_per_cell=workers_per_cell, gpus_per_worker=gpus_per_worker)
    costs = None if device is None else cost.predict(p, cost.get_device(device.value),
                                                      lambda spec: cost.lnsub_policy(spec, checkpoint_every))
    timed = p if costs is None else cost.with_hours(p, costs)
    schedule = _schedule(timed, gpus, max_concurrent) if gpus is not None else None
    r = p.resources
    table = Table(title=f"grid {p.name}: {len(p.cells)} cells ({p.source})")
    for col in ("cell id", "task", "language", "seed", "levels", "sparsity", "expected"):  # levels: 0 (dense) .. L
        table.add_column(col)
    for c in p.cells:
        s = c.spec
        table.add_row(s.id, s.task, s.language, str(s.seed), f"0..{s.levels}",
                      f"0-{s.sparsities[-1]:.0%}", _fmt_hours(c.cost_hours))
    console.print(table)
    for sk in p.skipped:
        console.print(f"skipped {sk.task}/{sk.language}: {sk.reason}")
    for folder in sorted({c.spec.data_dir for c in p.cells if c.spec.data_dir}):
        console.print(f"data: {folder}")
    console.print(f"each cell asks for {r.workers_per_cell} worker(s) x ({r.cpus_per_worker:g} CPU, "
                  f"{r.gpus_per_worker:g} GPU)")
    for task, (n, hours) in sorted(p.cost_by_task().items()):
        console.print(f"{task}: {n} cells, {_fmt_hours(hours)} expected")
    console.print(f"total expected: [bold]{_fmt_hours(p.total_cost_hours)}[/bold] of "
                  f"{'GPU' if r.gpus_per_worker else 'CPU-worker'} time x {r.workers_per_cell} worker(s) per cell")
    if costs is not None:
        _print_cost(costs, cost.get_device(device.value), p.total_cost_hours)
    if schedule is not None:
        _print_makespan(timed, schedule, max_concurrent)


def _print_cost(costs: list[cost.CellCost], device: cost.Device, grid_hours: float) -> None:
    table = Table(title=f"predicted on {device.name}, lnsub's configuration (orchestrator/cost.py)")
    for col in ("task", "cells", "examples/round", "tokens/example", "TFLOPs/cell", "hours/cell", "hours"):
        table.add_column(col, justify="right")
    for row in cost.task_rows(costs):
        table.add_row(row.task, str(row.cells), f"{row.examples:,.0f}", f"{row.tokens:,.1f}", f"{row.tflops:,.0f}",
                      f"{row.hours_per_cell:,.2f}", f"{row.hours:,.1f}")
    console.print(table)
    total = sum(c.hours for c in costs)
    console.print(f"total predicted: [bold]{total:,.1f} {device.name} hours[/bold] (the grid's cost_hours: "
                  f"{grid_hours:,.1f} h); by part: " + ", ".join(f"{k} {v:,.1f} h" for k, v in cost.parts(costs).items()))
    console.print("the makespan below uses the predicted hours, cells in the order the sweep submits them")


def _schedule(p, devices: int, max_concurrent: int | None) -> makespan.Schedule:
    """The sweep on `devices` devices as lnsub runs it: longest first, its concurrency rule."""
    r = p.resources
    try:
        return makespan.simulate([c.cost_hours for c in p.cells], devices, r.workers_per_cell, r.gpus_per_worker,
                                 max_concurrent)
    except ValueError:
        per_cell = makespan.devices_per_cell(r.workers_per_cell, r.gpus_per_worker)
        raise LnsubError(f"--devices {devices}: one cell holds {per_cell:g} {'GPUs' if r.gpus_per_worker else 'CPU workers'}"
                         f" ({r.workers_per_cell} workers per cell), more than there are") from None


def _print_makespan(p, s: makespan.Schedule, max_concurrent: int | None) -> None:
    r = p.resources
    unit = "GPU" if r.gpus_per_worker else "CPU worker"
    capped = " (--max-concurrent)" if max_concurrent and s.slots == max_concurrent < s.devices // s.per_cell else ""
    console.print(f"on {s.devices:g} {unit}s: {s.slots} cells at a time{capped}, {s.per_cell:g} {unit}(s) each, "
                  f"longest first")
    console.print(f"makespan [bold]{_fmt_hours(s.makespan)}[/bold], lower bound {_fmt_hours(s.bound)}, "
                  f"ratio {s.ratio:.4f}")
    console.print(f"  (bound: max(longest cell {_fmt_hours(s.longest)}, {_fmt_hours(s.device_hours)} of {unit} "
                  f"time / {s.devices:g}))")
    if not s.longest_sets_bound:
        return
    table = Table(title=f"the longest cells set the bound; more workers per cell on {s.devices:g} {unit}s:")
    for col in ("workers per cell", f"{unit}s per cell", "longest cell", "bound", "makespan", "ratio"):
        table.add_column(col, justify="right")
    costs = [c.cost_hours for c in p.cells]
    for row in makespan.workers_table(costs, s.devices, r.gpus_per_worker, max_concurrent):
        table.add_row(str(row.workers_per_cell), f"{row.per_cell:g}", _fmt_hours(row.longest),
                      _fmt_hours(row.bound), _fmt_hours(row.makespan), f"{row.ratio:.4f}")
    console.print(table)
    console.print(f"assumes a cell on w workers takes cost/w hours (perfect scaling)\n"
                  f"and holds w x {r.gpus_per_worker or 1:g} {unit}(s) while it runs")


def _progress_title(statuses, estimate=None, elapsed: float | None = None) -> str:
    counts = status_counts(statuses)
    parts = [f"{counts['done']}/{len(statuses)} cells done"] + [f"{v} {k}" for k, v in counts.items()
                                                               if v and k != "done"]
    if elapsed is not None:
        parts.append(f"elapsed {progress.duration(elapsed)}")
    if estimate is not None and estimate.done < estimate.total:
        basis = (f"grid's cost x {estimate.factor:.2f} measured on {estimate.measured_levels} level(s)"
                 if estimate.measured_levels else "grid's cost_hours")
        parts.append(f"ETA ~{progress.duration(estimate.remaining_seconds)} ({basis})")
    return ", ".join(parts)


def _progress_table(statuses, estimate=None, elapsed: float | None = None) -> Table:
    """One row a cell: its state, its last finished level of the grid's `levels` (0: dense) with that level's
    sparsity, and the score there with its metric's name."""
    table = Table(title=_progress_title(statuses, estimate, elapsed))
    for col in ("cell", "id", "state", "level", "sparsity", "score"):
        table.add_column(col)
    colour = {"done": "green", "running": "yellow", "interrupted": "magenta", "failed": "red", "pending": "dim"}
    for st in statuses:
        s = st.spec
        level = "-" if st.last_level is None else f"{st.last_level} of {s.levels}"
        score = "" if st.score is None else f"{s.task} {st.metric} {st.score:.4g}"
        table.add_row(f"{s.task}/{s.language}/s{s.seed}", s.id.rsplit("-", 1)[-1][:8],
                      f"[{colour[st.state]}]{st.state}[/]", level,
                      "" if st.sparsity is None else f"{st.sparsity:.0%}", score)
    return table


@app.command()
def sweep(grid: str = typer.Option(None, "--grid", metavar="GRID", help=GRID_HELP),
          name: str = NameOpt, storage: str = StorageOpt, tracking_uri: str = TrackingOpt,
          workers_per_cell: int = typer.Option(None, "--workers-per-cell", help="Ray Train workers per cell."),
          gpus_per_worker: float = typer.Option(None, "--gpus-per-worker", help="GPUs per worker."),
          max_concurrent: int = typer.Option(None, "--max-concurrent", help="Cap on cells running at once."),
          resume: bool = typer.Option(False, "--resume", help="Continue an interrupted sweep of this --name."),
          checkpoint_every: int = typer.Option(DEFAULT_CHECKPOINT_EVERY, "--checkpoint-every", min=1,
                                               help="Optimizer steps between a round's checkpoints."),
          address: str = AddressOpt,
          max_failures: int = typer.Option(3, "--max-failures", min=0,
                                           help="Retries of a cell whose trial dies (a lost node, a store outage)."),
          data_dir: str = DataDirOpt) -> None:
    """Run the grid as a Ray Tune sweep: one trial per cell, fault tolerant, resumable, tracked in MLflow."""
    if name is not None:  # before anything else: an empty --name must not fall back to the grid's name
        check_name(name, "--name")
    if resume and name is None:
        raise LnsubError("--resume continues the sweep named by --name (lnsub status lists the sweeps in --storage)")
    if grid is None and not resume:
        grid = "smoke"
    # transient: the live view goes when the sweep ends, and the final table is printed once
    live = Live(console=console, refresh_per_second=2, transient=True) if console.is_terminal else None
    last_line, began = [0.0], time.time()

    def render(statuses, estimate) -> None:
        if live is not None:
            live.update(_progress_table(statuses, estimate, time.time() - began))
        elif time.time() - last_line[0] > 30:
            last_line[0] = time.time()
            console.print(_progress_title(statuses, estimate, time.time() - began))

    with live if live is not None else contextlib.nullcontext():
        result = run_sweep(grid, name=name, storage=storage, tracking_uri=tracking_uri,
                           workers_per_cell=workers_per_cell, gpus_per_worker=gpus_per_worker,
                           max_concurrent=max_concurrent, resume=resume, address=address, render=render,
                           max_failures=max_failures,
                           checkpoint_every=checkpoint_every, data_dir=data_dir)
    _sweep_ended(result, storage)


def _sweep_ended(result, storage: str) -> None:
    """What a finished (or stopped) sweep prints, and its exit status: 1 for failed cells, 130 for unfinished."""
    console.print(_progress_table(result.statuses))
    counts = status_counts(result.statuses)
    if not result.errors and counts["done"] == len(result.statuses):
        console.print(f"nothing left to do: every cell of sweep [bold]{result.name}[/bold] was done already")
    console.print(f"sweep [bold]{result.name}[/bold] ran for {result.seconds:.0f} s "
                  f"({result.compute_seconds:.0f} s of cell compute): {counts['done']}/{len(result.statuses)} cells done")
    where = result.storage.location  # a store's URI, not this process's scratch copy of it
    console.print(f"results: {where}/cells  (sweep state: {where}/sweeps/{result.name})")
    console.print(f"MLflow: {redact(result.tracking_uri)}" + ("" if result.mlflow_synced else
                  "  [red](unreachable: run `lnsub sync` when it is back)[/red]"))
    if result.tracking_uri.startswith(("http://", "https://")):  # a tracking server is its own UI
        console.print(f"browse: {redact(result.tracking_uri)}")
    else:
        console.print(f"browse: lnsub ui --name {result.name} --storage {storage}   (it prints the page to open)")
    failed = [cid for cid, err in result.errors.items() if err]
    if failed:
        for cid in failed:
            console.print(f"[red]failed[/red] {cid}: {result.errors[cid].splitlines()[0][:300]}\n"
                          f"  traceback: {where}/sweeps/{result.name}/failures/{cid}.traceback.txt", soft_wrap=True)
        console.print(f"resume with: lnsub sweep --name {result.name} --storage {storage} --resume")
        raise typer.Exit(1)
    unfinished = len(result.statuses) - counts["done"]
    if unfinished:  # stopped before its end (Ctrl-C, a signal): nothing is lost, the next run continues
        console.print(f"[magenta]stopped[/magenta] with {unfinished} cell(s) unfinished; resume with: lnsub sweep "
                      f"--name {result.name} --storage {storage} --resume")
        raise typer.Exit(130)


@app.command()
def study(grid: str = typer.Option("smoke", "--grid", metavar="GRID", help=GRID_HELP),
          name: str = NameOpt, storage: str = StorageOpt, tracking_uri: str = TrackingOpt,
          control: str = typer.Option(None, "--control", metavar="GRID",
                                      help="A control grid (the same grid on a non-multilingual model): its study "
                                           "too, and its claims side by side (default: the grid's study.control)."),
          max_concurrent: int = typer.Option(None, "--max-concurrent", help="Cap on cells or jobs at once."),
          address: str = AddressOpt) -> None:
    """A grid's whole study: sweep, tickets, analyze, transfer, similarity, report; resumable (rerun it), nothing redone."""
    if name is not None:
        check_name(name, "--name")
    live = Live(console=console, refresh_per_second=2, transient=True) if console.is_terminal else None
    began = time.time()

    def render(statuses, estimate) -> None:
        if live is not None:
            live.update(_progress_table(statuses, estimate, time.time() - began))

    def announce(text: str) -> None:
        console.print(f"[dim]{progress.duration(time.time() - began):>6}[/dim] study {text}")

    with live if live is not None else contextlib.nullcontext():
        result = run_study(grid, name=name, storage=storage, tracking_uri=tracking_uri, control=control,
                           address=address, max_concurrent=max_concurrent, announce=announce, render=render)
    if result.claims:  # a one-shot study has tables, not the paper's IMP claims
        table = Table(title=f"the paper's claims on {result.name}")
        for col in ("claim", "verdict", "statement"):
            table.add_column(col)
        for row in result.claims:
            table.add_row(row.get("claim", ""), row.get("verdict", ""), row.get("statement", ""))
        console.print(table)
    console.print(f"study [bold]{result.name}[/bold] finished in {progress.duration(time.time() - began)} "
                  f"({len(result.ran)} step(s) run, {len(result.skipped)} kept from before)")
    console.print(f"report: [bold]{result.report}[/bold]  (open it in a browser: file://{result.report})", soft_wrap=True)


@app.command()
def status(name: str = typer.Option(None, "--name", metavar="NAME",
                                    help="The sweep's name (default: list every sweep in --storage)."),
           storage: str = StorageOpt, tracking_uri: str = TrackingOpt) -> None:
    """Where a sweep stands, or every sweep in the storage, read from storage alone (Ray need not run)."""
    if name is None:
        sweeps = list_sweeps(storage)
        table = Table(title=f"sweeps in {open_storage(storage).location}")
        for col in ("sweep", "grid", "cells", "done", "running", "interrupted", "failed", "pending", "driver"):
            table.add_column(col)
        for state, counts, alive in sweeps:
            table.add_row(state.name, state.grid_name, str(len(state.cells)),
                          *(str(counts[k]) for k in ("done", "running", "interrupted", "failed", "pending")),
                          "running" if alive else "none")
        console.print(table if sweeps else "no sweeps here yet (lnsub sweep --grid smoke starts one)")
        return
    state, statuses = sweep_status(name, storage)
    console.print(_progress_table(statuses))
    if any(s.state == "interrupted" for s in statuses):
        console.print(f"no driver holds this sweep: resume it with lnsub sweep --name {name} --storage {storage} "
                      f"--resume")
    console.print(f"MLflow: {redact(tracking_uri or state.tracking_uri)}")


@app.command()
def sync(name: str = typer.Option(..., "--name", help="The sweep's name."), storage: str = StorageOpt,
         tracking_uri: str = TrackingOpt) -> None:
    """Bring MLflow up to date with storage (after the tracking server was down)."""
    counts = sync_sweep(name, storage, tracking_uri)
    console.print(f"MLflow synced: {counts['runs_created']} runs created, {counts['levels_logged']} levels logged")


@app.command()
def ui(name: str = typer.Option(None, "--name", help="The sweep's name (for its tracking URI)."),
       storage: str = StorageOpt, tracking_uri: str = TrackingOpt,
       port: int = typer.Option(5000, "--port", help="Port on 127.0.0.1.")) -> None:
    """Open the MLflow UI on the sweep's store, bound to 127.0.0.1.

    With --storage on an object store this is also the tracking server sweeps log to: its runs live in
    --tracking-uri (a database; default ./lnsub-mlflow.db) and its artifacts in <storage>/mlartifacts.
    """
    mlflow_ui.check_port(port)
    root = open_storage(storage)
    # One browsing user: one worker, and no GenAI job runner (by default mlflow starts 4 workers and 8 job
    # processes that ignore SIGTERM; on 2 cores the UI took a minute to answer). Set the variable to override.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    serve = ["--host", mlflow_ui.HOST, "--port", str(port), "--workers", "1"]
    if root.remote:
        backend = tracking_uri or f"sqlite:///{Path('lnsub-mlflow.db').resolve()}"
        if backend.startswith(("http://", "https://")):
            raise LnsubError("--tracking-uri: with --storage on an object store, lnsub ui is the tracking server; "
                             "give it a database (sqlite:///PATH or postgresql://...), not a server's URL")
        artifacts = mlflow_ui.artifact_root(storage)
        if os.environ.get("AWS_ENDPOINT_URL") and not os.environ.get("MLFLOW_S3_ENDPOINT_URL"):
            env["MLFLOW_S3_ENDPOINT_URL"] = os.environ["AWS_ENDPOINT_URL"]  # MLflow's own name for the endpoint
        console.print(f"MLflow server at http://127.0.0.1:{port}: runs in {redact(backend)}, artifacts in "
                      f"{artifacts}\nsweeps on this storage log to it with --tracking-uri http://127.0.0.1:{port}  "
                      f"(Ctrl-C to stop)")
        mlflow_ui.serve(["server", "--backend-store-uri", backend, "--artifacts-destination", artifacts,
                         "--serve-artifacts", *serve], env)
        return
    uri = tracking_uri or (load_state(root, name).tracking() if name else tracking.default_tracking_uri(root))
    if uri.startswith(("http://", "https://")):  # MLflow serves a database or a folder, not another server
        raise LnsubError(f"{redact(uri)} is an MLflow server: browse it there (on a cluster's head: ray attach "
                         f"cluster.yaml --port-forward 5000, then http://127.0.0.1:5000), or give lnsub ui its "
                         f"database with --tracking-uri")
    found = tracking.experiment_id(uri, name) if name else None
    base = f"http://127.0.0.1:{port}"
    page = mlflow_ui.runs_page(base, found) if found else base
    console.print(f"MLflow UI for {redact(uri)}: open {page}  (the sweep's runs; Ctrl-C to stop)", soft_wrap=True)
    mlflow_ui.serve(["ui", "--backend-store-uri", uri, *serve], env)


OutOpt = typer.Option(None, "--out", metavar="PATH", help="Analysis folder; each analysis writes its own subfolder there "
                                          "(default: <storage>/sweeps/<name>/analysis).")
SweepNameOpt = typer.Option(..., "--name", metavar="NAME", help="The sweep's name.")


@app.command()
def tickets(name: str = SweepNameOpt, storage: str = StorageOpt, tracking_uri: str = TrackingOpt, out: str = OutOpt,
            max_concurrent: int = typer.Option(None, "--max-concurrent", help="Cap on jobs at once."),
            address: str = AddressOpt) -> None:
    """Tickets from θ0: each finished level's mask trained from θ0 with a fresh head (rerun to resume); the scores
    the winning-ticket table and claim (c) read (then run lnsub analyze)."""
    progress = Progress(TextColumn("θ0 jobs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, disable=not console.is_terminal)
    bar = progress.add_task("jobs", total=None)
    with progress:
        result, errors = analyses.tickets(name, storage, tracking_uri, out, max_concurrent=max_concurrent,
                                          address=address,
                                          render=lambda done, total: progress.update(bar, completed=done, total=total))
    console.print(f"{result.params['jobs_done']}/{result.params['jobs']} θ0 jobs done; scores: "
                  f"[bold]{result.folder / 'theta0_scores.csv'}[/bold] (lnsub analyze --name {name} reads them)")
    if errors:
        for job, err in errors.items():
            console.print(f"[red]failed[/red] {job}: {err.splitlines()[0][:300]}")
        console.print("rerun the same command to resume")
        raise typer.Exit(1)


@app.command()
def oneshot(name: str = SweepNameOpt, storage: str = StorageOpt, tracking_uri: str = TrackingOpt,
            out: str = OutOpt) -> None:
    """A one-shot sweep's scores, overlap beyond θ0, transfer across languages (with random and magnitude rows) and
    LAPE's language-specific neurons against the masks."""
    folder = analyses.oneshot(name, storage, tracking_uri, out).folder
    console.print(f"one-shot tables: [bold]{folder}[/bold]")


@app.command()
def analyze(name: str = SweepNameOpt, storage: str = StorageOpt, tracking_uri: str = TrackingOpt,
            out: str = OutOpt) -> None:
    """Cross-language overlap of the sweep's masks (total, per layer, per component), baselines, winning tickets."""
    folder = analyses.analyze(name, storage, tracking_uri, out).folder
    console.print(f"overlap tables and heatmaps: [bold]{folder}[/bold]")


@app.command()
def similarity(name: str = SweepNameOpt, storage: str = StorageOpt, tracking_uri: str = TrackingOpt,
               out: str = OutOpt,
               level: int = typer.Option(None, "--level", help="Pruning level of the sub-networks (default: last)."),
               sentences: int = typer.Option(200, "--sentences", help="Parallel sentences per language.")) -> None:
    """Per-layer CKA and sentence retrieval across languages: dense, each sub-network, a random encoder."""
    if sentences < 10:
        raise LnsubError(f"--sentences must be >= 10, got {sentences}")
    folder = analyses.similarity(name, storage, tracking_uri, out, level, sentences).folder
    console.print(f"similarity tables and curves: [bold]{folder}[/bold]")


@app.command()
def transfer(name: str = SweepNameOpt, storage: str = StorageOpt, tracking_uri: str = TrackingOpt, out: str = OutOpt,
             level: int = typer.Option(..., "--level", help="IMP level whose masks are transferred "
                                                            "(level k has sparsity k x prune_fraction)."),
             task: list[TaskName] = typer.Option(None, "--task", metavar="[mlm|ner|xnli]", help="Only this task (repeatable; default: all)."),
             cross_task: bool = typer.Option(False, "--cross-task", help="Add rows: the same language's ticket "
                                                                         "from each other task."),
             max_concurrent: int = typer.Option(None, "--max-concurrent", help="Cap on jobs at once."),
             address: str = AddressOpt) -> None:
    """Transfer matrix: each source's mask trained on each target language (Ray Tune; rerun to resume)."""
    progress = Progress(TextColumn("transfer jobs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, disable=not console.is_terminal)
    bar = progress.add_task("jobs", total=None)
    with progress:
        result = analyses.transfer(name, storage, level, tracking_uri, out, tasks=[t.value for t in task or []] or None,
                                   cross_task=cross_task, max_concurrent=max_concurrent, address=address,
                                   render=lambda done, total: progress.update(bar, completed=done, total=total))
    table = Table(title=f"mean relative drop per source at level {level} (successes: within one std)")
    for col in ("task", "source", "mean relative drop", "successes"):
        table.add_column(col)
    outcome = result.transfer
    for r in outcome.summary:
        table.add_row(r["task"], r["source"], f"{r['mean_relative_drop']:+.3%}", f"{r['successes']}/{r['targets']}")
    console.print(table)
    console.print(f"{outcome.done}/{outcome.jobs} jobs done; matrices and heatmaps: "
                  f"[bold]{result.folder}[/bold]")
    if outcome.errors:
        for job, err in outcome.errors.items():
            console.print(f"[red]failed[/red] {job}: {err.splitlines()[0][:300]}")
        console.print("rerun the same command to resume")
        raise typer.Exit(1)


@app.command()
def report(name: str = SweepNameOpt, storage: str = StorageOpt, tracking_uri: str = TrackingOpt,
           out: str = OutOpt,
           control: str = typer.Option(None, "--control", help="A second sweep in the same storage (the negative "
                                                               "control): its claims go side by side.")) -> None:
    """One self-contained HTML page of the sweep's results (open it in a browser; also logged to MLflow)."""
    path = analyses.report(name, storage, tracking_uri, out, control).report
    console.print(f"report: [bold]{path}[/bold]  (open it in a browser: file://{path})")


def _fail(message: str) -> typing.NoReturn:
    print(f"lnsub: error: {' '.join(message.split())}", file=sys.stderr)  # one line, whatever the message holds
    sys.exit(2)


def main() -> None:
    """Entry point: a user-facing error (bad input or environment) is one line on stderr and exit status 2."""
    try:
        code = app(standalone_mode=False)
    except LnsubError as e:
        _fail(str(e))
    except OSError as e:  # storage the user named: unreadable, full, not a folder
        _fail(f"{type(e).__name__}: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""))
    except typer.TyperException as e:  # a usage error: unknown option, a value of the wrong type...
        if type(e).__name__ == "NoArgsIsHelpError":  # plain `lnsub`: the help, as before
            print(e.format_message())
            sys.exit(2)
        ctx = getattr(e, "ctx", None)
        _fail(e.format_message() + (f" (see '{ctx.command_path} --help')" if ctx is not None else ""))
    except typer.Abort:
        print("lnsub: aborted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
