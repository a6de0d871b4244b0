"""Tickets from θ0: the winning-ticket table reads each level's mask trained from θ0 with a fresh head, not the
head-carried IMP round score; a missing θ0 score is named, never filled in from the rounds.

Planted truth: cells in storage whose round scores rise with the level (the head trains one more round each
level) while the θ0 scores of the same masks fall past level 1, so the two rules pick different tickets; the
expected ticket is worked out here by a plain loop over the rule's definition, not by the code under test."""

from __future__ import annotations

import statistics
from types import SimpleNamespace

import pytest

from lnsub.analysis import claims as C
from lnsub.analysis.analyze import winning_tickets
from lnsub.analysis.report import ticket_table
from lnsub.analysis.tickets import THETA0, score_rows, theta0_job, theta0_jobs
from lnsub.analysis.transfer_matrix import plan_jobs
from lnsub.trainables.metrics import LEVEL, SCORE, SPARSITY
from lnsub.trainables.spec import make_spec
from lnsub.trainables.storage import Storage
from lnsub.trainables.store import CellStore, JobStore

SCHEDULE = {"levels": 3, "prune_fraction": 0.1, "steps": 8, "train_size": 100, "valid_size": 32}
ROUNDS = {0: [0.80, 0.82, 0.85, 0.90], 1: [0.81, 0.83, 0.86, 0.91]}  # rise: the head keeps training
THETA0_SCORES = {0: [0.80, 0.80, 0.79, 0.70], 1: [0.81, 0.80, 0.78, 0.69]}  # the masks themselves


def expected_ticket(scores: dict[int, list[float]]) -> int:
    """The rule by hand: the sparsest level whose mean over seeds is within one sample std of the dense mean."""
    dense = [s[0] for s in scores.values()]
    threshold = statistics.fmean(dense) - statistics.stdev(dense)
    means = [statistics.fmean(s[k] for s in scores.values()) for k in range(4)]
    return max(k for k in range(4) if means[k] >= threshold - 1e-12)


def plant(root: Storage, theta0: dict[int, list[float]], skip: set[tuple[int, int]] = frozenset()):
    specs = [make_spec("ner", "syn-en", seed=seed, **SCHEDULE) for seed in ROUNDS]
    for spec in specs:
        store = CellStore(root, spec)
        for level, score in enumerate(ROUNDS[spec.seed]):
            store.save_metrics(level, {LEVEL: level, SPARSITY: spec.sparsities[level], SCORE: score})
            store.mark_level_done(level)
            if (spec.seed, level) not in skip:
                JobStore(root, theta0_job(spec, level).id).save_result({SCORE: theta0[spec.seed][level]})
    return specs


def test_the_ticket_follows_the_theta0_scores_not_the_rounds(tmp_path):
    root = Storage.open(tmp_path)
    specs = plant(root, THETA0_SCORES)
    assert expected_ticket(ROUNDS) == 3 and expected_ticket(THETA0_SCORES) == 1  # the planted cells differ
    [row] = winning_tickets(root, specs)
    assert row["score_source"] == THETA0 and row["theta0_missing"] == ""
    assert row["ticket_level"] == 1 and row["ticket_sparsity"] == pytest.approx(0.1)
    assert row["ticket_score"] == pytest.approx(0.80)
    assert row["dense_score"] == pytest.approx(0.805)
    assert row["round_ticket_level"] == 3 and row["round_ticket_sparsity"] == pytest.approx(0.3)  # beside, labelled
    # where the θ0 scores rise as the rounds do, both rules agree
    same = plant(Storage.open(tmp_path / "same"), ROUNDS)
    assert winning_tickets(Storage.open(tmp_path / "same"), same)[0]["ticket_level"] == 3


def test_a_missing_theta0_score_is_named_not_replaced(tmp_path):
    root = Storage.open(tmp_path)
    specs = plant(root, THETA0_SCORES, skip={(1, 2)})
    [row] = winning_tickets(root, specs)
    assert row["theta0_missing"] == "2"
    assert row["ticket_level"] is None and row["ticket_sparsity"] is None and row["dense_score"] is None
    assert row["round_ticket_level"] == 3  # the round scores are still reported, beside
    scores = {(r["seed"], r["level"]): r for r in score_rows(root, specs)}
    assert scores[(1, 2)]["theta0_score"] is None and scores[(1, 2)]["round_score"] == pytest.approx(0.86)
    assert scores[(0, 3)]["theta0_score"] == pytest.approx(0.70)


def test_theta0_jobs_are_the_transfer_diagonal():
    specs = [make_spec("ner", lang, **SCHEDULE) for lang in ("syn-en", "syn-ar")]
    jobs = theta0_jobs(specs)
    assert [(j.target.language, j.level) for j in jobs] == [(l, k) for l in ("syn-en", "syn-ar") for k in range(4)]
    diagonal = {j.id for j in plan_jobs(specs, 2) if j.kind == "ticket" and j.source == j.target.language}
    assert diagonal == {j.id for j in jobs if j.level == 2}  # one job, one id: run once for both analyses
    assert all(j.source_cell == j.target_cell for j in jobs)


def ticket_csv_rows(theta0: list[float | None], rounds: list[float]) -> list[dict]:
    return [{"task": "ner", "language": f"l{i}", "seeds": "2", "score_source": THETA0,
             "ticket_sparsity": "" if t is None else str(t), "theta0_missing": "" if t is not None else "1 2",
             "round_ticket_sparsity": str(r)} for i, (t, r) in enumerate(zip(theta0, rounds))]


def claim_c(rows: list[dict]) -> dict:
    row, _ = C.claim_c(C.ClaimInputs("tiny", [0.0, 0.16, 0.32, 0.48, 0.64, 0.8], tickets=rows))
    return row


def test_claim_c_reads_the_theta0_tickets_and_shows_the_rounds_beside():
    row = claim_c(ticket_csv_rows([0.48, 0.48, 0.32], [0.8, 0.8, 0.8]))
    assert row["verdict"] == C.HOLDS  # θ0: median 48%; the rounds (80%, the grid's end) would say otherwise
    assert "median 48%" in row["testbed"] and "IMP round scores (head carried over): median 80%" in row["testbed"]
    assert claim_c(ticket_csv_rows([0.8, 0.8, 0.8], [0.48, 0.48, 0.48]))["verdict"] == C.UNSURE  # grid's end


def test_claim_c_cannot_tell_without_theta0_scores():
    row = claim_c(ticket_csv_rows([0.48, None, 0.48], [0.8, 0.8, 0.8]))
    assert row["verdict"] == C.UNSURE and row["effect"] is None
    assert "θ0 scores missing for 1 of 3 cells (ner-l1)" in row["testbed"]
    assert row["command"] == "lnsub tickets --name tiny"


def test_the_report_names_the_scores_its_ticket_table_used():
    sweep = SimpleNamespace(name="tiny")
    page = "\n".join(ticket_table(sweep, ticket_csv_rows([0.48, 0.32], [0.8, 0.64])))
    assert "Scores: each level's mask trained from θ0 with a fresh head" in page
    assert "48% (round 80%)" in page and "32% (round 64%)" in page
    assert "no θ0 score" not in page
    gaps = "\n".join(ticket_table(sweep, ticket_csv_rows([0.48, None], [0.8, 0.64])))
    assert "θ0 missing (round 64%)" in gaps and "1 of 2 cells have no θ0 score at level(s) 1, 2" in gaps
    assert "lnsub tickets --name tiny" in gaps


def test_the_reports_score_figure_draws_both_scores(tmp_path):
    from lnsub.analysis.report import tickets_section
    from lnsub.analysis.tables import write_csv

    root = Storage.open(tmp_path / "s")
    specs = plant(root, THETA0_SCORES)
    analysis = tmp_path / "analysis"
    write_csv(analysis / "tickets" / "theta0_scores.csv", score_rows(root, specs))
    write_csv(analysis / "overlap" / "winning_tickets.csv", winning_tickets(root, specs))
    (analysis / "figures").mkdir()
    page = tickets_section(SimpleNamespace(name="tiny", specs=specs, storage=root), analysis / "overlap",
                           analysis / "figures")
    rounds = statistics.fmean(s[3] - s[0] for s in ROUNDS.values())
    theta0 = statistics.fmean(s[3] - s[0] for s in THETA0_SCORES.values())
    assert f"the IMP round f1 changes by {rounds:+.4f}" in page
    assert f"the f1 of the same masks trained from θ0 by {theta0:+.4f}" in page
    assert "10% (round 30%)" in page and (analysis / "figures" / "scores_ner.png").stat().st_size > 1000
