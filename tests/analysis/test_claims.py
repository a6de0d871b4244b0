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

import numpy as np
import pytest

from lnsub.analysis import claims as C
from lnsub.analysis.report import report, side_by_side_table

ROOT = Path(__file__).resolve().parents[2]
GRID = [round(0.1 * k, 6) for k in range(10)]  # levels 0..9, up to 90%


def pair_rows(task: str, level: int, value, langs=("en", "fr", "de", "ar"), seeds=(0, 1, 2)) -> list[dict]:
    """pair_overlap.csv's rows for every pair of cells (language x seed) of a task at a level (as the CSV gives
    them: text); value(kind, cell_a, cell_b) -> (jaccard, random_matched, excess_jaccard)."""
    cells = [(lang, seed) for lang in langs for seed in seeds]
    rows = []
    for (la, sa), (lb, sb) in combinations(cells, 2):
        kind = ("cross_language_cross_seed" if sa != sb else "cross_language_same_seed") if la != lb else \
            "same_language_cross_seed"
        j, rnd, excess = value(kind, (la, sa), (lb, sb))
        rows.append({"task": task, "level": str(level), "sparsity": str(GRID[level]), "kind": kind,
                     "language_a": la, "seed_a": str(sa), "language_b": lb, "seed_b": str(sb), "jaccard": str(j),
                     "random_matched": str(rnd), "random_uniform": str(round(1 - GRID[level], 6) / (1 + GRID[level])),
                     "ratio": str(1 + excess), "expected_jaccard": str(j - excess), "excess_jaccard": str(excess),
                     "excess_jaccard_trained": ""})
    return rows


def noisy(seed: int, cross: float, same: float = 0.0, excess: float = 0.0, sd: float = 0.01):
    """A value function: Jaccard `cross` across languages (+ `same` for the same language), matched random 0.2,
    excess `excess`, each cell with its own small effect (sd) on every pair it is in."""
    rng = np.random.default_rng(seed)
    effect: dict = {}

    def cell(c):
        return effect.setdefault(c, rng.normal(0, sd))

    def value(kind, a, b):
        base = cell(a) + cell(b)
        return (cross + base + (same if kind == "same_language_cross_seed" else 0.0), 0.2, excess + base)

    return value


def inputs(**rows) -> C.ClaimInputs:
    return C.ClaimInputs("demo", GRID, **rows)


def by_id(inp: C.ClaimInputs) -> dict[str, dict]:
    return {r["claim"]: r for r in C.claims(inp)[0]}


# --- the rules -----------------------------------------------------------------------------------

def test_the_papers_figures_are_docs_method_wording():
    method = (ROOT / "docs" / "method.md").read_text(encoding="utf-8")
    for claim, (_, paper) in C.PAPER.items():
        assert paper in method, claim


def test_the_primary_unit_is_the_level_nearest_half():
    assert C.primary_level({1: 0.16, 2: 0.32, 3: 0.48, 4: 0.64, 5: 0.8}) == 3  # the science grid: 48%
    assert C.primary_level({1: 0.1, 2: 0.2, 3: 0.3}) == 3  # the smoke grid ends at 30%
    assert C.primary_level({4: 0.4, 6: 0.6}) == 6  # a tie goes to the sparser level


def test_a_overlap_above_matched_random_masks():
    high = pair_rows("ner", 5, noisy(0, cross=0.8))
    row = by_id(inputs(pairs=high))["a"]
    assert row["verdict"] == C.HOLDS and "random masks of the same per-matrix densities 0.200" in row["comparison"]
    assert row["effect"] == pytest.approx(0.6, abs=0.01) and row["effect_se"] < 0.01
    low = pair_rows("ner", 5, noisy(1, cross=0.1))
    assert by_id(inputs(pairs=low))["a"]["verdict"] == C.FAILS
    # cells that disagree far more than the effect: cannot tell
    assert by_id(inputs(pairs=pair_rows("ner", 5, noisy(2, cross=0.205, sd=0.2))))["a"]["verdict"] == C.UNSURE
    # another level that fails shows in the profile, not in the verdict: the primary unit (50%) decides
    rows, details = C.claims(inputs(pairs=high + pair_rows("ner", 9, noisy(3, cross=0.01))))
    assert {r["claim"]: r for r in rows}["a"]["verdict"] == C.HOLDS
    a = [u for u in details if u["claim"] == "a"]
    assert [(u["task"], u["level"], u["primary"], u["verdict"]) for u in a] == [
        ("all", -1, True, C.HOLDS), ("ner", 5, False, C.HOLDS), ("ner", 9, False, C.FAILS)]
    # two languages and one seed: one pair, nothing to leave out
    single = pair_rows("ner", 5, noisy(4, cross=0.8), langs=("en", "fr"), seeds=(0,))
    row = by_id(inputs(pairs=single))["a"]
    assert row["verdict"] == C.UNSURE and "no standard error" in row["effect_text"]


def test_one_seed_compares_languages_of_that_seed_and_says_so():
    row = by_id(inputs(pairs=pair_rows("ner", 5, noisy(5, cross=0.8), seeds=(0,))))["a"]
    assert row["verdict"] == C.HOLDS
    assert "one seed: pairs of languages of that seed" in row["note"] and "the seed's rather than" in row["note"]
    assert "SE over 4 cells" in row["effect_text"]


def test_b_same_language_against_other_languages_of_other_seeds():
    assert by_id(inputs(pairs=pair_rows("ner", 5, noisy(6, cross=0.8, same=0.15))))["b"]["verdict"] == C.HOLDS
    assert by_id(inputs(pairs=pair_rows("ner", 5, noisy(7, cross=0.8, same=-0.2))))["b"]["verdict"] == C.FAILS
    row = by_id(inputs(pairs=pair_rows("ner", 5, noisy(8, cross=0.8), seeds=(0,))))["b"]  # one seed
    assert row["verdict"] == C.UNSURE and "two seeds" in row["note"]
    # like for like: pairs of the same seed overlap more (a within-seed confound), which must not count for
    # the same language; the note reports the confound
    def confounded(kind, a, b):
        return 0.8 + (0.1 if kind == "cross_language_same_seed" else 0.0), 0.2, 0.0
    row = by_id(inputs(pairs=pair_rows("ner", 5, confounded)))["b"]
    assert row["effect"] == pytest.approx(0.0, abs=1e-12) and row["verdict"] == C.UNSURE
    assert "within-seed confound" in row["note"] and "+0.100" in row["note"]


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
    row = by_id(inputs(transfer_scores={5: scores}, transfer_matrix={5: matrix}))["d"]
    assert row["verdict"] == C.FAILS
    assert row["note"].startswith("verdict: fewer than half the transfers")  # the note names the rule that decided


def test_e_overlap_beyond_theta0():
    at_half = pair_rows("ner", 5, noisy(10, cross=0.8, excess=0.03))
    rows, details = C.claims(inputs(pairs=pair_rows("ner", 2, noisy(9, cross=0.9, excess=-0.03)) + at_half))
    e = {r["claim"]: r for r in rows}["e"]
    cross = [float(r["excess_jaccard"]) for r in at_half if r["kind"] == "cross_language_cross_seed"]
    assert e["verdict"] == C.HOLDS and e["effect"] == pytest.approx(statistics.fmean(cross))  # at 50%, the primary
    assert f"ratio to θ0's expectation {1 + statistics.fmean(cross):.3f}" in e["testbed"]
    levels = [u for u in details if u["claim"] == "e" and not u["primary"]]
    assert [(u["sparsity"], u["verdict"]) for u in levels] == [(0.2, C.FAILS), (0.5, C.HOLDS)]
    flipped = pair_rows("ner", 5, noisy(11, cross=0.8, excess=-0.03))
    assert by_id(inputs(pairs=flipped))["e"]["verdict"] == C.FAILS
    assert by_id(inputs(pairs=pair_rows("ner", 5, noisy(12, cross=0.8, excess=0.0))))["e"]["verdict"] == C.UNSURE


def similarity_rows(dense: list[float], random: list[float]) -> list[dict]:
    pairs = list(combinations(["en", "fr", "de"], 2))
    return [{"encoder": enc, "layer": str(layer), "language_a": a, "language_b": b, "cka": str(v + 0.2),
             "cka_debiased": str(v), "retrieval": "0.5"} for enc, vs in (("dense", dense), ("random", random))
            for layer in (0, 2) for (a, b), v in zip(pairs, vs)]


def test_f_representations_align_above_random():
    row = by_id(inputs(similarity=similarity_rows([0.8, 0.85, 0.9], [0.0, 0.01, -0.01])))["f"]
    assert row["verdict"] == C.HOLDS and "debiased CKA 0.850 at layer 2 (biased 1.050)" in row["testbed"]
    assert by_id(inputs(similarity=similarity_rows([0.0, 0.05, 0.1], [0.8, 0.85, 0.9])))["f"]["verdict"] == C.FAILS
    same = similarity_rows([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert by_id(inputs(similarity=same))["f"]["verdict"] == C.UNSURE
    # three languages: the jackknife over languages has 2 degrees of freedom; a spread-out effect cannot tell
    assert by_id(inputs(similarity=similarity_rows([0.2, 0.9, 0.3], [0.1, 0.0, 0.4])))["f"]["verdict"] == C.UNSURE
    old = [{k: v for k, v in r.items() if k != "cka_debiased"} for r in same]  # written before the debiased CKA
    assert by_id(inputs(similarity=old))["f"]["command"] == "lnsub similarity --name demo"


def test_an_analysis_that_has_not_run_names_its_command():
    rows = by_id(inputs())
    assert {r["verdict"] for r in rows.values()} == {C.UNSURE}
    assert rows["a"]["command"] == "lnsub analyze --name demo"
    assert rows["d"]["command"] == "lnsub transfer --name demo --level 9"
    assert rows["f"]["command"] == "lnsub similarity --name demo"


# --- the control --------------------------------------------------------------------------------

def full_inputs(j: float, same: float, excess: float, dense: float, cross: float, rnd: float,
                seed: int) -> C.ClaimInputs:
    scores, matrix = transfer_rows("ner", own=0.80, cross=cross, random=rnd, oneshot=rnd)
    return inputs(pairs=pair_rows("ner", 5, noisy(seed, cross=j, same=same, excess=excess)),
                  tickets=ticket_rows([0.5, 0.5, 0.4]), transfer_scores={5: scores}, transfer_matrix={5: matrix},
                  similarity=similarity_rows([dense, dense + 0.02, dense - 0.02], [0.0, 0.02, -0.02]))


def test_control_side_by_side():
    model = C.claims(full_inputs(j=0.80, same=0.15, excess=0.05, dense=0.80, cross=0.79, rnd=0.50, seed=20))[0]
    control = C.claims(full_inputs(j=0.40, same=0.0, excess=0.0, dense=0.05, cross=0.55, rnd=0.50, seed=21))[0]
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


def plain_jackknife(strata: list[list[tuple[float, float, tuple]]]) -> tuple[float, float | None, float | None]:
    """The documented rule by loops: strata of (weight, value, cells) observations; a stratum's statistic is
    the sum over weights of weight x the mean of that weight's values; leave out each cell of a stratum in
    turn; (mean over strata, stratified jackknife SE, Welch-Satterthwaite df)."""
    def stat(obs, drop=None):
        out = 0.0
        for w in {w for w, _, _ in obs}:
            values = [v for w2, v, cells in obs if w2 == w and drop not in cells]
            if not values:
                return None
            out += w * sum(values) / len(values)
        return out

    h, var, parts = len(strata), 0.0, []
    for obs in strata:
        cells = sorted({c for _, _, cs in obs for c in cs})
        reps = [stat(obs, c) for c in cells]
        if len(cells) < 2 or None in reps:
            return statistics.fmean(stat(o) for o in strata), None, None
        mean = sum(reps) / len(reps)
        v = (len(cells) - 1) / len(cells) * sum((r - mean) ** 2 for r in reps) / h ** 2
        var += v
        parts.append((v, len(cells) - 1))
    df = var ** 2 / sum(v ** 2 / d for v, d in parts) if var > 0 else min(d for _, d in parts)
    return statistics.fmean(stat(o) for o in strata), math.sqrt(var), df


def rule(margin: float, se: float | None, df: float | None) -> str:
    from scipy import stats

    if se is None:
        return "cannot tell"
    t = margin / se if se > 0 else (0.0 if margin == 0 else math.copysign(math.inf, margin))
    if se == 0 and margin == 0:
        return "cannot tell"
    return "holds" if stats.t.sf(t, df) <= 0.04 else "does not hold" if stats.t.cdf(t, df) <= 0.005 else "cannot tell"


def recompute_overlap(folder: Path) -> dict[str, tuple]:
    """(a) and (e) at each task's level nearest 50%, pooled: cross-language pairs (the smoke grid has one seed: pairs
    of the same seed), the cells being the languages."""
    rows = read(folder / "pair_overlap.csv")
    levels = {}
    for r in rows:
        levels.setdefault(r["task"], {})[int(r["level"])] = float(r["sparsity"])
    primary = {t: min(lv, key=lambda k: (abs(lv[k] - 0.5), -lv[k])) for t, lv in levels.items()}
    out = {}
    for claim, value in (("a", lambda r: float(r["jaccard"]) - float(r["random_matched"])),
                         ("e", lambda r: float(r["excess_jaccard"]))):
        strata = [[(1.0, value(r), (r["language_a"], r["language_b"])) for r in rows
                   if r["task"] == t and int(r["level"]) == k and r["kind"] == "cross_language_same_seed"]
                  for t, k in sorted(primary.items())]
        out[claim] = plain_jackknife(strata)
    return out


def recompute_transfer(folder: Path, level: int) -> tuple[list[tuple], list[float]]:
    """(d): per comparison (random, one-shot), the pooled effect; and each task's share of successes."""
    scores = read(folder / f"transfer_scores_level{level}.csv")
    matrix = read(folder / f"transfer_matrix_level{level}.csv")
    effects, shares = [], []
    for kind in ("random", "oneshot"):
        strata = []
        for task in sorted({r["task"] for r in scores}):
            rows = [r for r in scores if r["task"] == task]
            greater = next(r["greater_is_better"] for r in matrix if r["task"] == task) == "True"
            own = {(r["seed"], r["target"]): float(r["score"]) for r in rows if r["source"] == r["target"]}
            langs = {t for _, t in own}
            obs = []
            for r in rows:
                if r["source"] == r["target"] or r["source_kind"] not in (kind, "ticket") or \
                        (r["source_kind"] == "ticket" and r["source"] not in langs):
                    continue
                c = (float(r["score"]) - own[(r["seed"], r["target"])]) / own[(r["seed"], r["target"])]
                cost = -c if greater else c
                cells = ((r["target"], r["seed"]),) + (((r["source"], r["seed"]),) if r["source_kind"] == "ticket" else ())
                obs.append((1.0 if r["source_kind"] == kind else -1.0, cost, cells))
            strata.append(obs)
        effects.append(plain_jackknife(strata))
    for task in sorted({r["task"] for r in matrix}):
        langs = {r["target"] for r in matrix if r["task"] == task}
        cross = [r for r in matrix if r["task"] == task and r["source"] in langs and r["source"] != r["target"]]
        shares.append(sum(r["success"] == "True" for r in cross) / len(cross))
    return effects, shares


@pytest.mark.slow
def test_the_smoke_sweeps_claims_table(analysed, tmp_path):
    assert analysed["report"].returncode == 0, analysed["report"].stdout[-2000:]
    analysis = analysed["storage"] / "sweeps" / "smoke" / "analysis"
    table = {r["claim"]: r for r in read(analysis / "report" / "claims.csv")}
    assert list(table) == list("abcdef")
    primary = {u["claim"]: u for u in read(analysis / "report" / "claim_details.csv") if u["primary"] == "True"}

    def check(claim: str, expected: tuple) -> None:
        margin, se, df = expected
        assert float(table[claim]["effect"]) == pytest.approx(margin, abs=1e-9)
        assert (None if table[claim]["effect_se"] == "" else float(table[claim]["effect_se"])) == \
            pytest.approx(se, abs=1e-9)
        assert float(primary[claim]["margin"]) == pytest.approx(margin, abs=1e-9)
        assert table[claim]["verdict"] == rule(margin, se, df)

    overlap = recompute_overlap(analysis / "overlap")
    check("a", overlap["a"])
    check("e", overlap["e"])
    seeds = {r["seed"] for r in read(analysis / "overlap" / "overlap.csv")}
    assert len(seeds) == 1 and table["b"]["verdict"] == "cannot tell"  # one seed: no same-language pair
    tickets = [float(r["ticket_sparsity"]) for r in read(analysis / "overlap" / "winning_tickets.csv")]
    median, step, end = statistics.median(tickets), 0.1, 0.3  # the smoke grid: 10% steps, up to 30%
    near = abs(median - 0.5) <= step + 1e-9
    assert table["c"]["verdict"] == ("holds" if near and end >= 0.5 + step - 1e-9 else
                                     "does not hold" if not near and median < end - 1e-9 else "cannot tell")
    assert f"median {median:.0%}" in table["c"]["testbed"]
    effects, shares = recompute_transfer(analysis / "transfer", 3)
    details = [u for u in read(analysis / "report" / "claim_details.csv") if u["claim"] == "d" and u["primary"] == "True"]
    assert [float(u["margin"]) for u in details] == pytest.approx([m for m, _, _ in effects], abs=1e-9)
    verdicts = [rule(*e) for e in effects]
    expected_d = ("does not hold" if min(shares) < 0.5 else "holds" if set(verdicts) == {"holds"} else
                  "does not hold" if "does not hold" in verdicts else "cannot tell")
    assert table["d"]["verdict"] == expected_d
    sim = read(analysis / "similarity" / "similarity.csv")
    top = max(int(r["layer"]) for r in sim)
    cka = {enc: {(r["language_a"], r["language_b"]): float(r["cka_debiased"]) for r in sim
                 if r["encoder"] == enc and int(r["layer"]) == top} for enc in ("dense", "random")}
    f = plain_jackknife([[(1.0, cka["dense"][p] - cka["random"][p], p) for p in sorted(cka["dense"])]])
    check("f", f)
    assert f"debiased CKA {statistics.fmean(cka['dense'].values()):.3f}" in table["f"]["testbed"]
    page = (analysis / "report" / "report.html").read_text(encoding="utf-8")
    assert '<section id="claims"><h2>The paper&#x27;s claims</h2>' in page
    for r in table.values():
        assert re.search(rf"<td>{r['claim']}</td>.*?<td>{r['verdict']}</td>", page)
    assert "Overlap beyond θ0" in page


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
    page = result.report.read_text(encoding="utf-8")
    assert f"No claim is measurably weaker on the control: {C.CANNOT_SEPARATE}." in page
