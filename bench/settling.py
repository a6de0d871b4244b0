"""Where the masks stop moving, and what stopping a round there would save and change.

Usage:
    python bench/settling.py --name science --storage lnsub-runs [--rerun 4] [--threshold 0.99]

Reads every settling.json of a finished sweep (each level's round, SNAPSHOTS points: the Jaccard of the mask
pruning would take then with the round's final mask and with θ0's one-shot mask) and prints, per task, the
mean curve and the share of the round after which the mask had settled (Jaccard with the final >= 0.99 and
>= 0.95): what an early stop would save. Then it reruns `--rerun` of the sweep's cells (one per task and
language first, seed 0) twice in this process, as the sweep ran it and with `settle_stop=--threshold`, and
prints what the stop changed: the steps trained, each level's score, and the Jaccard of each level's mask with
the full round's. Both runs are made here, on one thread, because a cell's floating-point sums (and so its
scores and masks) depend on the thread count it ran with.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from collections import defaultdict

import torch

from lnsub.analysis.sweeps import open_sweep
from lnsub.trainables.imp import run_cell
from lnsub.trainables.masks import load_masks
from lnsub.trainables.settling import jaccard
from lnsub.trainables.storage import Storage
from lnsub.trainables.store import CellStore


def curves(sweep) -> dict[str, list[dict]]:
    """task -> every level's settling curve of the sweep's finished cells."""
    out = defaultdict(list)
    for spec in sweep.specs:
        store = CellStore(sweep.storage, spec)
        for level in range(spec.levels):
            curve = store.load_settling(level)
            if curve is not None and all(r["jaccard_final"] is not None for r in curve["snapshots"]):
                out[spec.task].append(curve)
    return out


def settled_share(curve: dict, at: float) -> float:
    """The share of the round after which every snapshot's mask has Jaccard >= `at` with the final one."""
    rows = curve["snapshots"]
    for i, row in enumerate(rows):
        if all(r["jaccard_final"] >= at for r in rows[i:]):
            return row["fraction_of_round"]
    return 1.0


def print_curves(by_task: dict[str, list[dict]]) -> None:
    print("task  rounds  | mean Jaccard with the round's final mask at each snapshot | with θ0's one-shot: "
          "first -> last | settled (>=0.99, >=0.95): mean share of the round")
    for task, rows in sorted(by_task.items()):
        n = len(rows[0]["snapshots"])
        means = [statistics.fmean(c["snapshots"][i]["jaccard_final"] for c in rows if len(c["snapshots"]) == n)
                 for i in range(n)]
        first = statistics.fmean(c["snapshots"][0]["jaccard_theta0"] for c in rows)
        last = statistics.fmean(c["snapshots"][-1]["jaccard_theta0"] for c in rows)
        s99 = statistics.fmean(settled_share(c, 0.99) for c in rows)
        s95 = statistics.fmean(settled_share(c, 0.95) for c in rows)
        print(f"{task:5s} {len(rows):6d}  | {' '.join(f'{m:.3f}' for m in means)} | {first:.3f} -> {last:.3f} | "
              f"{s99:.2f}, {s95:.2f}  (an early stop would save {1 - s99:.0%} / {1 - s95:.0%} of training)",
              flush=True)


def rerun(sweep, n: int, threshold: float) -> None:
    """n of the sweep's cells again with settle_stop; what it saved and what it changed."""
    chosen, seen = [], set()
    for spec in sorted(sweep.specs, key=lambda s: (s.seed, s.language, s.task)):  # every task of a language first
        if (spec.task, spec.language) not in seen and len(chosen) < n:
            seen.add((spec.task, spec.language))
            chosen.append(spec)
    storage = tempfile.mkdtemp(prefix="lnsub-settle-")
    print(f"rerun with settle_stop={threshold}: cell | steps full -> stopped | score per level full / stopped | "
          "Jaccard of each level's mask with the full round's", flush=True)
    for spec in chosen:
        stopped = dataclasses.replace(spec, settle_stop=threshold)
        started = time.perf_counter()
        run_cell(spec, storage)
        run_cell(stopped, storage)
        full, short = CellStore(Storage.open(storage), spec), CellStore(Storage.open(storage), stopped)
        steps = (sum(full.metrics(k)["steps"] for k in range(spec.levels + 1)),
                 sum(short.metrics(k)["steps"] for k in range(spec.levels + 1)))
        scores = " ".join(f"{full.metrics(k)['score']:.3f}/{short.metrics(k)['score']:.3f}"
                          for k in range(spec.levels + 1))
        overlaps = " ".join(f"{jaccard(load_masks(full.level_dir(k)), load_masks(short.level_dir(k))):.3f}"
                            for k in range(1, spec.levels + 1))
        print(f"{spec.task}/{spec.language}/s{spec.seed} | {steps[0]} -> {steps[1]} ({1 - steps[1] / steps[0]:.0%} "
              f"saved) | {scores} | {overlaps}  [{time.perf_counter() - started:.0f} s]", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--storage", default="lnsub-runs")
    parser.add_argument("--rerun", type=int, default=4, help="cells to rerun with the early stop (0: none)")
    parser.add_argument("--threshold", type=float, default=0.99)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sweep = open_sweep(args.name, args.storage)
    by_task = curves(sweep)
    if not by_task:
        raise SystemExit("no settling curves in this sweep: run it with this version of lnsub first")
    print_curves(by_task)
    if args.rerun:
        rerun(sweep, args.rerun, args.threshold)


if __name__ == "__main__":
    main()
