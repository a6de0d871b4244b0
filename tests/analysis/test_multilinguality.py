"""Sentence retrieval P@1 per layer against a brute-force loop; grouping by word order."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lnsub.analysis.multilinguality import nearest_neighbour_p1, retrieval_by_layer, summarise


def brute_p1(x, y) -> float:
    """Plain Python: for each row of x, the row of y with the largest cosine (first wins ties)."""
    def cos(u, v):
        nu, nv = math.sqrt(sum(a * a for a in u)), math.sqrt(sum(b * b for b in v))
        return sum(a * b for a, b in zip(u, v)) / (nu * nv)

    hits = 0
    for i, u in enumerate(x):
        scores = [cos(u, v) for v in y]
        hits += scores.index(max(scores)) == i
    return hits / len(x)


def noisy_reps(rng, languages, layers=3, n=20, dim=8):
    base = rng.normal(size=(layers, n, dim))
    # Noise grows with the layer index, so layers differ in P@1; each language its own offset.
    return {lang: base + rng.normal(size=(layers, n, dim)) * np.arange(1, layers + 1)[:, None, None] * 0.6
            + rng.normal(size=(1, 1, dim)) for lang in languages}


def test_p1_matches_brute_force_on_random_data():
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = rng.normal(size=(15, 6))
        y = x + rng.normal(size=(15, 6)) * rng.uniform(0.3, 2.0)
        assert nearest_neighbour_p1(x, y) == pytest.approx(brute_p1(x.tolist(), y.tolist()))


def test_identical_and_shuffled():
    x = np.random.default_rng(1).normal(size=(10, 4))
    assert nearest_neighbour_p1(x, x) == 1.0
    assert nearest_neighbour_p1(x, x[::-1]) == 0.0


def test_per_layer_pairs_and_order_groups_match_a_loop():
    rng = np.random.default_rng(2)
    orders = {"a": "SVO", "b": "SVO", "c": "SOV", "d": "VSO"}
    reps = noisy_reps(rng, list(orders))
    by_pair = retrieval_by_layer(reps)
    assert len(by_pair) == 4 * 3  # ordered pairs
    rows = summarise(by_pair, orders.get, n=20)
    for layer, row in enumerate(rows):
        same, diff = [], []
        for a in orders:
            for b in orders:
                if a == b:
                    continue
                p = brute_p1(reps[a][layer].tolist(), reps[b][layer].tolist())
                assert by_pair[(a, b)][layer] == pytest.approx(p)
                (same if orders[a] == orders[b] else diff).append(p)
        assert row["same_order"] == pytest.approx(sum(same) / len(same)) and row["same_order_pairs"] == 2
        assert row["different_order"] == pytest.approx(sum(diff) / len(diff)) and row["different_order_pairs"] == 10
        assert row["all"] == pytest.approx(sum(same + diff) / 12) and row["all_pairs"] == 12
        assert row["chance"] == pytest.approx(1 / 20)


def test_refuses_unaligned_inputs():
    with pytest.raises(ValueError):
        nearest_neighbour_p1(np.zeros((3, 2)), np.zeros((4, 2)))


def test_centring_subtracts_each_language_mean():
    rng = np.random.default_rng(3)
    reps = noisy_reps(rng, ["a", "b"])
    shifted = {"a": reps["a"] + 50.0, "b": reps["b"] - 50.0}  # a huge language offset hides the content
    centred = retrieval_by_layer(shifted, center=True)
    for (a, b), values in centred.items():
        for layer, v in enumerate(values):
            x = (shifted[a][layer] - shifted[a][layer].mean(0)).tolist()
            y = (shifted[b][layer] - shifted[b][layer].mean(0)).tolist()
            assert v == pytest.approx(brute_p1(x, y))
