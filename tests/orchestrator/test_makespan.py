"""`lnsub plan --gpus N`: the sweep's makespan as lnsub schedules it, checked against independent simulations,
the lower bound, Graham's LPT guarantee over brute-forced optima, and the order Tune really starts trials in."""

from __future__ import annotations

import itertools
import random
import re
import sys

import pytest

from lnsub.orchestrator import makespan, ray_backend
from lnsub.orchestrator.cli import main
from lnsub.orchestrator.grid import plan


def naive_makespan(durations: list[int], places: int) -> int:
    """Time steps of one hour: at each step, every free place takes the next job in order (integer durations)."""
    remaining = [0] * places  # hours left on each place's job
    queue = list(durations)
    t = 0
    while queue or any(remaining):
        for i in range(places):
            if remaining[i] == 0 and queue:
                remaining[i] = queue.pop(0)
                while remaining[i] == 0 and queue:  # a zero-hour job ends as it starts
                    remaining[i] = queue.pop(0)
        if not any(remaining):
            break
        remaining = [max(0, r - 1) for r in remaining]
        t += 1
    return t


def brute_force_opt(durations: list[int], machines: int) -> int:
    """The best makespan over every assignment of jobs to machines."""
    best = sum(durations)
    for assignment in itertools.product(range(machines), repeat=len(durations)):
        loads = [0] * machines
        for d, m in zip(durations, assignment):
            loads[m] += d
        best = min(best, max(loads))
    return best


def _instances(count: int, max_jobs: int, max_places: int, seed: int):
    rng = random.Random(seed)
    for _ in range(count):
        jobs = [rng.randint(0, 12) for _ in range(rng.randint(1, max_jobs))]
        yield jobs, rng.randint(1, max_places)


@pytest.mark.parametrize("seed", range(5))
def test_list_schedule_matches_a_time_stepping_simulation(seed):
    for jobs, places in _instances(60, 15, 6, seed):
        lpt = sorted(jobs, reverse=True)
        for order in (jobs, lpt):
            ends = [end for _, end in makespan.list_schedule([float(d) for d in order], places)]
            assert max(ends) == naive_makespan(order, places), (order, places)


@pytest.mark.parametrize("seed", range(3))
def test_bound_never_exceeds_the_makespan(seed):
    rng = random.Random(seed)
    for jobs, devices in _instances(100, 20, 16, seed):
        workers = rng.choice([1, 2, 4])
        gpus = rng.choice([0.0, 0.5, 1.0, 2.0])
        cap = rng.choice([None, 1, 3])
        if makespan.devices_per_cell(workers, gpus) > devices:
            continue
        s = makespan.simulate(sorted(jobs, reverse=True), devices, workers, gpus, cap)
        assert s.bound <= s.makespan + 1e-9
        assert s.slots * s.per_cell <= devices + 1e-9  # never more devices held than there are


@pytest.mark.parametrize("seed", range(3))
def test_lpt_is_within_grahams_bound_of_the_optimum(seed):
    for jobs, machines in _instances(40, 7, 3, seed):
        jobs = sorted(jobs, reverse=True)
        s = makespan.simulate([float(d) for d in jobs], machines)
        opt = brute_force_opt(jobs, machines)
        assert s.slots == machines
        assert s.makespan <= (4 / 3 - 1 / (3 * machines)) * opt + 1e-9, (jobs, machines, s.makespan, opt)


def test_grahams_bound_is_tight_on_its_classic_instance():
    """2m+1 jobs (2m-1, 2m-1, 2m-2, 2m-2, ..., m, m, m) on m machines: LPT 4m-1, optimum 3m."""
    m = 3
    jobs = [5.0, 5.0, 4.0, 4.0, 3.0, 3.0, 3.0]
    assert makespan.simulate(jobs, m).makespan == 4 * m - 1
    assert brute_force_opt([int(j) for j in jobs], m) == 3 * m


def test_concurrency_rule_as_the_sweep_applies_it():
    assert makespan.concurrency_rule(8, 1, None) == 8
    assert makespan.concurrency_rule(8, 1, 12) == 12  # a single-worker sweep may ask for more (autoscaling)...
    assert makespan.slots(8, 1, 1, 12) == 8  # ...but no more run than the devices hold
    assert makespan.concurrency_rule(4, 2, 12) == 4  # multi-worker cells never beyond what fits
    assert makespan.slots(8, 2, 2, 3) == 3
    assert makespan.slots(8, 0.5, 1, None) == 16
    with pytest.raises(ValueError):
        makespan.slots(1, 2, 2, None)


def test_workers_scale_the_longest_cell_and_hold_more_devices():
    rows = makespan.workers_table([45.0] * 4 + [15.0] * 8, 8, 1.0)
    assert [(r.workers_per_cell, r.per_cell, r.slots, r.longest) for r in rows] == \
        [(1, 1, 8, 45.0), (2, 2, 4, 22.5), (4, 4, 2, 11.25)]
    assert all(r.device_hours == 300.0 for r in rows)  # perfect scaling: the same device time
    assert [r.workers_per_cell for r in makespan.workers_table([1.0], 2, 1.0)] == [1, 2]  # 4 workers do not fit


def test_tune_starts_the_items_in_the_order_given():
    """The sweep hands Tune the plan's cells longest first; Tune's grid search must start them in that order.

    Drives the very search algorithm Tuner builds for max_concurrent_trials (BasicVariantGenerator) with the
    sweep's param_space, finishing the oldest running trial each time, as equal slots do."""
    from ray.tune.registry import register_trainable
    from ray.tune.search.basic_variant import BasicVariantGenerator

    register_trainable("lnsub_order_probe", lambda config: None)
    items = [{"id": c.spec.id} for c in plan("full").cells]
    generator = BasicVariantGenerator(max_concurrent=8)
    generator.add_configurations({"probe": {"run": "lnsub_order_probe",
                                            "config": ray_backend.param_space(items, {"storage": "x"})}})
    started, running = [], []
    while True:
        while (trial := generator.next_trial()) is not None:
            running.append(trial)
            started.append(trial.config["item"]["id"])
        if not running:
            break
        assert len(running) <= 8
        generator.on_trial_complete(running.pop(0).trial_id)
    assert started == [item["id"] for item in items]


def _plan_output(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["lnsub", "plan", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, " ".join((captured.out + captured.err).split())


@pytest.mark.parametrize("gpus", [8, 32, 128])
def test_plan_full_is_within_five_percent_of_the_bound(monkeypatch, capsys, gpus):
    code, out = _plan_output(monkeypatch, capsys, "--grid", "full", "--gpus", str(gpus))
    assert code == 0, out
    found = re.search(r"makespan ([\d,.]+) h, lower bound ([\d,.]+) h, ratio ([\d.]+)", out)
    assert found, out
    shown_makespan, shown_bound, ratio = (float(g.replace(",", "")) for g in found.groups())
    costs = [c.cost_hours for c in plan("full").cells]
    s = makespan.simulate(costs, gpus)
    assert (shown_makespan, shown_bound) == (round(s.makespan, 1), round(s.bound, 1))
    assert s.bound == max(max(costs), sum(costs) / gpus)
    assert ratio == round(s.ratio, 4) and s.ratio <= 1.05
    assert f"on {gpus} GPUs: {gpus} cells at a time" in out
    assert ("workers per cell" in out) == s.longest_sets_bound  # the table where XNLI sets the bound
    if gpus == 128:
        assert "perfect scaling" in out and "22.5 h" in out


@pytest.mark.parametrize("args, message", [
    (["--gpus", "0"], "--devices must lie in [1, 100,000], got 0"),
    (["--gpus", "8", "--max-concurrent", "0"], "--max-concurrent must lie in [1, 100,000], got 0"),
    (["--gpus", "1", "--workers-per-cell", "2"], "--devices 1: one cell holds 2 GPUs"),
])
def test_plan_refuses_bad_device_counts_in_one_line(monkeypatch, capsys, args, message):
    code, out = _plan_output(monkeypatch, capsys, "--grid", "full", *args)
    assert code == 2 and message in out and "cell id" not in out  # refused before the table


def test_plan_applies_the_sweeps_cap(monkeypatch, capsys):
    code, out = _plan_output(monkeypatch, capsys, "--grid", "full", "--gpus", "32", "--max-concurrent", "16")
    assert code == 0 and "16 cells at a time (--max-concurrent)" in out
    assert "makespan 124.5 h" in out
