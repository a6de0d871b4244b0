"""Verdicts that mean what they say: an effect, its standard error over the independent units, and a t test.

The independent units are the cells: one language trained with one seed (on one task). A statistic is
a mean over observations (pairs of cells, 2×2 blocks of cells, transfer jobs), each of which involves
one or more cells; its standard error is the delete-one-cell jackknife (Efron 1982; for statistics
over pairs of units, the jackknife of a U-statistic, Arvesen 1969): every cell is left out in turn,
with every observation it takes part in, and the spread of the results is the standard error.
Leaving units out rather than drawing them with replacement keeps each kind of pair in the design,
which a bootstrap does not (a language drawn twice has no cross-language pair with itself): in the
calibration simulations a bootstrap over languages and seeds jointly put the standard error of a
difference between kinds of pairs at 2 to 3.6 times its true value, and of a mean at 0.4 to 2 times
(so false verdicts up to 43% of the time). The jackknife's is right where the variation belongs to the
cells (0.95 to 1.05 of the truth for means), and errs on the safe side for the 2×2 blocks (about 1.2)
and for variation that belongs to pairs rather than cells (1.2 to 1.9): fewer definite verdicts.

Assumed: cells of different seeds are independent. Languages are the study's fixed factor (the claims
are about these languages, as the paper's are), seeds the replicates; an effect that a seed shares
across all its cells would make the standard error too small (with 3 seeds no rule could measure it:
a t test on 3 seeds has 2 degrees of freedom). That is why the primary comparisons pair cells of
different seeds; the within-seed confound is reported beside claim (b).

A statistic pooled over tasks is the mean of the tasks' statistics; each task's cells are its own
(stratified jackknife), and the degrees of freedom of the t distribution follow Welch–Satterthwaite
from each task's (cells − 1). With one seed, the cells are the languages, and the standard error
is over languages (the seed is then fixed: what another seed would do is not measured).

Verdict of an effect m oriented so that m > 0 supports the claim, with t = m / SE on df degrees of
freedom: holds when P(T ≥ t) ≤ ALPHA_HOLDS (one-sided, the claim's direction); does not hold when
P(T ≤ t) ≤ ALPHA_FAILS (significantly the opposite way); cannot tell otherwise, or without a
standard error. The split is pre-registered: "holds" is the paper's directional hypothesis; "does not
hold" claims the opposite and is held to the stricter level. Nominally a definite verdict without an
effect comes out 4.5% of the time; the t distribution only approximates a jackknife standard error over
a few cells, and the simulations measured up to half a point more, so the half-point margin keeps it
within 5%. tests/analysis/test_verdicts.py checks both rates by simulation on the grids' actual designs
(docs/method.md has the table); an effect of 3 standard errors reads "holds" at least 80% of the time
where the design has the degrees of freedom for it (the paper's grid; the science grid's overlap).

Profiles (every task and level beside the pre-registered one) are a family of tests: Holm's
step-down procedure keeps the chance of any false "holds" in the family at ALPHA_HOLDS, and of any
false "does not hold" at ALPHA_FAILS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA_HOLDS = 0.04  # one-sided, in the claim's direction
ALPHA_FAILS = 0.005  # one-sided, in the opposite direction (see the module docstring)
HOLDS, FAILS, UNSURE = "holds", "does not hold", "cannot tell"


@dataclass(frozen=True)
class Estimate:
    """An effect, its standard error (None: not estimable) and the t distribution's degrees of freedom."""

    value: float
    se: float | None
    df: float | None
    units: int  # independent units (cells) the standard error rests on

    @property
    def t(self) -> float | None:
        if self.se is None or self.df is None:
            return None
        if self.se > 0:
            return self.value / self.se
        return None if self.value == 0 else math.copysign(math.inf, self.value)

    @property
    def p_holds(self) -> float | None:
        """One-sided p-value in the claim's direction, P(T ≥ t)."""
        return None if self.t is None else float(stats.t.sf(self.t, self.df))

    @property
    def p_fails(self) -> float | None:
        """One-sided p-value in the opposite direction, P(T ≤ t)."""
        return None if self.t is None else float(stats.t.cdf(self.t, self.df))

    def text(self, fmt: str = ".3f") -> str:
        if self.se is None:
            return f"{self.value:+{fmt}} (no standard error: {self.units} unit(s))"
        return f"{self.value:+{fmt}} ± {self.se:{fmt}} (SE over {self.units} cells, df {self.df:.0f})"


def verdict(est: Estimate | None) -> str:
    """holds / does not hold / cannot tell, by the one-sided t tests of the module docstring."""
    if est is None or est.t is None:
        return UNSURE
    if est.p_holds <= ALPHA_HOLDS:
        return HOLDS
    if est.p_fails <= ALPHA_FAILS:
        return FAILS
    return UNSURE


def holm(pvalues: list[float | None], alpha: float) -> list[bool]:
    """Holm's step-down: which hypotheses are rejected at family-wise level alpha (None: never)."""
    order = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    rejected = [False] * len(pvalues)
    for rank, (p, i) in enumerate(order):
        if p > alpha / (len(order) - rank):
            break
        rejected[i] = True
    return rejected


def profile_verdicts(estimates: list[Estimate | None]) -> list[str]:
    """Each unit's verdict within a family, Holm-corrected in each direction."""
    holds = holm([None if e is None else e.p_holds for e in estimates], ALPHA_HOLDS)
    fails = holm([None if e is None else e.p_fails for e in estimates], ALPHA_FAILS)
    return [HOLDS if h else FAILS if f else UNSURE for h, f in zip(holds, fails)]


@dataclass(frozen=True)
class Term:
    """weight × the mean of some observations of one stratum; incidence[i, c] = 1 when observation i involves
    the stratum's unit c."""

    weight: float
    values: np.ndarray
    incidence: np.ndarray


def term(weight: float, values, involved: list[tuple], units: list) -> Term:
    """A Term from observation values and, for each, the units (any hashable keys) it involves."""
    where = {u: j for j, u in enumerate(units)}
    incidence = np.zeros((len(values), len(units)))
    for i, keys in enumerate(involved):
        incidence[i, [where[k] for k in keys]] = 1.0
    return Term(weight, np.asarray(values, dtype=np.float64), incidence)


def _stratum(terms: list[Term]) -> tuple[float, np.ndarray]:
    """A stratum's value Σ weight·mean and its delete-one-unit replicates (NaN where a term loses every
    observation)."""
    value, reps = 0.0, 0.0
    for t in terms:
        total, count = t.values.sum(), len(t.values)
        value += t.weight * total / count
        left = count - t.incidence.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            reps = reps + t.weight * np.where(left > 0, (total - t.values @ t.incidence) / np.maximum(left, 1), np.nan)
    return value, np.atleast_1d(reps)


def jackknife(strata: list[list[Term]]) -> Estimate | None:
    """The mean over strata of each stratum's Σ weight·mean(values), with its stratified delete-one-unit
    jackknife standard error and Welch–Satterthwaite degrees of freedom. None when a stratum has no observation."""
    strata = [s for s in strata if s]
    if not strata or any(len(t.values) == 0 for s in strata for t in s):
        return None
    h = len(strata)
    values, parts, units = [], [], 0
    for terms in strata:
        value, reps = _stratum(terms)
        values.append(value)
        n = len(reps)
        units += n
        if n < 2 or np.isnan(reps).any():
            parts.append(None)
            continue
        parts.append(((n - 1) / n * float(((reps - reps.mean()) ** 2).sum()) / h ** 2, n - 1))
    mean = float(np.mean(values))
    if any(p is None for p in parts):
        return Estimate(mean, None, None, units)
    var = sum(v for v, _ in parts)
    df = var ** 2 / sum(v ** 2 / d for v, d in parts) if var > 0 else float(min(d for _, d in parts))
    return Estimate(mean, math.sqrt(var), df, units)


def difference(a: Estimate | None, b: Estimate | None) -> Estimate | None:
    """a − b for two independent estimates (two sweeps): SEs in quadrature, Welch–Satterthwaite df."""
    if a is None or b is None:
        return None
    if a.se is None or b.se is None:
        return Estimate(a.value - b.value, None, None, a.units + b.units)
    var = a.se ** 2 + b.se ** 2
    den = (a.se ** 4 / a.df if a.df else 0.0) + (b.se ** 4 / b.df if b.df else 0.0)
    df = var ** 2 / den if den > 0 else float(min(a.df, b.df))
    return Estimate(a.value - b.value, math.sqrt(var), df, a.units + b.units)
