"""The dose–response statistics on planted ladders: a statistic that follows the dose, one that falls, one that
ignores it; rho checked against a brute-force rank correlation, the model statistic against its closed form."""

from __future__ import annotations

import numpy as np
import pytest

from lnsub.analysis.dose_response import Observations, dose_response, spearman

DOSES = [0.02, 0.2, 0.4, 0.6, 0.9]


def brute_spearman(x, y) -> float:
    """Pearson correlation of the ranks (no ties here)."""
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def ladder(slope: float, noise: float, n: int = 40, seed: int = 1) -> list[Observations]:
    rng = np.random.default_rng(seed)
    return [Observations.of((1.0, slope * d + noise * rng.standard_normal(n))) for d in DOSES]


def test_a_statistic_planted_to_rise_with_the_dose_has_rho_near_one():
    r = dose_response("planted", DOSES, ladder(slope=1.0, noise=0.05))
    assert r.rho == pytest.approx(1.0)
    assert r.low >= 0.8 and r.high == pytest.approx(1.0) and r.reading == "rises" and r.rises


def test_a_falling_statistic_and_one_with_no_effect():
    falling = dose_response("falling", DOSES, ladder(slope=-1.0, noise=0.05))
    assert falling.rho == pytest.approx(-1.0) and falling.high <= -0.8 and falling.reading == "falls"
    flat = dose_response("flat", DOSES, ladder(slope=0.0, noise=0.2))
    assert flat.low < 0 < flat.high and flat.reading == "no clear trend" and not flat.rises


def test_rho_matches_a_brute_force_rank_correlation():
    rng = np.random.default_rng(3)
    for _ in range(20):
        x, y = rng.random(6), rng.random(6)
        assert spearman(x, y) == pytest.approx(brute_spearman(x, y), abs=1e-12)
    assert np.isnan(spearman([1, 2, 3], [5, 5, 5]))  # a constant statistic has no rank correlation


def test_a_model_statistic_is_the_signed_sum_of_its_groups_means():
    obs = Observations.of((1.0, [0.1, 0.3]), (-1.0, [0.5, 0.7, 0.9]))
    assert obs.value() == pytest.approx(0.2 - 0.7)
    assert np.isnan(Observations.of((1.0, [])).value())
    # a resample draws from each group on its own: one-valued groups give the value itself
    assert Observations.of((1.0, [2.0]), (-1.0, [0.5])).resampled(np.random.default_rng(0)) == pytest.approx(1.5)


def test_the_interval_widens_with_the_noise_of_each_models_statistic():
    tight = dose_response("tight", DOSES, ladder(slope=0.2, noise=0.05))
    loose = dose_response("loose", DOSES, ladder(slope=0.2, noise=1.0))
    assert loose.high - loose.low > tight.high - tight.low
