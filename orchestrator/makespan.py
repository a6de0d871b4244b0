"""How long a grid takes on N devices as lnsub schedules it, and how far that is from any schedule's best.

lnsub submits cells longest first (grid.plan sorts them; Tune's grid search creates
trials in that order, at most `concurrency` at once, the next when one ends), so a
sweep is list scheduling in plan order on `slots` identical places: LPT, which is
within 4/3 - 1/(3 slots) of the optimum (Graham 1969). A cell takes its cost_hours
on one worker; with w workers it is assumed to take cost/w (perfect scaling) on
w x gpus_per_worker devices. Pure functions: nothing here asks Ray anything.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

MAX_DEVICES = 100_000  # a bound on `lnsub plan --gpus`: the simulation keeps one entry per slot


def concurrency_rule(fits: int, workers_per_job: int, max_concurrent: int | None) -> int:
    """Jobs at once (jobs.concurrency): what fits, capped by --max-concurrent; multi-worker jobs never more than fits.

    A single-worker job may be allowed more than fits now (an autoscaling cluster grows);
    those beyond what fits wait for resources.
    """
    if workers_per_job > 1:
        return min(max_concurrent or fits, fits)
    return max_concurrent or fits


def devices_per_cell(workers_per_cell: int, gpus_per_worker: float) -> float:
    """What one cell occupies: its workers' GPUs, or (a CPU-only grid) its workers."""
    return workers_per_cell * gpus_per_worker if gpus_per_worker else float(workers_per_cell)


def slots(devices: float, per_cell: float, workers_per_cell: int = 1, max_concurrent: int | None = None) -> int:
    """Cells that run at once on `devices`: the concurrency rule, and never more than the devices hold."""
    fits = int(devices / per_cell + 1e-9)  # ray_backend.fitting_concurrency, with the GPUs as the scarce resource
    if fits < 1:
        raise ValueError(f"a cell occupies {per_cell:g} devices, more than the {devices:g} there are")
    return min(concurrency_rule(fits, workers_per_cell, max_concurrent), fits)


def list_schedule(durations: list[float], places: int) -> list[tuple[float, float]]:
    """(start, end) of each job, started in the given order each on the first place to come free."""
    free = [0.0] * places
    out = []
    for d in durations:
        start = heapq.heappop(free)
        out.append((start, start + d))
        heapq.heappush(free, start + d)
    return out


def lower_bound(durations: list[float], per_cell: float, devices: float) -> float:
    """No schedule on `devices` ends sooner: max(longest job, device-hours / devices)."""
    return max(max(durations, default=0.0), sum(durations) * per_cell / devices)


@dataclass(frozen=True)
class Schedule:
    devices: float
    workers_per_cell: int
    per_cell: float  # devices one cell occupies
    slots: int  # cells at once
    longest: float  # hours, of the longest cell
    device_hours: float
    makespan: float
    bound: float

    @property
    def ratio(self) -> float:
        return self.makespan / self.bound if self.bound else 1.0

    @property
    def longest_sets_bound(self) -> bool:
        return self.longest >= self.device_hours / self.devices


def simulate(costs: list[float], devices: float, workers_per_cell: int = 1, gpus_per_worker: float = 1.0,
             max_concurrent: int | None = None) -> Schedule:
    """The sweep of cells costing `costs` (one-worker hours, in submission order) on `devices` devices."""
    per_cell = devices_per_cell(workers_per_cell, gpus_per_worker)
    k = slots(devices, per_cell, workers_per_cell, max_concurrent)
    durations = [c / workers_per_cell for c in costs]
    ends = [end for _, end in list_schedule(durations, k)]
    return Schedule(devices, workers_per_cell, per_cell, k, max(durations, default=0.0),
                    sum(durations) * per_cell, max(ends, default=0.0), lower_bound(durations, per_cell, devices))


def workers_table(costs: list[float], devices: float, gpus_per_worker: float = 1.0,
                  max_concurrent: int | None = None, workers: tuple[int, ...] = (1, 2, 4)) -> list[Schedule]:
    """The same sweep with each cell on w workers (cost/w hours on w x gpus_per_worker devices), for w that fit."""
    return [simulate(costs, devices, w, gpus_per_worker, max_concurrent) for w in workers
            if devices_per_cell(w, gpus_per_worker) <= devices + 1e-9]
