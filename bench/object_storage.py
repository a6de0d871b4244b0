"""The smoke grid on a local path and on S3 (moto on 127.0.0.1), in one run: time per level, and the ratio.

Both sweeps run through `lnsub sweep --grid smoke`, one after the other, on the same machine;
each level's own wall time comes from its metrics.json (`level_seconds`: rewind, train,
evaluate, prune and commit, uploads included on S3). The S3 run also needs an MLflow server
(`lnsub ui --storage s3://...`); the local one uses the default SQLite store.

Usage: python bench/object_storage.py [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's S3 server (moto on 127.0.0.1)

from s3_server import S3Server  # noqa: E402

from lnsub.trainables.storage import remote as objectstore  # noqa: E402
from lnsub.trainables.metrics import LEVEL_SECONDS  # noqa: E402
from lnsub.trainables.store import CellStore  # noqa: E402
from lnsub.analysis.sweeps import load_state, open_storage, pull_cells  # noqa: E402


def lnsub(args: list[str], cwd: Path, env: dict, log: Path, **kw) -> subprocess.Popen:
    out = log.open("a")
    return subprocess.Popen([sys.executable, "-m", "lnsub.orchestrator.cli", *args], cwd=cwd, stdout=out,
                            stderr=subprocess.STDOUT, env={**os.environ, **env}, **kw)


def sweep(storage: str, extra: list[str], cwd: Path, env: dict, log: Path) -> float:
    start = time.perf_counter()
    rc = lnsub(["sweep", "--grid", "smoke", "--storage", storage, *extra], cwd, env, log).wait()
    if rc:
        sys.exit(f"the sweep on {storage} failed: see {log}")
    return time.perf_counter() - start


def level_seconds(storage: str) -> dict[tuple[str, int], float]:
    root = open_storage(storage)
    state = load_state(root, "smoke")
    pull_cells(root, state.specs)
    return {(s.id, k): CellStore(root, s).metrics(k)[LEVEL_SECONDS] for s in state.specs for k in range(s.levels + 1)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = (args.work or Path(tempfile.mkdtemp(prefix="lnsub-bench-s3-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "bench.log"
    print(f"work folder {work}; commands' output in {log}", flush=True)
    local = str(work / "local")
    wall = {"local": sweep(local, [], work, {}, log)}
    with S3Server() as server:
        env = {**server.env(), objectstore.SCRATCH_ENV: str(work / "scratch")}
        os.environ.update(env)
        storage, port = f"s3://{server.bucket}/runs", free_port()
        ui = lnsub(["ui", "--storage", storage, "--tracking-uri", f"sqlite:///{work / 'ui.db'}", "--port", str(port)],
                   work, env, log, start_new_session=True)
        try:
            for _ in range(240):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                    break
                except OSError:
                    time.sleep(0.5)
            wall["s3"] = sweep(storage, ["--tracking-uri", f"http://127.0.0.1:{port}"], work, env, log)
            on_s3 = level_seconds(storage)
        finally:
            os.killpg(ui.pid, signal.SIGTERM)
            ui.wait(timeout=60)
    on_disk = level_seconds(local)
    ratios = [on_s3[key] / on_disk[key] for key in on_disk]
    levels = sorted({k for _, k in on_disk})
    print(f"\n{'level':>5} {'local s (mean)':>15} {'S3 s (mean)':>12} {'S3/local':>9}")
    for k in levels:
        a = statistics.mean(v for (c, lv), v in on_disk.items() if lv == k)
        b = statistics.mean(v for (c, lv), v in on_s3.items() if lv == k)
        print(f"{k:>5} {a:15.2f} {b:12.2f} {b / a:9.2f}")
    print(f"per level, S3/local: median {statistics.median(ratios):.2f}, "
          f"min {min(ratios):.2f}, max {max(ratios):.2f} over {len(ratios)} levels")
    print(f"whole sweep wall time: local {wall['local']:.1f} s, S3 {wall['s3']:.1f} s "
          f"(ratio {wall['s3'] / wall['local']:.2f})")


if __name__ == "__main__":
    main()
