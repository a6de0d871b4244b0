"""`ray up` of docs/cluster-local.yaml rehearsed on this machine (tests/cluster_rehearsal.py): each stage's wall
time and what it checked. Exit status 0 when every check holds, 1 when one fails, 2 when this machine cannot run it
(not root, no namespaces, no apt for sshd and rsync): the line says why.

Usage: python bench/cluster_rehearsal.py [--work DIR] [--workers 1] [--keep]
(DIR must lie outside /root and /tmp, which each host has of its own; default a new folder in /var/tmp, removed
afterwards unless --keep or a check failed.)
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the harness the slow test shares

from cluster_rehearsal import CannotRehearse, Rehearsal, RehearsalFailed  # noqa: E402


def interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, help="a new folder for this run (hosts' homes, logs, shared storage)")
    ap.add_argument("--workers", type=int, default=1, choices=(0, 1), help="worker hosts beside the head")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, homes) after a success")
    args = ap.parse_args()
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):  # a stopped run still stops all it started
        signal.signal(sig, interrupted)
    work = args.work or Path(tempfile.mkdtemp(prefix="lnsub-cluster-rehearsal-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder {work}")
    started = time.perf_counter()
    try:
        stages = Rehearsal(work, workers=args.workers).run()
    except CannotRehearse as e:
        print(f"cannot rehearse here: {e}")
        return 2
    except RehearsalFailed as e:
        print(f"FAILED: {e}\nlogs and hosts' homes kept in {work}")
        return 1
    except KeyboardInterrupt as e:
        print(f"interrupted ({e}); everything it started is stopped; logs kept in {work}")
        return 130
    total = time.perf_counter() - started
    print("\nstage                 seconds")
    for s in stages:
        print(f"{s.name:<20} {s.seconds:8.1f}")
    print(f"{'total':<20} {total:8.1f}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
