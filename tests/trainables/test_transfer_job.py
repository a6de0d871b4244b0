"""A θ0 job that repeats its cell's IMP level 0 takes that level's record: proven by training it for real and
comparing every figure, per task whose schedule allows it; the jobs that do not repeat it still train."""

from __future__ import annotations

import shutil

import pytest

from lnsub.analysis.tickets import theta0_job
from lnsub.trainables import metrics as M
from lnsub.trainables import transfer_job as jobs_io
from lnsub.trainables.imp import run_cell
from lnsub.trainables.spec import make_spec
from lnsub.trainables.store import CellStore

FAST = {"lr": 1e-3, "batch_size": 16, "max_length": 32, "levels": 1, "steps": 8, "train_size": 300,
        "valid_size": 64, "group_by_length": True}


@pytest.mark.parametrize("task", ["ner", "xnli"])
def test_the_level_0_theta0_job_is_its_cells_imp_level_0_figure_for_figure(tmp_path, tiny_model, monkeypatch, task):
    spec = make_spec(task, "syn-ur", **FAST)
    run_cell(spec, tmp_path / "cell")
    job = theta0_job(spec, 0)
    assert jobs_io.repeats_imp_level_0(job)
    for name in ("trained", "taken"):
        shutil.copytree(tmp_path / "cell", tmp_path / name)
    taken = jobs_io.run_transfer_job(job, tmp_path / "taken")
    with monkeypatch.context() as m:
        m.setattr(jobs_io, "repeats_imp_level_0", lambda job: False)  # as before: the job trains
        trained = jobs_io.run_transfer_job(job, tmp_path / "trained")
    assert trained[M.STEPS_TRAINED] == spec.steps and M.SAME_AS not in trained  # it did train
    assert taken[M.STEPS_TRAINED] == 0 and taken[M.SAME_AS] == f"{spec.id}/level_0"
    figures = [M.SCORE, M.METRIC, M.DENSITY, M.MASK_SHA256, M.STEPS, M.LEVEL, M.SPARSITY, *M.TASK_METRICS]
    assert {k: taken.get(k) for k in figures} == {k: trained.get(k) for k in figures}
    assert taken[M.SCORE] == CellStore(tmp_path / "cell", spec).metrics(0)[M.SCORE]
    assert jobs_io.run_transfer_job(job, tmp_path / "taken") == taken  # finished: returned as it stands
    if task == "ner":  # a level 0 trained on two workers (dropout per rank) is not this job's figures: it trains
        shutil.copytree(tmp_path / "cell", tmp_path / "two")
        real = CellStore.metrics
        with monkeypatch.context() as m:
            m.setattr(CellStore, "metrics", lambda self, k: {**real(self, k), M.WORKERS: 2})
            two = jobs_io.run_transfer_job(job, tmp_path / "two")
        assert two[M.STEPS_TRAINED] == spec.steps and M.SAME_AS not in two


def test_jobs_that_do_not_repeat_level_0_are_not_taken_from_it():
    ner = make_spec("ner", "syn-ur", **FAST)
    assert not jobs_io.repeats_imp_level_0(theta0_job(ner, 1))  # another mask
    mlm = make_spec("mlm", "syn-ur", **FAST)
    assert not jobs_io.repeats_imp_level_0(theta0_job(mlm, 0))  # sub-network training runs twice as long
    settling = make_spec("ner", "syn-ur", **{**FAST, "settle_stop": 0.99})
    assert not jobs_io.repeats_imp_level_0(theta0_job(settling, 0))  # level 0 may have stopped early
    other = make_spec("ner", "syn-en", **FAST)
    across = jobs_io.TransferJob("ticket", "syn-en", other.to_dict(), ner.to_dict(), 0, 0.0)
    assert not jobs_io.repeats_imp_level_0(across)  # another language's cell
