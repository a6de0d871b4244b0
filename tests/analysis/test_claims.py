"""The paper's claims table: verdict rules on hand-made rows, the control side by side, and (slow) the smoke
sweep's table recomputed from its CSVs by plain code here."""

from __future__ import annotations

import csv
import math
import re
import shutil
import statistics
from itertools import combinations
from pathlib import Path
from types import SimpleNamespace

import pytest

from lnsub.analysis import claims as C
from lnsub.analysis.report import report, side_by_side_table

ROOT = Path(__file__).resolve().parents[2]
GRID = [round(0.1 * k, 6) for k in range(10)]  # levels 0..9, up to 90%


def overlap_rows(task: str, level: int, per_seed: dict[int, list[float]]) -> list[dict]:
    """Total-grouping rows: seed -> the Jaccard of each language pair (as the CSV gives them: text)."""
    langs = ["en", "fr", "de", "ar"]
    pairs = list(combinations(langs, 2))
    return [{"task": task, "seed": str(seed), "level": str(level), "sparsity": str(GRID[level]), "grouping": "total",
             "group": "all", "language_a": pairs[i][0], "language_b": pairs[i][1], "jaccard": str(j)}
            for seed, values in per_seed.items() for i, j in enumerate(values)]


def inputs(**rows) -> C.ClaimInputs:
    return C.ClaimInputs("demo", GRID, **rows)


def by_id(inp: C.ClaimInputs) -> dict[str, dict]:
    return {r["claim"]: r for r in C.claims(inp)[0]}


# --- the rules -----------------------------------------------------------------------------------

def test_the_papers_figures_are_docs_method_wording():
    method = (ROOT / "docs" / "method.md").read_text(encoding="utf-8")
    for claim, (_, paper) in C.PAPER.items():
        assert paper in method, claim


@pytest.mark.parametrize("margin, spread, expected", [
    (0.3, 0.1, C.HOLDS), (0.2, 0.1, C.UNSURE), (0.0, 0.1, C.UNSURE), (-0.2, 0.1, C.FAILS),
    (0.0, 0.0, C.FAILS), (1e-3, 0.0, C.HOLDS), (0.5, None, C.UNSURE)])
def test_one_comparison(margin, spread, expected):
    assert C.verdict(margin, spread) == expected


def test_a_claim_of_several_units():
    assert C.combine([C.HOLDS, C.HOLDS]) == C.HOLDS
    assert C.combine([C.HOLDS, C.UNSURE]) == C.UNSURE
    assert C.combine([C.HOLDS, C.UNSURE, C.FAILS]) == C.FAILS
    assert C.combine([]) == C.UNSURE


def test_a_overlap_above_random():
    # level 5 (50%): random masks overlap 1/3; three seeds, so the spread is over seeds
    high = overlap_rows("ner", 5, {0: [0.80, 0.82, 0.78], 1: [0.81, 0.80, 0.79], 2: [0.79, 0.80, 0.81]})
    assert by_id(inputs(overlap=high))["a"]["verdict"] == C.HOLDS
    low = overlap_rows("ner", 5, {0: [0.30, 0.31, 0.29], 1: [0.30, 0.30, 0.30], 2: [0.31, 0.29, 0.30]})
    assert by_id(inputs(overlap=low))["a"]["verdict"] == C.FAILS
    # seed means 0.30, 0.40, 0.35: 0.017 above random with a spread of 0.05
    noisy = overlap_rows("ner", 5, {0: [0.30] * 3, 1: [0.40] * 3, 2: [0.35] * 3})
    row = by_id(inputs(overlap=noisy))["a"]
    assert row["verdict"] == C.UNSURE and "0.350 (0.300–0.400 over 3 seeds)" in row["testbed"]
    assert "random 0.333" in row["comparison"]
    # one level fails, the claim fails
    assert by_id(inputs(overlap=high + overlap_rows("ner", 9, {0: [0.01] * 3})))["a"]["verdict"] == C.FAILS
    # one seed, one pair: no spread of any kind
    single = [r for r in high if r["seed"] == "0"][:1]
    row = by_id(inputs(overlap=single))["a"]
    assert row["verdict"] == C.UNSURE and "no spread" in row["testbed"]


def test_one_seed_uses_the_spread_over_pairs_and_says_so():
    row = by_id(inputs(overlap=overlap_rows("ner", 5, {0: [0.7, 0.8, 0.9]})))["a"]
    assert row["verdict"] == C.HOLDS
    assert "one seed; ± 0.100 std over 3 language pairs" in row["testbed"]


def seed_rows(task: str, level: int, values: dict[tuple[int, int], list[float]]) -> list[dict]:
    return [{"task": task, "language": lang, "level": str(level), "sparsity": str(GRID[level]), "seed_a": str(a),
             "seed_b": str(b), "jaccard": str(j), "random_closed_form": "0.333"}
            for (a, b), js in values.items() for lang, j in zip(["en", "fr", "de", "ar"], js)]


def test_b_same_language_other_seed_overlaps_most():
    cross = overlap_rows("ner", 5, {0: [0.80, 0.82, 0.78], 1: [0.81, 0.80, 0.79], 2: [0.79, 0.80, 0.81]})
    same = seed_rows("ner", 5, {(0, 1): [0.95, 0.96], (0, 2): [0.94, 0.95], (1, 2): [0.96, 0.95]})
    assert by_id(inputs(overlap=cross, seed_overlap=same))["b"]["verdict"] == C.HOLDS
    lower = seed_rows("ner", 5, {(0, 1): [0.60, 0.61], (0, 2): [0.62, 0.60], (1, 2): [0.61, 0.60]})
    assert by_id(inputs(overlap=cross, seed_overlap=lower))["b"]["verdict"] == C.FAILS
    row = by_id(inputs(overlap=cross))["b"]  # one seed: nothing to compare
    assert row["verdict"] == C.UNSURE and "two seeds" in row["note"]


def ticket_rows(sparsities: list[float], seeds: int = 3) -> list[dict]:
    return [{"task": "ner", "language": f"l{i}", "seeds": str(seeds), "dense_score": "0.8", "ticket_level": "0",
             "ticket_sparsity": str(s), "ticket_score": "0.8", "threshold": "0.79"} for i, s in enumerate(sparsities)]


def test_c_tickets_near_half():
    assert by_id(inputs(tickets=ticket_rows([0.5, 0.5, 0.4, 0.6])))["c"]["verdict"] == C.HOLDS
    assert by_id(inputs(tickets=ticket_rows([0.1, 0.2, 0.1])))["c"]["verdict"] == C.FAILS
    short = C.ClaimInputs("demo", GRID[:4], tickets=ticket_rows([0.3, 0.3, 0.2]))  # the grid ends at 30%
    row = by_id(short)["c"]
    assert row["verdict"] == C.UNSURE and "sparser still" in row["note"]


def transfer_rows(task: str, own: float, cross: float, random: float, oneshot: float,
                  seeds=(0, 1, 2), jitter: float = 0.001) -> tuple[list[dict], list[dict]]:
    """Scores for two languages (a(s,t) of every source) and a matrix whose transfers all succeed."""
    scores = []
    for seed in seeds:
        e = jitter * seed
        for target in ("en", "ar"):
            for source, kind, score in ((target, "ticket", own), ("ar" if target == "en" else "en", "ticket", cross),
                                        ("random", "random", random), ("one-shot θ0", "oneshot", oneshot)):
                scores.append({"task": task, "source": source, "source_kind": kind, "target": target,
                               "seed": str(seed), "level": "5", "sparsity": "0.5", "score": str(score + e)})
    matrix = [{"task": task, "source": s, "target": t, "success": "True"}
              for s in ("en", "ar") for t in ("en", "ar")]
    return scores, matrix


def test_d_transfer_small_drop_beats_random_and_oneshot():
    scores, matrix = transfer_rows("ner", own=0.80, cross=0.79, random=0.50, oneshot=0.60)
    row = by_id(inputs(transfer_scores={5: scores}, transfer_matrix={5: matrix}))["d"]
    assert row["verdict"] == C.HOLDS and "2/2 transfers succeed" in row["testbed"]
    scores, matrix = transfer_rows("ner", own=0.80, cross=0.60, random=0.79, oneshot=0.79)
    assert by_id(inputs(transfer_scores={5: scores}, transfer_matrix={5: matrix}))["d"]["verdict"] == C.FAILS
    # lower is better (perplexity): the sign flips, so a random mask's higher perplexity is a loss
    scores, matrix = transfer_rows("mlm", own=10.0, cross=10.1, random=20.0, oneshot=15.0)
    assert by_id(inputs(transfer_scores={5: scores}, transfer_matrix={5: matrix}))["d"]["verdict"] == C.HOLDS
    for r in matrix:
        r["success"] = "False"  # beats both baselines, but no transfer is within one std: not a small drop
    assert by_id(inputs(transfer_scores={5: scores}, transfer_matrix={5: matrix}))["d"]["verdict"] == C.FAILS


def baseline_rows(task: str, level: int, per_seed: dict[int, list[float]]) -> list[dict]:
    return [{"task": task, "seed": str(seed), "level": str(level), "sparsity": str(GRID[level]), "language": lang,
             "random_closed_form": "0.333", "random_empirical": "0.333", "oneshot_pretrained": str(v)}
            for seed, values in per_seed.items() for lang, v in zip(["en", "fr", "de", "ar"], values)]


def test_e_overlap_beyond_theta0_per_level():
    cross = (overlap_rows("ner", 2, {0: [0.90, 0.91, 0.89], 1: [0.90, 0.90, 0.90]})
             + overlap_rows("ner", 5, {0: [0.80, 0.82, 0.78], 1: [0.81, 0.80, 0.79]}))
    base = (baseline_rows("ner", 2, {0: [0.95, 0.95, 0.95, 0.95], 1: [0.95, 0.94, 0.96, 0.95]})
            + baseline_rows("ner", 5, {0: [0.70, 0.71, 0.69, 0.70], 1: [0.70, 0.70, 0.70, 0.70]}))
    rows, details = C.claims(inputs(overlap=cross, baselines=base))
    e = {r["claim"]: r for r in rows}["e"]
    assert e["verdict"] == C.HOLDS  # at the deepest level (50%), though not at 20%
    levels = [u for u in details if u["claim"] == "e"]
    assert [(u["sparsity"], u["verdict"]) for u in levels] == [(0.2, C.FAILS), (0.5, C.HOLDS)]
    assert "margin -0.050 at 20% → +0.100 at 50%" in e["note"]
    flipped = base[:8] + baseline_rows("ner", 5, {0: [0.90] * 4, 1: [0.91] * 4})
    assert by_id(inputs(overlap=cross, baselines=flipped))["e"]["verdict"] == C.FAILS


def similarity_rows(dense: list[float], random: list[float]) -> list[dict]:
    pairs = list(combinations(["en", "fr", "de"], 2))
    return [{"encoder": enc, "layer": str(layer), "language_a": a, "language_b": b, "cka": str(v),
             "retrieval": "0.5"} for enc, vs in (("dense", dense), ("random", random))
            for layer in (0, 2) for (a, b), v in zip(pairs, vs)]


def test_f_representations_align_above_random():
    assert by_id(inputs(similarity=similarity_rows([0.8, 0.85, 0.9], [0.2, 0.25, 0.3])))["f"]["verdict"] == C.HOLDS
    assert by_id(inputs(similarity=similarity_rows([0.2, 0.25, 0.3], [0.8, 0.85, 0.9])))["f"]["verdict"] == C.FAILS
    same = similarity_rows([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert by_id(inputs(similarity=same))["f"]["verdict"] == C.UNSURE


def test_an_analysis_that_has_not_run_names_its_command():
    rows = by_id(inputs())
    assert {r["verdict"] for r in rows.values()} == {C.UNSURE}
    assert rows["a"]["command"] == "lnsub analyze --name demo"
    assert rows["d"]["command"] == "lnsub transfer --name demo --level 9"
    assert rows["f"]["command"] == "lnsub similarity --name demo"


# --- the control --------------------------------------------------------------------------------

def full_inputs(j: float, same: float, oneshot: float, dense: float, cross: float, rnd: float) -> C.ClaimInputs:
    scores, matrix = transfer_rows("ner", own=0.80, cross=cross, random=rnd, oneshot=rnd)
    return inputs(overlap=overlap_rows("ner", 5, {s: [j, j + 0.01, j - 0.01] for s in (0, 1, 2)}),
                  seed_overlap=seed_rows("ner", 5, {(0, 1): [same, same], (0, 2): [same, same + 0.01],
                                                    (1, 2): [same, same - 0.01]}),
                  baselines=baseline_rows("ner", 5, {s: [oneshot, oneshot + 0.01, oneshot - 0.01, oneshot]
                                                     for s in (0, 1, 2)}),
                  tickets=ticket_rows([0.5, 0.5, 0.4]), transfer_scores={5: scores}, transfer_matrix={5: matrix},
                  similarity=similarity_rows([dense, dense + 0.02, dense - 0.02], [0.2, 0.22, 0.18]))


def test_control_side_by_side():
    model = C.claims(full_inputs(j=0.80, same=0.95, oneshot=0.70, dense=0.80, cross=0.79, rnd=0.50))[0]
    control = C.claims(full_inputs(j=0.40, same=0.45, oneshot=0.60, dense=0.25, cross=0.55, rnd=0.50))[0]
    assert {r["verdict"] for r in model} == {C.HOLDS}
    side = C.compare(model, control)
    weaker = {r["claim"]: r["weaker_on_control"] for r in side}
    assert weaker == {"a": "yes", "b": "yes", "c": "no (within spread)", "d": "yes", "e": "yes", "f": "yes"}
    assert C.separates(side)
    page = side_by_side_table(SimpleNamespace(name="mbert"), SimpleNamespace(name="control"), side)
    assert C.CANNOT_SEPARATE not in page and "measurably weaker on the control" in page
    same = C.compare(model, model)
    assert {r["weaker_on_control"] for r in same} == {"no (within spread)"} and not C.separates(same)
    page = side_by_side_table(SimpleNamespace(name="mbert"), SimpleNamespace(name="mbert-copy"), same)
    assert f"No claim is measurably weaker on the control: {C.CANNOT_SEPARATE}." in page
    # a claim the control has not computed cannot be compared
    partial = C.compare(model, C.claims(inputs())[0])
    assert {r["weaker_on_control"] for r in partial} == {C.UNSURE} and not C.separates(partial)


# --- the smoke sweep's table, recomputed here from its CSVs ------------------------------------------

def read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def mean_and_spread(by_seed: dict) -> tuple[float, float | None]:
    """Mean over seeds of each seed's mean; std over seeds, or with one seed std over that seed's values."""
    means = [sum(v) / len(v) for v in by_seed.values()]
    if len(means) >= 2:
        return sum(means) / len(means), statistics.stdev(means)
    values = list(by_seed.values())[0]
    return means[0], statistics.stdev(values) if len(values) >= 2 else None


def rule(margin: float, spread: float | None) -> str:
    if spread is None:
        return "cannot tell"
    return "holds" if margin > 2 * spread + 1e-9 else "does not hold" if margin <= -2 * spread + 1e-9 else "cannot tell"


def all_of(verdicts: list[str]) -> str:
    return "holds" if verdicts and set(verdicts) == {"holds"} else \
        "does not hold" if "does not hold" in verdicts else "cannot tell"


def recompute_overlap(folder: Path) -> tuple[dict, dict]:
    """(task, level) -> (margin, spread) for (a) (against d/(2-d)) and (e) (against θ0's one-shot mask)."""
    cross, oneshot = {}, {}
    for r in read(folder / "overlap.csv"):
        if r["grouping"] == "total":
            key = (r["task"], int(r["level"]), float(r["sparsity"]))
            cross.setdefault(key, {}).setdefault(r["seed"], []).append(float(r["jaccard"]))
    for r in read(folder / "overlap_baselines.csv"):
        key = (r["task"], int(r["level"]), float(r["sparsity"]))
        oneshot.setdefault(key, {}).setdefault(r["seed"], []).append(float(r["oneshot_pretrained"]))
    a, e = {}, {}
    for key, by_seed in cross.items():
        j, sj = mean_and_spread(by_seed)
        d = 1 - key[2]
        a[key[:2]] = (j - d / (2 - d), sj)
        if key in oneshot:
            o, so = mean_and_spread(oneshot[key])
            e[key[:2]] = (j - o, None if sj is None or so is None else math.hypot(sj, so))
    return a, e


def recompute_transfer(folder: Path, level: int) -> dict:
    """task -> [(margin against random, spread), (margin against one-shot, spread), share of successes]."""
    scores = read(folder / f"transfer_scores_level{level}.csv")
    matrix = read(folder / f"transfer_matrix_level{level}.csv")
    out = {}
    for task in sorted({r["task"] for r in scores}):
        rows = [r for r in scores if r["task"] == task]
        greater = next(r["greater_is_better"] for r in matrix if r["task"] == task) == "True"
        own = {(r["seed"], r["target"]): float(r["score"]) for r in rows if r["source"] == r["target"]}
        langs = {t for _, t in own}
        cost = {"ticket": {}, "random": {}, "oneshot": {}}
        for r in rows:
            if r["source"] == r["target"] or (r["source_kind"] == "ticket" and r["source"] not in langs):
                continue
            base = own[(r["seed"], r["target"])]
            c = (float(r["score"]) - base) / base
            cost[r["source_kind"]].setdefault(r["seed"], []).append(-c if greater else c)
        lang, sl = mean_and_spread(cost["ticket"])
        margins = []
        for kind in ("random", "oneshot"):
            m, s = mean_and_spread(cost[kind])
            margins.append((m - lang, None if s is None or sl is None else math.hypot(s, sl)))
        cross = [r for r in matrix if r["task"] == task and r["source"] in langs and r["source"] != r["target"]]
        out[task] = margins + [sum(r["success"] == "True" for r in cross) / len(cross)]
    return out


@pytest.mark.slow
def test_the_smoke_sweeps_claims_table(analysed, tmp_path):
    assert analysed["report"].returncode == 0, analysed["report"].stdout[-2000:]
    analysis = analysed["storage"] / "sweeps" / "smoke" / "analysis"
    table = {r["claim"]: r for r in read(analysis / "report" / "claims.csv")}
    assert list(table) == list("abcdef")
    details: dict = {}
    for u in read(analysis / "report" / "claim_details.csv"):
        details.setdefault((u["claim"], u["task"], int(u["level"])), []).append(u)

    def check(claim: str, key: tuple, expected: list[tuple[float, float | None]]) -> list[str]:
        units = details[(claim, *key)]
        assert [float(u["margin"]) for u in units] == pytest.approx([m for m, _ in expected], abs=1e-9)
        assert [None if u["spread"] == "" else float(u["spread"]) for u in units] == \
            pytest.approx([s for _, s in expected], abs=1e-9)
        assert [u["verdict"] for u in units] == [rule(*x) for x in expected]
        return [u["verdict"] for u in units]

    a, e = recompute_overlap(analysis / "overlap")
    assert table["a"]["verdict"] == all_of([v for key, x in a.items() for v in check("a", key, [x])])
    last = {task: max(level for t, level in e if t == task) for task, _ in e}
    assert table["e"]["verdict"] == all_of([v for key, x in e.items() for v in check("e", key, [x])
                                            if key[1] == last[key[0]]])
    seeds = {r["seed"] for r in read(analysis / "overlap" / "overlap.csv")}
    assert len(seeds) == 1 and table["b"]["verdict"] == "cannot tell"  # one seed: no same-language pair
    tickets = [float(r["ticket_sparsity"]) for r in read(analysis / "overlap" / "winning_tickets.csv")]
    median, step, end = statistics.median(tickets), 0.1, 0.3  # the smoke grid: 10% steps, up to 30%
    near = abs(median - 0.5) <= step + 1e-9
    assert table["c"]["verdict"] == ("holds" if near and end >= 0.5 + step - 1e-9 else
                                     "does not hold" if not near and median < end - 1e-9 else "cannot tell")
    assert f"median {median:.0%}" in table["c"]["testbed"]
    verdicts, shares = [], []
    for task, (rnd, one, share) in recompute_transfer(analysis / "transfer", 3).items():
        verdicts += check("d", (task, 3), [rnd, one])
        shares.append(share)
    assert table["d"]["verdict"] == ("does not hold" if min(shares) < 0.5 else all_of(verdicts))
    sim = read(analysis / "similarity" / "similarity.csv")
    top = max(int(r["layer"]) for r in sim)
    cka = {enc: [float(r["cka"]) for r in sim if r["encoder"] == enc and int(r["layer"]) == top]
           for enc in ("dense", "random")}
    f = (statistics.fmean(cka["dense"]) - statistics.fmean(cka["random"]),
         math.hypot(statistics.stdev(cka["dense"]), statistics.stdev(cka["random"])))
    assert table["f"]["verdict"] == all_of(check("f", ("all", top), [f]))
    assert f"CKA {statistics.fmean(cka['dense']):.3f}" in table["f"]["testbed"]
    page = (analysis / "report" / "report.html").read_text(encoding="utf-8")
    assert '<section id="claims"><h2>The paper&#x27;s claims</h2>' in page
    for r in table.values():
        assert re.search(rf"<td>{r['claim']}</td>.*?<td>{r['verdict']}</td>", page)


@pytest.mark.slow
def test_report_control_option(analysed, tmp_path):
    cwd, storage = analysed["cwd"], analysed["storage"]
    bad = analysed["lnsub"]("report", "--name", "smoke", "--control", "nope", cwd=cwd, timeout=120)
    assert bad.returncode == 2 and "lnsub: error:" in bad.stdout and "nope" in bad.stdout, bad.stdout
    copy = tmp_path / "analysis"  # the model's analysis folder, copied, so the session's report stays as it is
    shutil.copytree(storage / "sweeps" / "smoke" / "analysis", copy)
    result = report("smoke", str(storage), out=str(copy), control="smoke")  # the sweep against itself
    side = read(copy / "report" / "claims_vs_control.csv")
    assert [r["claim"] for r in side] == list("abcdef")
    assert {r["weaker_on_control"] for r in side} <= {"no (within spread)", "cannot tell"}
    page = result.extra["path"].read_text(encoding="utf-8")
    assert f"No claim is measurably weaker on the control: {C.CANNOT_SEPARATE}." in page
