"""Fault injection for tests: one plan, read in one place.

The plan is a JSON list in the file that $LNSUB_FAULTS names (unset: no faults, no cost).
Each entry names a point and what happens there:

    {"unit": "<cell or transfer-job id>", "level": 1, "step": 6, "rank": 0,
     "action": "crash" | "pause", "marker": "/path/to/marker"}

`level` is omitted for transfer jobs, `rank` means any rank when omitted. Every entry
fires once: its marker file is written (JSON: pid, host, unit, level, step, rank) when it
fires, and an existing marker means it has fired. `crash` then ends the process at once
(`os._exit`, as a lost node or an OOM kill would); `pause` waits until `<marker>.release`
exists, so a test can act (kill a driver, remove a node) while a cell is provably
mid-round, with no sleeps.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from lnsub.trainables.storage.local import write_json

ENV = "LNSUB_FAULTS"
ACTIONS = ("crash", "pause")


@dataclass(frozen=True)
class Fault:
    unit: str
    step: int
    action: str
    marker: Path
    level: int | None = None
    rank: int | None = None

    def matches(self, unit: str, level: int | None, step: int, rank: int) -> bool:
        return (self.unit == unit and self.step == step and (self.level is None or self.level == level)
                and (self.rank is None or self.rank == rank))

    @property
    def release(self) -> Path:
        return self.marker.with_name(self.marker.name + ".release")


def write_plan(path: str | Path, faults: list[dict]) -> Path:
    """Write a plan file (tests); point $LNSUB_FAULTS at it before the sweep starts."""
    for f in faults:
        if f.get("action") not in ACTIONS:
            raise ValueError(f"fault action must be one of {ACTIONS}: {f}")
    write_json(Path(path), faults)
    return Path(path)


_cache: dict[str, list[Fault]] = {}


def _plan() -> list[Fault]:
    path = os.environ.get(ENV)
    if not path:
        return []
    if path not in _cache:
        if not Path(path).exists():
            return []  # a plan may be written after the variable is set; read it once it exists
        entries = json.loads(Path(path).read_text())
        _cache[path] = [Fault(e["unit"], int(e["step"]), e["action"], Path(e["marker"]), e.get("level"),
                              e.get("rank")) for e in entries]
    return _cache[path]


def active() -> bool:
    return bool(os.environ.get(ENV))


def at_step(unit: str, level: int | None, step: int, rank: int = 0) -> None:
    """Called after every optimizer step where faults are active: fire whatever the plan puts here."""
    for fault in _plan():
        if fault.marker.exists() or not fault.matches(unit, level, step, rank):
            continue
        write_json(fault.marker, {"pid": os.getpid(), "host": socket.gethostname(), "unit": unit, "level": level,
                                  "step": step, "rank": rank, "at": time.time()})
        if fault.action == "crash":
            os._exit(1)
        while not fault.release.exists():
            time.sleep(0.05)
