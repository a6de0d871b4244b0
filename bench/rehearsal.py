"""The mBERT-shaped rehearsal end to end, through the README's commands, with the figures a reader of the README checks.

Stages, each timed: `lnsub rehearsal` (model and data), `lnsub sweep --grid rehearsal`, then `analyze`,
`transfer --level <last>`, `similarity` and `report`. Then, from the sweep's files:
- each cell's wall time and peak RSS (cells/<id>/timing.json, written by the cell's main process);
- each mask's prunable-weight count (84,934,656, plus 589,824 for the pooler in XNLI cells), its pruned
  count against round(level x fraction x total), and the mask file's bits per weight.

Usage: python bench/rehearsal.py [--work DIR]   (a fresh temporary folder by default; 2 cells at a time)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lnsub.orchestrator.grid import plan
from lnsub.trainables.masks import MASK_FILE
from lnsub.trainables.metrics import PEAK_RSS_BYTES, SECONDS
from lnsub.trainables.store import CellStore

ENCODER, POOLER = 84_934_656, 589_824  # mBERT's prunable weights, computed from its architecture


def stage(name: str, args: list[str], cwd: Path, log: Path) -> float:
    start = time.perf_counter()
    with log.open("a") as out:
        out.write(f"\n$ lnsub {' '.join(args)}\n")
        out.flush()
        done = subprocess.run([sys.executable, "-m", "lnsub.orchestrator.cli", *args], cwd=cwd, stdout=out,
                              stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - start
    print(f"{name:<12} {seconds:8.1f} s   exit {done.returncode}", flush=True)
    if done.returncode:
        sys.exit(f"stage {name} failed: see {log}")
    return seconds


def mask_figures(store: CellStore, level: int, fraction: float) -> dict:
    z = np.load(store.level_dir(level) / MASK_FILE, allow_pickle=False)
    total = int(z["shapes"].prod(axis=1).sum())
    kept = int(np.unpackbits(z["bits"], count=total).sum())
    return {"total": total, "pruned": total - kept, "target": int(round(level * fraction * total)),
            "bits_per_weight": 8 * (store.level_dir(level) / MASK_FILE).stat().st_size / total}


def report_cells(work: Path, storage: Path) -> None:
    os.chdir(work)  # the grid's model and data paths are read from the folder the sweep ran in
    print(f"\n{'cell':<28} {'seconds':>8} {'peak RSS':>10} {'level':>5} {'prunable':>11} {'pruned':>10} "
          f"{'target':>10} {'bits/w':>7}")
    for cell in plan("rehearsal").cells:
        spec, store = cell.spec, CellStore(storage, cell.spec)
        timing = store.timing()
        expected = ENCODER + (POOLER if spec.task == "xnli" else 0)
        for level in range(spec.levels + 1):
            m = mask_figures(store, level, spec.prune_fraction)
            ok = "ok" if m["total"] == expected and m["pruned"] == m["target"] else "MISMATCH"
            print(f"{spec.task + '/' + spec.language:<28} {timing[SECONDS]:8.1f} "
                  f"{timing[PEAK_RSS_BYTES] / 2**30:8.2f} GiB {level:>5} {m['total']:>11,} {m['pruned']:>10,} "
                  f"{m['target']:>10,} {m['bits_per_weight']:7.3f} {ok}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = (args.work or Path(tempfile.mkdtemp(prefix="lnsub-bench-rehearsal-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    storage, log = work / "store", work / "bench.log"
    print(f"work folder {work}; commands' output in {log}")
    name = ["--name", "rehearsal", "--storage", str(storage)]
    times = {"rehearsal": stage("rehearsal", ["rehearsal"], work, log),
             "sweep": stage("sweep", ["sweep", "--grid", "rehearsal", "--storage", str(storage)], work, log)}
    os.chdir(work)
    last = plan("rehearsal").cells[0].spec.levels
    for what, extra in (("analyze", []), ("transfer", ["--level", str(last)]), ("similarity", []), ("report", [])):
        times[what] = stage(what, [what, *name, *extra], work, log)
    print(f"{'total':<12} {sum(times.values()):8.1f} s")
    report_cells(work, storage)
    (work / "bench.json").write_text(json.dumps(times, indent=2))


if __name__ == "__main__":
    main()
