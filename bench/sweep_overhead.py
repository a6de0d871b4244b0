"""Orchestration overhead of the smoke sweep, and the time a kill-and-resume costs, in one run.

1. The smoke sweep through the CLI, one cell at a time: its wall time against the sum
   of the cells' own compute time (each cell's run_cell wall time, set-up included,
   from cells/<id>/timing.json). The ratio is what Ray, Tune, MLflow syncing and the
   driver add.
2. The same sweep killed with SIGKILL once a third of its levels are done, then
   resumed with --resume: the two wall times together against the uninterrupted run.

Usage: python bench/sweep_overhead.py [--grid smoke] [--max-concurrent 1]
The tiny model is pretrained first (cached), so neither figure includes it.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lnsub.orchestrator.grid import plan
from lnsub.trainables.providers import prepare
from lnsub.trainables.metrics import SECONDS
from lnsub.trainables.store import CellStore

ROOT = Path(__file__).resolve().parents[1]


def lnsub(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lnsub.orchestrator.cli", *args], cwd=cwd,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def levels_done(storage: Path, specs) -> int:
    return sum(CellStore(storage, s).level_done(k) for s in specs for k in range(s.levels + 1))


def compute_seconds(storage: Path, specs) -> float:
    return sum(CellStore(storage, s).timing()[SECONDS] for s in specs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="smoke")
    parser.add_argument("--max-concurrent", default="1")
    args = parser.parse_args()

    cells = plan(args.grid).cells
    specs = [c.spec for c in cells]
    prepare(specs)
    total_levels = sum(c.spec.levels + 1 for c in cells)
    work = Path(tempfile.mkdtemp(prefix="lnsub-bench-sweep-"))
    common = ["--grid", args.grid, "--max-concurrent", args.max_concurrent]

    start = time.perf_counter()
    rc = lnsub(["sweep", *common, "--storage", str(work / "a")], work).wait()
    wall = time.perf_counter() - start
    compute = compute_seconds(work / "a", specs)
    assert rc == 0, f"sweep failed with {rc}"

    storage = work / "b"
    start = time.perf_counter()
    driver = lnsub(["sweep", *common, "--name", "k", "--storage", str(storage)], work)
    while levels_done(storage, specs) < total_levels // 3 and driver.poll() is None:
        time.sleep(0.1)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    first = time.perf_counter() - start
    start = time.perf_counter()
    rc = lnsub(["sweep", "--name", "k", "--storage", str(storage), "--resume"], work).wait()
    second = time.perf_counter() - start
    assert rc == 0, f"resume failed with {rc}"

    print(f"grid {args.grid}: {len(cells)} cells, {total_levels} levels, max {args.max_concurrent} at once")
    print(f"uninterrupted sweep: {wall:.1f} s wall, {compute:.1f} s of cell compute; "
          f"orchestration overhead ratio {wall / compute:.3f}")
    print(f"killed after {first:.1f} s (a third of the levels), resumed in {second:.1f} s: "
          f"{first + second:.1f} s in all, {(first + second) / wall:.3f}x the uninterrupted sweep")


if __name__ == "__main__":
    main()
