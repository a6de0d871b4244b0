"""Transfer jobs and the transfer matrix: the applied mask is exactly the source's, the arithmetic is docs/method.md's."""

from __future__ import annotations

import hashlib
import statistics

import pytest

from lnsub.analysis.transfer_matrix import ONESHOT, RANDOM, check_sources, plan_jobs, transfer_tables
from lnsub.trainables import pruning
from lnsub.trainables import transfer_job as jobs_io
from lnsub.trainables.storage import Storage
from lnsub.trainables.errors import LnsubError
from lnsub.trainables.masks import load_masks, pack
from lnsub.trainables.spec import make_spec
from lnsub.trainables.store import CellStore
from lnsub.trainables.transfer_job import TransferJob


def _sha(masks) -> str:
    return hashlib.sha256(pack(masks)).hexdigest()


# --- the table arithmetic, on hand-written results (no training) ---------------------------------

def _fake_results(storage, task, scores: dict[tuple[str, str], list[float]]) -> list[TransferJob]:
    """Write result.json + DONE for jobs (source, target) -> one score per seed."""
    jobs = []
    for (source, target), per_seed in scores.items():
        for seed, score in enumerate(per_seed):
            tspec = make_spec(task, target, seed=seed, steps=5, levels=2)
            kind = {"random": "random", "oneshot": "oneshot"}.get(source, "ticket")
            src = None if kind != "ticket" else make_spec(task, source, seed=seed, steps=5, levels=2).to_dict()
            job = TransferJob(kind, source, src, tspec.to_dict(), 2, 0.2)
            folder = jobs_io.job_dir(storage, job)
            store = Storage.open(storage)
            store.write_json(folder / "result.json", {"task": task, "target": target, "seed": seed, "score": score,
                                                      "density": 0.8, "metric": "m"})
            store.mark_done(folder)
            jobs.append(job)
    return jobs


def test_matrix_with_seeds_uses_one_std_and_the_relative_drop(tmp_path):
    scores = {("syn-en", "syn-en"): [0.80, 0.90], ("syn-fr", "syn-fr"): [0.60, 0.62],
              ("syn-en", "syn-fr"): [0.50, 0.52], ("syn-fr", "syn-en"): [0.80, 0.82],
              ("random", "syn-en"): [0.40, 0.50], ("random", "syn-fr"): [0.30, 0.30]}
    jobs = _fake_results(tmp_path, "xnli", scores)
    tables = transfer_tables(tmp_path, jobs)
    matrix = {(r["source"], r["target"]): r for r in tables["matrix"]}
    assert len(matrix) == 6
    # closed forms: a(s,t) = mean over seeds, slack = sample std of a(t,t) over seeds
    fr_en = matrix[("syn-fr", "syn-en")]
    assert fr_en["a_st"] == pytest.approx(0.81) and fr_en["a_tt"] == pytest.approx(0.85)
    assert fr_en["slack"] == pytest.approx(statistics.stdev([0.8, 0.9]))
    assert fr_en["delta"] == pytest.approx(-0.04) and fr_en["success"]  # 0.04 < std 0.0707
    en_fr = matrix[("syn-en", "syn-fr")]
    assert en_fr["delta"] == pytest.approx(-0.10) and not en_fr["success"]  # 0.10 > std 0.0141
    assert matrix[("syn-en", "syn-en")]["delta"] == 0 and matrix[("syn-en", "syn-en")]["success"]
    summary = {r["source"]: r for r in tables["summary"]}
    assert summary["syn-en"]["mean_relative_drop"] == pytest.approx(-0.10 / 0.61)  # over targets != source
    assert summary["syn-fr"]["mean_relative_drop"] == pytest.approx(-0.04 / 0.85)
    assert summary["random"]["mean_relative_drop"] == pytest.approx(((0.45 - 0.85) / 0.85 + (0.30 - 0.61) / 0.61) / 2)
    assert summary["random"]["targets"] == 2 and summary["random"]["successes"] == 0


def test_lower_is_better_metric_succeeds_below_the_slack(tmp_path):
    scores = {("syn-en", "syn-en"): [30.0], ("syn-fr", "syn-fr"): [40.0],
              ("syn-en", "syn-fr"): [40.3], ("syn-fr", "syn-en"): [31.0]}
    tables = transfer_tables(tmp_path, _fake_results(tmp_path, "mlm", scores))
    matrix = {(r["source"], r["target"]): r for r in tables["matrix"]}
    assert matrix[("syn-en", "syn-fr")]["slack"] == pytest.approx(0.4)  # 1% of a(t,t) with one seed
    assert matrix[("syn-en", "syn-fr")]["success"]  # perplexity 0.3 worse: within 1%
    assert not matrix[("syn-fr", "syn-en")]["success"]  # 1.0 worse than 30: beyond 0.3


# --- real jobs on real cells ------------------------------------------------------------------------

@pytest.mark.slow
def test_plan_and_jobs_apply_exactly_the_source_mask(mini_sweep):
    storage, specs = mini_sweep
    seed0 = [s for s in specs if s.seed == 0]
    jobs = plan_jobs(seed0, level=2)
    assert len(jobs) == 2 * (2 + 2)  # 2 targets x (2 language tickets + random + one-shot)
    assert {j.source for j in jobs} == {"syn-en", "syn-ar", RANDOM, ONESHOT}
    check_sources(storage, jobs)
    with pytest.raises(LnsubError, match="levels 1..2"):
        plan_jobs(seed0, level=3)
    with pytest.raises(LnsubError, match="no mlm cells"):
        plan_jobs(seed0, level=1, tasks=["mlm"])
    en, ar = (next(s for s in seed0 if s.language == lang) for lang in ("syn-en", "syn-ar"))
    by = {(j.source, j.target.language): j for j in jobs}
    ticket = jobs_io.run_transfer_job(by[("syn-en", "syn-ar")], storage)
    assert ticket["mask_sha256"] == _sha(load_masks(CellStore(storage, en).level_dir(2)))
    assert ticket["target"] == "syn-ar" and ticket["density"] == pytest.approx(1 - en.sparsities[2], abs=1e-4)
    oneshot = jobs_io.run_transfer_job(by[(ONESHOT, "syn-ar")], storage)
    theta0_mask = CellStore(storage, ar).baseline_dir("oneshot_pretrained", ar.sparsities[2])
    assert oneshot["mask_sha256"] == _sha(load_masks(theta0_mask))
    random_job = by[(RANDOM, "syn-ar")]
    rnd = jobs_io.run_transfer_job(random_job, storage)
    from lnsub.trainables.loading import model_path
    from lnsub.trainables.tasks import get_task

    params = pruning.prunable_parameters(get_task("ner").load_model(model_path(random_job.target)))
    total = pruning.prunable_count(params)
    assert rnd["density"] == (total - pruning.pruned_target(1, ar.sparsities[2], total)) / total  # exact count of zeros
    assert rnd["mask_sha256"] not in (ticket["mask_sha256"], oneshot["mask_sha256"])
    again = jobs_io.run_transfer_job(by[("syn-en", "syn-ar")], storage)  # finished: returned, not retrained
    assert again == ticket


def test_cross_task_rows_take_the_same_languages_ticket_from_each_other_task(tmp_path):
    specs = [make_spec(task, lang, steps=5, levels=3) for task in ("ner", "xnli", "mlm")
             for lang in ("syn-en", "syn-ar")]
    plain = plan_jobs(specs, level=2, tasks=["ner"])
    crossed = plan_jobs(specs, level=2, tasks=["ner"], cross_task=True)
    extra = [j for j in crossed if j not in plain]
    assert len(plain) == 2 * 4 and len(extra) == 2 * 2  # 2 targets x (mlm mask, xnli mask)
    for job in extra:
        source = job.source_cell
        assert job.source == f"{source['task']} mask" and source["task"] in ("mlm", "xnli")
        assert source["language"] == job.target.language and job.target.task == "ner"
    with pytest.raises(LnsubError, match="have no mask at level 2 yet"):
        check_sources(tmp_path, crossed)  # nothing has run in this storage
