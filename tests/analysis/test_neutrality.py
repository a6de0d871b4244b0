"""Overlap beyond θ0 (analysis/neutrality.py) against a brute-force loop, a closed-form case and planted truths,
and the matched random baseline (overlap.random_jaccard_matched) against sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lnsub.analysis import neutrality as N
from lnsub.analysis.overlap import pack_bool, random_jaccard, random_jaccard_matched

COMPONENTS = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
              "intermediate.dense", "output.dense"]


def tiny_shapes(layers: int = 6, hidden: int = 64, inner: int = 256) -> dict[str, tuple[int, int]]:
    """The testbed's tiny BERT: per layer four hidden x hidden matrices and two hidden x inner ones."""
    per = [(hidden, hidden)] * 4 + [(inner, hidden), (hidden, inner)]
    return {f"bert.encoder.layer.{layer}.{c}.weight": s for layer in range(layers) for c, s in zip(COMPONENTS, per)}


def top_k(scores: dict[str, np.ndarray], density: float) -> dict[str, np.ndarray]:
    """Global magnitude pruning: keep the round(density * n) largest scores over every matrix together."""
    flat = np.concatenate([v.ravel() for v in scores.values()])
    k = int(round(density * flat.size))
    threshold = np.partition(flat, flat.size - k)[flat.size - k]
    return {n: v >= threshold for n, v in scores.items()}


def planted(shared: float, own: float = 0.5, density: float = 0.2, seed: int = 0, shapes=None):
    """θ0 with matrices of different scales, and two tickets: the global top-k of |θ0 + shared drift + own drift|,
    as IMP makes them; the drifts' scales are relative to each matrix's."""
    rng = np.random.default_rng(seed)
    shapes = shapes or tiny_shapes()
    scale = {n: 0.02 * (1 + 2 * (i % 6)) for i, n in enumerate(shapes)}
    theta0 = {n: rng.normal(0, scale[n], s) for n, s in shapes.items()}
    common = {n: rng.normal(0, shared * scale[n], s) for n, s in shapes.items()}

    def ticket():
        return top_k({n: np.abs(theta0[n] + common[n] + rng.normal(0, own * scale[n], s))
                      for n, s in shapes.items()}, density)

    return theta0, ticket(), ticket()


# --- an independent reference: the definition, one weight at a time ----------------------------

def reference_edges(n: int, bins: int) -> list[int]:
    """The documented binning, restated: min(bins, n // 64) bins (at least 1) of whole 64-weight words."""
    words, count = -(-n // 64), max(1, min(bins, n // 64))
    return [min(64 * round(k * words / count), n) for k in range(count + 1)]


def reference(theta0, a, b, bins, given=None) -> tuple[int, float, float]:
    """(observed, expected, variance) by loops: each weight's stratum found by its rank, counts by hand."""
    observed, expected, variance = 0, 0.0, 0.0
    for name in theta0:
        w = np.abs(np.asarray(theta0[name])).ravel()
        rank = {int(i): r for r, i in enumerate(np.argsort(w, kind="stable"))}
        edges = reference_edges(w.size, bins)
        fa, fb = np.asarray(a[name]).ravel(), np.asarray(b[name]).ravel()
        ta = tb = None
        if given is not None:
            ta, tb = np.asarray(given[0][name]).ravel(), np.asarray(given[1][name]).ravel()
        strata: dict = {}
        for i in range(w.size):
            s = next(k for k in range(len(edges) - 1) if edges[k] <= rank[i] < edges[k + 1])
            key = (s,) if given is None else (s, bool(ta[i]), bool(tb[i]))
            n, ka, kb = strata.get(key, (0, 0, 0))
            strata[key] = (n + 1, ka + int(fa[i]), kb + int(fb[i]))
            observed += int(fa[i] and fb[i])
        for n, ka, kb in strata.values():
            expected += ka * kb / n
            if n > 1:
                variance += ka * kb * (n - ka) * (n - kb) / (n * n * (n - 1))
    return observed, expected, variance


@pytest.mark.parametrize("bins", [1, 3, 8])
def test_matches_a_brute_force_loop(bins):
    shapes = {"bert.encoder.layer.0.attention.self.query.weight": (16, 24),  # 384 weights: 6 words
              "bert.encoder.layer.0.intermediate.dense.weight": (20, 13),  # 260: a partial last word
              "bert.pooler.dense.weight": (5, 7)}  # 35: less than a word, one bin
    rng = np.random.default_rng(bins)
    theta0 = {n: rng.normal(size=s).round(1) for n, s in shapes.items()}  # rounded: ties in |θ0| too
    a = {n: rng.random(s) < 0.4 for n, s in shapes.items()}
    b = {n: (rng.random(s) < 0.3) | a[n] & (rng.random(s) < 0.5) for n, s in shapes.items()}
    trained = [{n: rng.random(s) < 0.5 for n, s in shapes.items()} for _ in range(2)]
    for given in (None, trained):
        got = N.excess_overlap(theta0, a, b, bins=bins, given=given)
        observed, expected, variance = reference(theta0, a, b, bins, given)
        assert got.observed == observed
        assert got.expected == pytest.approx(expected, rel=1e-12)
        assert got.variance == pytest.approx(variance, rel=1e-12)
        kept_a, kept_b = sum(int(m.sum()) for m in a.values()), sum(int(m.sum()) for m in b.values())
        assert (got.kept_a, got.kept_b, got.n) == (kept_a, kept_b, 384 + 260 + 35)
        union = kept_a + kept_b - observed
        assert got.jaccard == pytest.approx(observed / union)
        assert got.excess_jaccard == pytest.approx(observed / union - expected / (kept_a + kept_b - expected))


def test_a_small_closed_form_case():
    # one matrix of 128 weights: |θ0| ranks them, 2 bins of 64 (the 64 smallest, the 64 largest)
    name = "bert.encoder.layer.0.output.dense.weight"
    theta0 = {name: np.arange(128, dtype=float).reshape(8, 16) - 63.5}  # |θ0| ranks: ties broken by position
    order = np.argsort(np.abs(theta0[name]).ravel(), kind="stable")
    low, high = order[:64], order[64:]
    a, b = np.zeros(128, bool), np.zeros(128, bool)
    a[low[:8]], b[low[4:20]] = True, True  # low bin: a keeps 8, b 16, sharing 4
    a[high[:32]], b[high[6:54]] = True, True  # high bin: a 32, b 48, sharing 26
    got = N.excess_overlap(theta0, {name: a.reshape(8, 16)}, {name: b.reshape(8, 16)}, bins=2)
    assert (got.observed, got.kept_a, got.kept_b) == (30, 40, 64)
    assert got.expected == pytest.approx(8 * 16 / 64 + 32 * 48 / 64)  # 2 + 24 = 26
    assert got.variance == pytest.approx(8 * 16 * 56 * 48 / (64 ** 2 * 63) + 32 * 48 * 32 * 16 / (64 ** 2 * 63))
    assert got.ratio == pytest.approx(30 / 26)
    assert got.jaccard == pytest.approx(30 / 74) and got.expected_jaccard == pytest.approx(26 / 78)
    assert got.excess_jaccard == pytest.approx(30 / 74 - 1 / 3)


def test_no_shared_drift_gives_ratio_one_and_shared_drift_raises_it_monotonically():
    # Planted truth: with no shared drift the two tickets are independent given θ0 (ratio 1); shared drift makes
    # them share more, the more drift the more. Measured (3 draws of the tiny BERT's shapes, 80% sparsity):
    # shared 0 -> 0.9988, 0.05 -> 1.0022, 0.1 -> 1.0126, 0.2 -> 1.051, 0.3 -> 1.114, 0.5 -> 1.300.
    ratios = {}
    for shared in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5):
        ratios[shared] = [N.excess_overlap(*planted(shared, seed=seed)) for seed in range(3)]
    null = [e.ratio for e in ratios[0.0]]
    assert max(abs(r - 1) for r in null) < 0.003  # the tolerance: 6x the spread over draws (about 5e-4)
    assert max(abs(e.excess_jaccard) for e in ratios[0.0]) < 0.0015
    assert max(abs(e.z) for e in ratios[0.0]) < 3  # within the null's own spread
    means = [np.mean([e.ratio for e in ratios[s]]) for s in sorted(ratios)]
    assert all(x < y for x, y in zip(means, means[1:]))  # monotone in the shared drift
    assert all(e.ratio > 1.005 and e.z > 3 for s in (0.1, 0.2, 0.3, 0.5) for e in ratios[s])


def test_the_old_margin_misses_what_the_ratio_finds():
    # The old claim (e) compared the tickets' Jaccard with each one's Jaccard with θ0's one-shot mask: negative
    # even where the tickets share 3% of their weights beyond θ0, so it could not detect what it was named for.
    theta0, a, b = planted(0.2)
    oneshot = top_k({n: np.abs(v) for n, v in theta0.items()}, 0.2)

    def jaccard(x, y):
        return sum(int((x[n] & y[n]).sum()) for n in x) / sum(int((x[n] | y[n]).sum()) for n in x)

    old_margin = jaccard(a, b) - (jaccard(a, oneshot) + jaccard(b, oneshot)) / 2
    e = N.excess_overlap(theta0, a, b)
    assert old_margin < -0.05
    assert (e.observed - e.expected) / e.kept_a > 0.025 and e.ratio > 1.04


STABILITY = (4, 8, 16, 32, 64, 128)


def test_the_ratio_is_stable_over_a_sensible_range_of_bins():
    # docs/method.md's table. Coarse bins leave θ0's effect within each bin (ratio above 1 with no shared drift);
    # from 32 bins a matrix on, the ratio moves by less than 0.002. (The tiny BERT's 64x64 matrices hold at most
    # 64 bins of 64 weights, so 64 and 128 bins differ only in its 64x256 ones.)
    for shared in (0.0, 0.2):
        theta0, a, b = planted(shared)
        ratio = {bins: N.excess_overlap(theta0, a, b, bins=bins).ratio for bins in STABILITY}
        assert N.excess_overlap(theta0, a, b, bins=1).ratio > 1.5  # one bin a matrix: θ0's magnitudes unexplained
        assert max(ratio[k] for k in (32, 64, 128)) - min(ratio[k] for k in (32, 64, 128)) < 0.002
        assert ratio[4] > ratio[16] > ratio[32] - 0.001  # coarser bins explain less of θ0's effect
        if shared == 0.0:
            assert abs(ratio[N.DEFAULT_BINS] - 1) < 0.002
    assert N.DEFAULT_BINS == 128


def test_the_stricter_null_discounts_what_level_0_training_already_shares():
    # Planted: both cells' level-0 training shares a drift (their one-shot masks of the trained weights overlap
    # beyond θ0); the tickets then depend on θ0, on the cell's own one-shot mask and on their own noise only, so
    # they are independent given (θ0, both one-shot masks): ratio 1 under the stricter null, above 1 under θ0's.
    # Later shared drift (after level 0) raises both.
    rng = np.random.default_rng(5)
    shapes = tiny_shapes(layers=3)
    theta0 = {n: rng.normal(0, 0.05, s) for n, s in shapes.items()}
    common = {n: rng.normal(0, 0.03, s) for n, s in shapes.items()}
    trained = [top_k({n: np.abs(theta0[n] + common[n] + rng.normal(0, 0.03, s)) for n, s in shapes.items()}, 0.2)
               for _ in range(2)]
    later = {n: rng.normal(0, 1.0, s) for n, s in shapes.items()}

    def tickets(shared_later: float):
        return [top_k({n: np.abs(theta0[n]) / 0.05 + 1.5 * t[n] + rng.normal(0, 1.0, s) + shared_later * later[n]
                       for n, s in shapes.items()}, 0.2) for t in trained]

    a, b = tickets(0.0)
    loose, strict = N.excess_overlap(theta0, a, b), N.excess_overlap(theta0, a, b, given=trained)
    assert loose.ratio > 1.03 and loose.z > 5
    assert abs(strict.ratio - 1) < 0.01 and abs(strict.z) < 3
    a, b = tickets(0.8)
    assert N.excess_overlap(theta0, a, b, given=trained).ratio > 1.03


def test_groups_add_up_to_the_total_and_equal_their_own_matrices():
    theta0, a, b = planted(0.2, shapes=tiny_shapes(layers=2))
    layers = N.excess_overlap_by(theta0, a, b, "layer")
    components = N.excess_overlap_by(theta0, a, b, "component")
    total = N.excess_overlap(theta0, a, b)
    for groups in (layers, components):
        s = sum(groups.values(), N.ExcessOverlap(0, 0, 0, 0, 0.0, 0.0))
        assert (s.n, s.kept_a, s.kept_b, s.observed) == (total.n, total.kept_a, total.kept_b, total.observed)
        assert s.expected == pytest.approx(total.expected)
    assert set(layers) == {"layer_0", "layer_1"}
    assert set(components) == {"query", "key", "value", "attention_output", "intermediate", "output"}
    # a group's figures are those of its matrices on their own
    own = {n: theta0[n] for n in theta0 if ".layer.1." in n}
    alone = N.excess_overlap(own, {n: a[n] for n in own}, {n: b[n] for n in own})
    assert layers["layer_1"] == alone


def test_accepts_tensors_and_packed_masks_and_refuses_other_parameters():
    theta0, a, b = planted(0.1, shapes=tiny_shapes(layers=1))
    expected = N.excess_overlap(theta0, a, b)
    as_tensors = N.excess_overlap({n: torch.from_numpy(v) for n, v in theta0.items()},
                                  {n: torch.from_numpy(m) for n, m in a.items()}, pack_bool(b))
    assert as_tensors == expected
    with pytest.raises(ValueError, match="differ from θ0"):
        N.excess_overlap(theta0, {n: m for n, m in list(a.items())[1:]}, b)
    with pytest.raises(ValueError, match="bins"):
        N.excess_overlap(theta0, a, b, bins=0)


# --- the matched random baseline -----------------------------------------------------------------

def test_matched_random_baseline_against_sampling():
    # Masks of global magnitude pruning keep each matrix at its own density; random masks with those exact
    # per-matrix counts overlap more than d / (2 - d). Sampled here, against the closed form.
    theta0, a, b = planted(0.0)
    sizes = np.array([m.size for m in a.values()])
    kept_a, kept_b = np.array([m.sum() for m in a.values()]), np.array([m.sum() for m in b.values()])
    closed = random_jaccard_matched(kept_a, kept_b, sizes)
    rng, draws = np.random.default_rng(0), []
    for _ in range(400):
        inter = union = 0
        for n, ka, kb in zip(sizes, kept_a, kept_b):
            x, y = np.zeros(n, bool), np.zeros(n, bool)
            x[rng.choice(n, ka, replace=False)], y[rng.choice(n, kb, replace=False)] = True, True
            inter += int((x & y).sum())
            union += int((x | y).sum())
        draws.append(inter / union)
    draws = np.array(draws)
    assert closed == pytest.approx(draws.mean(), abs=4 * draws.std() / np.sqrt(len(draws)))
    d = (kept_a.sum() + kept_b.sum()) / (2 * sizes.sum())
    assert d == pytest.approx(0.2, abs=1e-5)
    assert closed > random_jaccard(d) + 0.03  # measured: 0.164 against 0.111
    # one density everywhere: the closed form is d / (2 - d)
    assert random_jaccard_matched([50, 150], [50, 150], [100, 300]) == pytest.approx(random_jaccard(0.5))
    # the neutrality module's matched baseline is the same number
    strata = N.MagnitudeStrata(theta0)
    ca, cb = N.ranked_cell(strata, a), N.ranked_cell(strata, b)
    assert N.matched_random(strata, ca, cb, "total")["all"].expected_jaccard == pytest.approx(closed, rel=1e-12)
