"""How long a sweep has left, and what `lnsub status` and `--resume` say: checked against closed forms and
against sweeps laid out in storage by hand."""

from __future__ import annotations

import sys

import pytest
import torch

from lnsub.orchestrator import progress
from lnsub.orchestrator.cli import main
from lnsub.trainables import metrics as M
from lnsub.trainables.spec import make_spec
from lnsub.trainables.store import CellStore
from lnsub.analysis.sweeps import Resources, CellStatus, PlannedCell, SweepState, load_state, save_state


def a_status(task, state, levels_done, seconds=0.0, levels=3):
    spec = make_spec(task, "syn-en", steps=4, levels=levels, prune_fraction=0.2)
    return CellStatus(spec, state, levels_done, None, seconds=seconds)


def test_before_any_level_ends_the_estimate_is_the_grids_cost_over_the_slots():
    cells = [a_status("ner", "pending", 0), a_status("xnli", "pending", 0), a_status("mlm", "pending", 0)]
    cost = {c.spec.id: h for c, h in zip(cells, (1.0, 2.0, 3.0))}
    est = progress.estimate(cells, cost, slots=2)
    assert est.factor == 1.0 and est.measured_levels == 0
    assert est.remaining_seconds == pytest.approx(max(6.0 / 2, 3.0) * 3600)  # max(work / slots, longest cell)
    assert progress.estimate(cells, cost, slots=10).remaining_seconds == pytest.approx(3.0 * 3600)


def test_measured_levels_correct_the_rest():
    # a 4-level cell expected at 1 h (900 s a level) finished 2 levels in 3600 s: twice as slow as expected
    done = a_status("ner", "running", 2, seconds=3600.0)
    todo = a_status("xnli", "pending", 0)
    finished = a_status("mlm", "done", 4, seconds=7200.0)  # 4 levels of 1800 s expected: right on time
    cost = {done.spec.id: 1.0, todo.spec.id: 1.0, finished.spec.id: 2.0}
    est = progress.estimate([done, todo, finished], cost, slots=1)
    factor = (3600.0 + 7200.0) / (2 * 900.0 + 4 * 1800.0)
    assert est.factor == pytest.approx(factor) and est.measured_levels == 6 and est.done == 1
    assert est.remaining_seconds == pytest.approx((2 * 900.0 + 4 * 900.0) * factor)


def test_a_finished_or_failed_sweep_has_nothing_left():
    cells = [a_status("ner", "done", 4, 10.0), a_status("xnli", "failed", 1, 5.0)]
    est = progress.estimate(cells, {c.spec.id: 1.0 for c in cells}, slots=1)
    assert est.remaining_seconds == 0.0


@pytest.mark.parametrize("seconds, text", [(None, "?"), (0, "0s"), (45.4, "45s"), (200, "3m20s"), (3900, "1h05m")])
def test_durations_read_as_people_write_them(seconds, text):
    assert progress.duration(seconds) == text


def run(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["lnsub", *args])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    return e.value.code, out.out + out.err


def _sweep(storage, name, done: bool):
    spec = make_spec("ner", "syn-en", steps=4, levels=1, prune_fraction=0.2)
    save_state(storage, SweepState(name=name, grid_name="g", grid_source="g.yaml", grid={},
                                   cells=[PlannedCell(spec, 0.1)], skipped=[],
                                   tracking_uri=f"sqlite:///{storage / 'mlflow.db'}",
                                   resources=Resources()))
    if done:
        store = CellStore(storage, spec)
        store.write_spec()
        for level in (0, 1):  # a finished cell as IMP leaves it: each level's mask, metrics, DONE
            store.save_mask(level, {"encoder.weight": torch.arange(20).reshape(4, 5) >= 20 * spec.sparsities[level]})
            store.save_metrics(level, {M.LEVEL: level, M.SPARSITY: spec.sparsities[level], M.METRIC: "f1",
                                       M.SCORE: 0.9, M.LEVEL_SECONDS: 2.0})
            store.mark_level_done(level)
        store.mark_finished()


def test_status_without_a_name_lists_the_storages_sweeps(tmp_path, monkeypatch, capsys):
    _sweep(tmp_path, "alpha", done=True)
    _sweep(tmp_path, "beta", done=False)
    code, out = run(monkeypatch, capsys, "status", "--storage", str(tmp_path))
    assert code == 0
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 5}
    assert set(rows) == {"alpha", "beta"}
    assert [c.strip() for c in rows["alpha"].split("│")[3:5]] == ["1", "1"]  # 1 cell, 1 done
    code, out = run(monkeypatch, capsys, "status", "--name", "alpha", "--storage", str(tmp_path))
    assert code == 0 and "1 of 1" in out and "ner f1 0.9" in out  # levels counted as the grid counts them


def test_resume_needs_a_name_and_a_finished_sweep_is_left_alone(tmp_path, monkeypatch, capsys):
    code, out = run(monkeypatch, capsys, "sweep", "--resume", "--storage", str(tmp_path))
    assert code == 2 and "--resume continues the sweep named by --name" in out
    _sweep(tmp_path, "alpha", done=True)
    from lnsub.orchestrator import ray_backend

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started for a finished sweep")

    monkeypatch.setattr(ray_backend, "start", no_ray)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    code, out = run(monkeypatch, capsys, "sweep", "--name", "alpha", "--resume", "--storage", str(tmp_path))
    assert code == 0 and "nothing left to do" in out, out
    from lnsub.orchestrator import tracking

    state = load_state(tmp_path, "alpha")  # and it logged the finished cell to MLflow at once (no retry loop)
    assert list(tracking.find_cell_runs("alpha", state.tracking_uri)) == [state.specs[0].id]
