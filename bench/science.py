"""The science grid end to end, as the README runs it, timed stage by stage; then its negative control.

Usage: python bench/science.py [--storage DIR] [--cache DIR] [--no-control | --only science|science-control]
    --cache: where the tiny models are pretrained (a fresh folder = a fresh clone's cold start;
             default: a new temporary folder).
Prints each command's wall time, the sweep's time against `lnsub plan --gpus 2`'s makespan, and
the per-cell times against the grid's cost_hours (their ratio, measured / expected).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lnsub.trainables.metrics import SECONDS
from lnsub.trainables.store import TIMING

LNSUB = [sys.executable, "-m", "lnsub.orchestrator.cli"]
MODEL = {"science": "testbed", "science-control": "testbed-decoupled"}
TRANSFER = ["--task", "ner", "--task", "xnli"]  # MLM transfer is left out to fit 30 minutes


def stages(grid: str, control: str | None) -> list[list[str]]:
    out = [["sweep", "--grid", grid], ["analyze", "--name", grid],
           ["transfer", "--name", grid, "--level", "3", *TRANSFER],
           ["transfer", "--name", grid, "--level", "5", *TRANSFER],
           ["similarity", "--name", grid]]
    return out + [["report", "--name", grid, *(["--control", control] if control else [])]]


def run(args: list[str], storage: str, env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run([*LNSUB, *args, "--storage", storage], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"lnsub {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    print(f"{seconds:8.1f} s  lnsub {' '.join(args)}", flush=True)
    return seconds


def makespan_minutes(grid: str, env: dict) -> float:
    out = subprocess.run([*LNSUB, "plan", "--grid", grid, "--gpus", "2"], env=env, capture_output=True,
                         text=True, check=True).stdout
    value, unit = re.search(r"makespan ([\d.,]+) (min|h)", out).groups()
    return float(value.replace(",", "")) * (60 if unit == "h" else 1)


def cell_ratios(storage: str, grid: str) -> dict[str, float]:
    """Measured / expected seconds per task: the cells' own timing.json against cost_hours."""
    import yaml

    from lnsub.orchestrator.grid import grid_path

    cost = yaml.safe_load(grid_path(grid).read_text())["cost_hours"]
    measured: dict[str, list[float]] = {}
    for path in Path(storage, "cells").glob(f"*/{TIMING}"):
        spec = json.loads((path.parent / "spec.json").read_text())["spec"]
        if spec["model"] == MODEL[grid]:
            measured.setdefault(spec["task"], []).append(json.loads(path.read_text())[SECONDS])
    return {t: sum(v) / len(v) / (cost[t] * 3600) for t, v in sorted(measured.items()) if t in cost}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--storage")
    parser.add_argument("--cache")
    parser.add_argument("--no-control", action="store_true")
    parser.add_argument("--only", choices=list(MODEL), help="run this grid's lines alone (e.g. to resume)")
    args = parser.parse_args()
    storage = args.storage or tempfile.mkdtemp(prefix="lnsub-science-")
    env = {**os.environ, "LNSUB_CACHE": args.cache or tempfile.mkdtemp(prefix="lnsub-science-cache-")}
    print(f"storage {storage}, model cache {env['LNSUB_CACHE']}")
    totals = {}
    grids = [args.only] if args.only else ["science"] + ([] if args.no_control else ["science-control"])
    for grid in grids:
        seconds = [run(stage, storage, env) for stage in stages(grid, None)]
        totals[grid] = sum(seconds)
        pretraining = sum(json.loads(p.read_text())["seconds"] for p in Path(env["LNSUB_CACHE"]).glob(
            "tinybert-*/pretrain.json") if p.stat().st_mtime >= time.time() - totals[grid])
        print(f"{grid}: {totals[grid] / 60:.1f} min end to end; the sweep {seconds[0] / 60:.1f} min, of which "
              f"pretraining {pretraining / 60:.1f} min; cells {(seconds[0] - pretraining) / 60:.1f} min against "
              f"plan's makespan on 2 workers, {makespan_minutes(grid, env):.1f} min")
        print("  per cell, measured / cost_hours: " + ", ".join(f"{t} {r:.2f}" for t, r in
                                                               cell_ratios(storage, grid).items()))
    if "science-control" in grids:
        totals["report with control"] = run(stages("science", "science-control")[-1], storage, env)
    print(f"total {sum(totals.values()) / 60:.1f} min")


if __name__ == "__main__":
    main()
