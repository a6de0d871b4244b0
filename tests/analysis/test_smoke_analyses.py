"""After the README's smoke sweep: analyze, transfer (a Ray Tune sweep), similarity and report, as a user runs them
(the `analysed` fixture, in tests/analysis/conftest.py, runs them once a session)."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import json

from lnsub.orchestrator import tracking
from lnsub.trainables import transfer_job as jobs_io
from lnsub.analysis.sweeps import load_state

pytestmark = pytest.mark.slow
LEVEL = 3  # the smoke grid's deepest level: 30% sparsity (the `analysed` fixture, tests/analysis/conftest.py)


def rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_transfer_matrix_on_the_smoke_sweep(analysed, tmp_path):
    import torch

    storage = analysed["storage"]
    assert analysed["analyze"].folder.is_dir()
    result = analysed["transfer"]
    assert result.transfer.errors == {} and result.transfer.done == result.transfer.jobs == 15
    before, after = analysed["sigint"]  # Tune's own SIGINT handler is gone once the jobs end: Ctrl-C is the user's
    assert after is before, (before, after)
    # the killed job was retried by Tune and resumed from its checkpoint at step 4, not from scratch
    assert json.loads(analysed["marker"].read_text())["step"] == 6
    assert jobs_io.result(storage, analysed["victim"])["resumed_from_step"] == 4
    folder = result.folder
    matrix = rows(folder / f"transfer_matrix_level{LEVEL}.csv")
    sources = list(dict.fromkeys(r["source"] for r in matrix))
    targets = sorted({r["target"] for r in matrix})
    assert sources == ["syn-ar", "syn-en", "syn-ur", "random", "one-shot θ0"]
    assert targets == ["syn-ar", "syn-en", "syn-ur"] and len(matrix) == len(sources) * len(targets)
    assert (folder / f"transfer_ner_level{LEVEL}.png").stat().st_size > 1000
    summary = rows(folder / f"transfer_summary_level{LEVEL}.csv")
    assert [r["source"] for r in summary] == sources
    # the diagonal is the target's own ticket: a(t,t) is that job's stored score, and its delta is 0
    jobs = {(j.source, j.target.language): j for j in analysed["jobs"]}
    for r in matrix:
        own = jobs_io.result(storage, jobs[(r["target"], r["target"])])["score"]
        assert float(r["a_tt"]) == pytest.approx(own, abs=1e-12)
        if r["source"] == r["target"]:
            assert float(r["a_st"]) == float(r["a_tt"]) and float(r["delta"]) == 0.0
    # head carry-over: each NER cell's IMP score at the level (its metrics.json, read here) beside the same mask
    # trained with a fresh head (its diagonal job's result.json): the artefact, visible, per cell
    head = {r["language"]: r for r in rows(folder / f"transfer_head_level{LEVEL}.csv")}
    assert sorted(head) == targets
    for lang, r in head.items():
        cell = jobs[(lang, lang)].target
        imp = json.loads((Path(storage) / "cells" / cell.id / f"level_{LEVEL}" / "metrics.json").read_text())
        assert float(r["carried_head"]) == pytest.approx(imp["score"], abs=1e-12)
        assert float(r["fresh_head"]) == pytest.approx(jobs_io.result(storage, jobs[(lang, lang)])["score"], abs=1e-12)
        assert float(r["difference"]) == pytest.approx(imp["score"] - float(r["fresh_head"]), abs=1e-12)
    # ... and an independent rerun of one diagonal job, outside Ray, in a fresh storage, scores the same
    diagonal = jobs[("syn-ar", "syn-ar")]
    fresh = tmp_path / "fresh"
    cell = Path(storage) / "cells" / diagonal.target.id
    shutil.copytree(cell, fresh / "cells" / diagonal.target.id)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the Tune trial (1 CPU per worker)
    try:
        again = jobs_io.run_transfer_job(diagonal, fresh)
    finally:
        torch.set_num_threads(threads)
    stored = jobs_io.result(storage, diagonal)
    assert again["mask_sha256"] == stored["mask_sha256"]
    assert again["score"] == pytest.approx(stored["score"], abs=1e-9)
    # rerunning the command resumes: nothing left to run, the same tables
    rerun = analysed["rerun"]
    assert rerun.returncode == 0 and "15/15 jobs done" in rerun.stdout, rerun.stdout[-2000:]
    bad = analysed["lnsub"]("transfer", "--name", "smoke", "--level", "0", cwd=analysed["cwd"], timeout=120)
    assert bad.returncode == 2 and "lnsub: error: --level 0" in bad.stdout
    assert len(bad.stdout.strip().splitlines()) == 1


def test_every_analysis_is_logged_to_its_mlflow_run(analysed):
    assert analysed["report"].returncode == 0, analysed["report"].stdout[-2000:]
    state = load_state(analysed["storage"], "smoke")
    client = tracking._client(state.tracking_uri)
    exp = client.get_experiment_by_name(tracking.experiment_name("smoke"))
    expected = {"overlap": "overlap/overlap.csv", f"transfer-level{LEVEL}": f"transfer-level{LEVEL}/"
                f"transfer_matrix_level{LEVEL}.csv", "similarity": "similarity/similarity.csv",
                "report": "report/report.html"}
    for role, artifact in expected.items():
        runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`lnsub.role` = 'analysis:{role}'")
        assert len(runs) == 1, role
        folder = artifact.split("/")[0]
        assert artifact in {a.path for a in client.list_artifacts(runs[0].info.run_id, folder)}, role


def test_report_renders_in_headless_chromium(analysed, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed here (.ci/run installs it with apt-get)")
    assert "report.html" in analysed["report"].stdout
    report = analysed["storage"] / "sweeps/smoke/analysis/report/report.html"  # the default --out
    assert report.exists()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    dom = subprocess.run([chromium, *flags, f"--user-data-dir={tmp_path / 'u1'}", "--virtual-time-budget=10000",
                          "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-ready="yes"' in dom.stdout  # the page's load handler ran
    sections = dict(re.findall(r'<section id="(\w+)" data-figures="(\d+)" data-rendered="(?:yes)"', dom.stdout))
    assert set(sections) == {"grid", "claims", "tickets", "overlap", "transfer", "similarity"}, sections
    for key in ("tickets", "overlap", "transfer", "similarity"):  # every figure decoded in the browser
        assert int(sections[key]) >= 1, key
    assert "Not computed yet" not in dom.stdout  # every analysis ran, so no section is a placeholder
    named = re.findall(r"<td>(perplexity|accuracy|f1) \d+\.\d{4}</td>", dom.stdout)  # the grid table names each score
    assert len(named) == 9 and set(named) == {"perplexity", "accuracy", "f1"}, named
    levels = re.findall(r"<td>(\d+) of (\d+)</td>", dom.stdout)  # levels counted as `lnsub status` counts them
    assert levels == [("3", "3")] * 9, levels
    assert dom.stdout.count("<b>Reading:</b>") >= sum(int(v) for v in sections.values())
    shot = tmp_path / "report.png"
    run = subprocess.run([chromium, *flags, f"--user-data-dir={tmp_path / 'u2'}", "--hide-scrollbars",
                          "--window-size=1280,2400", f"--screenshot={shot}", report.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[:2] == (2400, 1280)
    assert pixels[..., :3].std() > 0.05  # a page with text and figures, not a blank one


def test_winning_tickets_read_the_theta0_jobs(analysed):
    """`lnsub tickets` trained every level's mask from θ0 with a fresh head; the table's ticket follows those jobs'
    own result.json files (one seed: within 1% of the level-0 score), the round ticket beside it."""
    from lnsub.analysis.tickets import theta0_job
    from lnsub.trainables.store import CellStore

    assert analysed["theta0"][1] == {}  # no θ0 job failed
    said = analysed["tickets"].stdout  # the command line, run again, finds every job done and tabulates them
    assert analysed["tickets"].returncode == 0 and "36/36 θ0 jobs done" in " ".join(said.split()), said[-2000:]
    storage = analysed["storage"]
    tickets = {(r["task"], r["language"]): r for r in rows(storage / "sweeps/smoke/analysis/overlap/winning_tickets.csv")}
    for spec in load_state(storage, "smoke").specs:
        scores = [jobs_io.result(storage, theta0_job(spec, k))["score"] for k in range(spec.levels + 1)]
        greater = spec.task != "mlm"  # perplexity: lower is better
        slack = 0.01 * abs(scores[0])
        ok = [k for k, s in enumerate(scores) if (s >= scores[0] - slack if greater else s <= scores[0] + slack)]
        row = tickets[(spec.task, spec.language)]
        assert row["score_source"] == "θ0" and row["theta0_missing"] == ""
        assert int(row["ticket_level"]) == max(ok) and float(row["dense_score"]) == pytest.approx(scores[0])
        rounds = [CellStore(storage, spec).metrics(k)["score"] for k in range(spec.levels + 1)]
        assert float(row["round_dense_score"]) == pytest.approx(rounds[0])
    page = (storage / "sweeps/smoke/analysis/report/report.html").read_text(encoding="utf-8")
    assert "Scores: each level&#x27;s mask trained from θ0 with a fresh head" in page or \
        "Scores: each level's mask trained from θ0 with a fresh head" in page
    assert page.count("of the same masks trained from θ0 by") == 3  # each task's score figure: both curves
