"""Dose–response: does a statistic of the claims rise with how multilingual the model is?

A ladder of models, each with a dose (its sentence-retrieval P@1) and, per statistic, its observations:
the statistic of one model is Σ_k sign_k · mean(group_k) over groups of observations (one group for an
excess Jaccard over pairs; two for a transfer cost, the random mask's minus the languages' tickets').
The answer is Spearman's rank correlation between the doses and the statistics, with a percentile
bootstrap interval that resamples each model's observations within each group (the ladder, and so the
doses, held fixed): it says how far the ranking could move given how noisy each model's statistic is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.stats import spearmanr


@dataclass(frozen=True)
class Observations:
    """One model's statistic: Σ_k sign_k · mean(values_k), each group resampled on its own."""

    groups: tuple[tuple[float, np.ndarray], ...]

    @classmethod
    def of(cls, *groups: tuple[float, Sequence[float]]) -> "Observations":
        return cls(tuple((float(sign), np.asarray(values, dtype=float)) for sign, values in groups))

    @property
    def empty(self) -> bool:
        return not self.groups or any(v.size == 0 for _, v in self.groups)

    def value(self) -> float:
        return float("nan") if self.empty else float(sum(sign * v.mean() for sign, v in self.groups))

    def resampled(self, rng: np.random.Generator) -> float:
        if self.empty:
            return float("nan")
        return float(sum(sign * rng.choice(v, size=v.size, replace=True).mean() for sign, v in self.groups))


@dataclass(frozen=True)
class DoseResponse:
    statistic: str
    doses: list[float]
    values: list[float]
    rho: float  # Spearman's rank correlation of the statistic with the dose
    low: float  # the bootstrap interval of rho
    high: float
    replicates: int  # bootstrap replicates with a defined rho (a replicate whose statistics tie everywhere has none)

    @property
    def rises(self) -> bool:
        """The interval lies above zero: the statistic rises with the dose."""
        return self.low > 0

    @property
    def reading(self) -> str:
        return "rises" if self.low > 0 else "falls" if self.high < 0 else "no clear trend"


def spearman(doses: Sequence[float], values: Sequence[float]) -> float:
    """Spearman's rho, nan when either side is constant or a value is missing."""
    x, y = np.asarray(doses, dtype=float), np.asarray(values, dtype=float)
    if np.isnan(y).any() or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def dose_response(statistic: str, doses: Sequence[float], models: Sequence[Observations], replicates: int = 2000,
                  confidence: float = 0.95, seed: int = 0) -> DoseResponse:
    """Spearman's rho of the models' statistics against their doses, with its percentile bootstrap interval."""
    if len(doses) != len(models):
        raise ValueError(f"{len(doses)} doses for {len(models)} models")
    values = [m.value() for m in models]
    rng = np.random.default_rng(seed)
    draws = np.array([spearman(doses, [m.resampled(rng) for m in models]) for _ in range(replicates)])
    draws = draws[~np.isnan(draws)]
    tail = (1 - confidence) / 2
    low, high = (np.quantile(draws, [tail, 1 - tail]) if draws.size else (float("nan"), float("nan")))
    return DoseResponse(statistic, [float(d) for d in doses], values, spearman(doses, values), float(low),
                        float(high), int(draws.size))
