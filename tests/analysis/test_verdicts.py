"""The verdict rule (analysis/verdicts.py): the jackknife against a loop that recomputes every statistic from
scratch, Holm against a worked example and its family-wise rate, and the rule's calibration by simulation on
the grids' actual designs, through the same builders the claims use (analysis/claims.py)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from lnsub.analysis import claims as C
from lnsub.analysis import verdicts as V
from lnsub.analysis.pairs import CROSS_CROSS, CROSS_SAME, SAME_CROSS

# --- the machinery against independent references -------------------------------------------------


def test_jackknife_equals_recomputing_every_statistic_without_each_unit():
    rng = np.random.default_rng(0)
    strata = []
    raw = []
    for task in range(3):
        units = [(task, u) for u in range(4 + task)]
        obs = [(rng.normal(), tuple(units[i] for i in sorted(rng.choice(len(units), 2, replace=False))))
               for _ in range(12)]
        other = [(rng.normal() + 1, (units[rng.integers(len(units))],)) for _ in range(9)]
        raw.append((units, obs, other))
        strata.append([V.term(1.0, [v for v, _ in obs], [k for _, k in obs], units),
                       V.term(-0.5, [v for v, _ in other], [k for _, k in other], units)])
    got = V.jackknife(strata)

    def value(obs, other, drop=None):
        a = [v for v, keys in obs if drop not in keys]
        b = [v for v, keys in other if drop not in keys]
        return np.mean(a) - 0.5 * np.mean(b)

    full = [value(obs, other) for _, obs, other in raw]
    var, parts = 0.0, []
    for units, obs, other in raw:
        reps = np.array([value(obs, other, drop=u) for u in units])
        n = len(units)
        v = (n - 1) / n * np.sum((reps - reps.mean()) ** 2) / len(raw) ** 2
        var += v
        parts.append((v, n - 1))
    assert got.value == pytest.approx(np.mean(full), rel=1e-12)
    assert got.se == pytest.approx(math.sqrt(var), rel=1e-12)
    assert got.df == pytest.approx(var ** 2 / sum(v ** 2 / d for v, d in parts), rel=1e-12)
    assert got.units == 4 + 5 + 6
    # the jackknife of a plain mean is the textbook standard error s / sqrt(n)
    x = rng.normal(size=10)
    mean = V.jackknife([[V.term(1.0, x, [(i,) for i in range(10)], list(range(10)))]])
    assert mean.se == pytest.approx(x.std(ddof=1) / math.sqrt(10), rel=1e-12) and mean.df == pytest.approx(9)


def test_a_unit_whose_removal_empties_a_term_leaves_no_standard_error():
    # two languages, one pair: leaving either out leaves no pair to average
    est = V.jackknife([[V.term(1.0, [0.5], [("en", "fr")], ["en", "fr"])]])
    assert est.value == 0.5 and est.se is None and V.verdict(est) == V.UNSURE
    assert V.jackknife([[]]) is None and V.jackknife([]) is None


def test_one_sided_t_verdicts_at_their_levels():
    df = 12.0
    at = stats.t.isf(V.ALPHA_HOLDS, df)  # the t at which P(T >= t) is exactly ALPHA_HOLDS
    assert V.verdict(V.Estimate(at * 1.001, 1.0, df, 13)) == V.HOLDS
    assert V.verdict(V.Estimate(at * 0.999, 1.0, df, 13)) == V.UNSURE
    fails = stats.t.ppf(V.ALPHA_FAILS, df)
    assert V.verdict(V.Estimate(fails * 1.001, 1.0, df, 13)) == V.FAILS
    assert V.verdict(V.Estimate(fails * 0.999, 1.0, df, 13)) == V.UNSURE
    assert V.verdict(V.Estimate(0.0, 0.0, df, 13)) == V.UNSURE  # no effect, no spread
    assert V.verdict(V.Estimate(1e-3, 0.0, df, 13)) == V.HOLDS
    assert V.verdict(V.Estimate(5.0, None, None, 1)) == V.UNSURE and V.verdict(None) == V.UNSURE
    assert V.ALPHA_HOLDS + V.ALPHA_FAILS <= 0.05


def test_holm_on_a_worked_example_and_its_family_wise_rate():
    # p = .01, .04, .03, .005 at .05: .005 <= .05/4, .01 <= .05/3, .03 > .05/2: stop
    assert V.holm([0.01, 0.04, 0.03, 0.005], 0.05) == [True, False, False, True]
    assert V.holm([0.001, None, 0.2], 0.05) == [True, False, False]
    rng = np.random.default_rng(1)
    any_rejected = np.mean([any(V.holm(list(rng.uniform(size=8)), 0.04)) for _ in range(20000)])
    assert any_rejected <= 0.04 + 3 * math.sqrt(0.04 * 0.96 / 20000)
    # profile verdicts: each direction with its own level
    ests = [V.Estimate(4.0, 1.0, 50, 51), V.Estimate(-4.0, 1.0, 50, 51), V.Estimate(1.0, 1.0, 50, 51)]
    assert V.profile_verdicts(ests) == [V.HOLDS, V.FAILS, V.UNSURE]


def test_difference_of_two_independent_estimates():
    a, b = V.Estimate(1.0, 0.3, 10, 11), V.Estimate(0.4, 0.4, 20, 21)
    d = V.difference(a, b)
    assert d.value == pytest.approx(0.6) and d.se == pytest.approx(0.5)
    assert d.df == pytest.approx(0.25 ** 2 / (0.3 ** 4 / 10 + 0.4 ** 4 / 20))
    assert V.difference(a, None) is None and V.difference(a, V.Estimate(1.0, None, None, 1)).se is None


# --- calibration on the actual designs --------------------------------------------------------------

DESIGNS = {  # task -> its languages, and the seeds
    "science": ({"mlm": 3, "ner": 3, "xnli": 3}, 3),  # 3 twins x 3 seeds
    "paper": ({"mlm": 11, "ner": 9, "xnli": 10}, 3),  # 11 languages (ner without hi, sw; xnli without fa)
    "smoke, one seed": ({"mlm": 3, "ner": 3, "xnli": 3}, 1),
    "paper, one seed": ({"mlm": 11, "ner": 9, "xnli": 10}, 1),
}


def design_rows(tasks: dict[str, int], seeds: int) -> list[dict]:
    """pair_overlap.csv's rows (values to fill) for every pair of cells of each task at its primary level."""
    rows = []
    for task, n in tasks.items():
        cells = [(f"l{i:02d}", s) for i in range(n) for s in range(seeds)]
        for (la, sa), (lb, sb) in itertools.combinations(cells, 2):
            kind = (CROSS_CROSS if sa != sb else CROSS_SAME) if la != lb else SAME_CROSS
            rows.append({"task": task, "level": "3", "sparsity": "0.5", "kind": kind, "language_a": la,
                         "seed_a": str(sa), "language_b": lb, "seed_b": str(sb)})
    return rows


def fill(rows: list[dict], rng, cell_sd: float = 1.0, pair_sd: float = 0.3, rho: float = 0.5) -> None:
    """Pair values from the cells: each cell has its own effect on pairs of other languages (u) and on pairs
    of its own language (v, correlated rho with u), plus a small effect of the pair itself. No true effect:
    both claims' expected effects are 0."""
    cells = sorted({(r["task"], r[f"language_{x}"], r[f"seed_{x}"]) for r in rows for x in "ab"})  # a fixed order
    u = {c: rng.normal(0, cell_sd) for c in cells}
    v = {c: rho * u[c] + math.sqrt(1 - rho ** 2) * rng.normal(0, cell_sd) for c in cells}
    for r in rows:
        a, b = (r["task"], r["language_a"], r["seed_a"]), (r["task"], r["language_b"], r["seed_b"])
        own = v if r["kind"] == SAME_CROSS else u
        r["jaccard"] = r["excess_jaccard"] = own[a] + own[b] + rng.normal(0, pair_sd)


def estimates(rows: list[dict], claim: str) -> V.Estimate:
    """The primary unit's estimate, built as claims.py builds it: (e) pairs of other languages (other seeds, or
    with one seed the same seed), (b) 2x2 blocks of same-language against cross-language cross-seed pairs."""
    kind, _ = C.cross_kind(rows)
    by_task = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    if claim == "e":
        return V.jackknife([C.pair_term(t, kind, lambda r: float(r["excess_jaccard"])) for t in by_task.values()])
    return V.jackknife([C.block_term(t, SAME_CROSS) for t in by_task.values()])


def calibration(name: str, claim: str, replicates: int, **noise) -> tuple[float, float]:
    """(false-definite rate without an effect, rate of "holds" with an effect of 3 standard errors), where the
    standard error is the estimate's own spread over replicates (the truth the rule's SE estimates)."""
    tasks, seeds = DESIGNS[name]
    rows, rng = design_rows(tasks, seeds), np.random.default_rng(len(name) + ord(claim))
    ests = []
    for _ in range(replicates):
        fill(rows, rng, **noise)
        ests.append(estimates(rows, claim))
    sd = float(np.std([e.value for e in ests]))
    definite = np.mean([V.verdict(e) != V.UNSURE for e in ests])
    # an effect shifts every observation, so the estimate by exactly the effect and its SE not at all (checked below)
    power = np.mean([V.verdict(V.Estimate(e.value + 3 * sd, e.se, e.df, e.units)) == V.HOLDS for e in ests])
    return float(definite), float(power)


def test_an_effect_shifts_the_estimate_and_leaves_its_standard_error():
    rows = design_rows(*DESIGNS["science"])
    fill(rows, np.random.default_rng(0))
    before = {c: estimates(rows, c) for c in "eb"}
    for r in rows:
        r["excess_jaccard"] += 0.25
        if r["kind"] == SAME_CROSS:
            r["jaccard"] += 0.25
    for c in "eb":
        after = estimates(rows, c)
        assert after.value == pytest.approx(before[c].value + 0.25) and after.se == pytest.approx(before[c].se)


# Measured with 3,000 replicates (ALPHA_HOLDS 4%, ALPHA_FAILS 0.5%): false definite / holds at 3 SE
#   (e) science 0.032 / 0.81; paper 0.047 / 0.89; paper, one seed 0.042 / 0.87; smoke, one seed 0.026 / 0.72
#   (b) science 0.024 / 0.78; paper 0.016 / 0.80   (docs/method.md has the table); 600 here, for time
@pytest.mark.parametrize("name, claim", [("science", "e"), ("paper", "e"), ("paper, one seed", "e"),
                                         ("smoke, one seed", "e"), ("science", "b"), ("paper", "b")])
def test_the_rule_is_calibrated_on_the_grids_designs(name, claim):
    definite, power = calibration(name, claim, replicates=600)
    assert definite <= 0.05
    if claim == "e" and name != "smoke, one seed":
        assert power >= 0.80
    else:
        # Below 80%, for reasons of the design, not of the rule: the smoke grid's 3 twins at one seed give a
        # t test 4 degrees of freedom (any t test then reaches 0.74 at 3 SE); the 2x2 blocks' jackknife SE is
        # about 20% above the truth (a conservative estimate: calibrated, less powerful).
        assert power >= 0.70


def test_a_pair_level_noise_makes_the_rule_cautious_not_wrong():
    # When the noise belongs to pairs rather than cells, deleting a cell overstates the SE: fewer definite
    # verdicts, never more.
    definite, power = calibration("science", "e", replicates=300, cell_sd=0.3, pair_sd=1.0)
    assert definite <= 0.05 and power >= 0.5
