"""Magnitude, Wanda and SparseGPT on one weight matrix, against independent references.

References: Python loops over plain floats (Wanda's scores and per-row masks, N:M groups),
`torch.nn.utils.prune` (magnitude), a least-squares solve (SparseGPT's reconstruction for a fixed mask),
and the layer's output error ‖WX − ŴX‖ (SparseGPT below magnitude at the same sparsity).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.utils import prune

from lnsub.trainables import layerwise
from lnsub.trainables.errors import LnsubError
from lnsub.trainables.layerwise import Structure


def _inputs(tokens: int, features: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Correlated calibration inputs (tokens, features) with a few outlier features, as LLM activations have."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=g, dtype=dtype) / math.sqrt(features)
    x = torch.randn(tokens, features, generator=g, dtype=dtype) @ (torch.eye(features, dtype=dtype) + 2 * mixing)
    scale = torch.ones(features, dtype=dtype)
    scale[torch.randperm(features, generator=g)[:3]] = 10.0
    return x * scale


def _weight(rows: int, cols: int, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_wanda_scores_equal_a_brute_force_loop():
    w, x = _weight(5, 7), _inputs(30, 7)
    norms = x.pow(2).sum(0).sqrt()
    scores = layerwise.wanda_scores(w, norms)
    for i in range(5):
        for j in range(7):
            expected = abs(float(w[i, j])) * math.sqrt(sum(float(x[t, j]) ** 2 for t in range(30)))
            assert math.isclose(float(scores[i, j]), expected, rel_tol=1e-5)


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.7])
def test_wanda_mask_is_exact_per_output_row(sparsity):
    w, x = _weight(6, 20), _inputs(40, 20)
    norms = x.pow(2).sum(0).sqrt()
    mask = layerwise.wanda_mask(w, norms, sparsity)
    k = round(sparsity * 20)
    for i in range(6):
        ranked = sorted(range(20), key=lambda j: (abs(float(w[i, j])) * float(norms[j]), j))
        assert {j for j in range(20) if not mask[i, j]} == set(ranked[:k])
    assert int((~mask).sum()) == 6 * k


def test_wanda_compares_within_rows_not_across_the_matrix():
    """A row of tiny weights keeps its share: a global comparison would empty it."""
    w = _weight(4, 8)
    w[0] *= 1e-3
    mask = layerwise.wanda_mask(w, torch.ones(8), 0.5)
    assert mask.sum(1).tolist() == [4, 4, 4, 4]


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9])
def test_magnitude_mask_matches_torch_prune(sparsity):
    w = _weight(9, 11)
    module = torch.nn.Linear(11, 9, bias=False)
    with torch.no_grad():
        module.weight.copy_(w)
    k = round(sparsity * w.numel())
    prune.l1_unstructured(module, "weight", amount=k)
    assert torch.equal(layerwise.magnitude_mask(w, sparsity), module.weight_mask.bool())


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
def test_nm_masks_keep_exactly_n_of_every_m_by_score(n, m):
    w, x = _weight(5, 16), _inputs(32, 16)
    norms = x.pow(2).sum(0).sqrt()
    structure = Structure(n, m)
    for mask, scores in ((layerwise.magnitude_mask(w, 0, structure), w.abs()),
                         (layerwise.wanda_mask(w, norms, 0, structure), w.abs() * norms)):
        for i in range(5):
            for g in range(0, 16, m):
                group = [(float(scores[i, j]), j) for j in range(g, g + m)]
                kept = {j for _, j in sorted(group, reverse=True)[:n]}
                assert {j for j in range(g, g + m) if mask[i, j]} == kept
        assert int(mask.sum()) == 5 * 16 * n // m


def test_nm_refuses_a_width_not_divisible_by_m():
    with pytest.raises(LnsubError):
        layerwise.magnitude_mask(_weight(3, 10), 0, Structure(2, 4))
    with pytest.raises(LnsubError):
        Structure.parse("4:2")
    assert Structure.parse("2:4") == Structure(2, 4) and Structure.parse("unstructured") == Structure()


def _output_error(w: torch.Tensor, new: torch.Tensor, x: torch.Tensor) -> float:
    return float(torch.linalg.norm(x @ w.T - x @ new.T))


@pytest.mark.parametrize("structure,sparsity", [(Structure(), 0.5), (Structure(), 0.7), (Structure(2, 4), 0.5)])
def test_sparsegpt_reconstructs_better_than_magnitude(structure, sparsity):
    w, x = _weight(32, 64), _inputs(512, 64)
    new, mask = layerwise.sparsegpt(w, x.T @ x, sparsity, structure, block_size=16)
    magnitude = w * layerwise.magnitude_mask(w, sparsity, structure)
    wanda = w * layerwise.wanda_mask(w, x.pow(2).sum(0).sqrt(), sparsity, structure)
    errors = {name: _output_error(w, m, x) for name, m in (("sparsegpt", new), ("magnitude", magnitude),
                                                             ("wanda", wanda))}
    assert errors["sparsegpt"] < errors["magnitude"], errors
    assert errors["wanda"] < errors["magnitude"], errors  # outlier features: Wanda's reason to exist
    assert bool((new[~mask] == 0).all())
    assert int((~mask).sum()) == round(sparsity * w.numel())


def test_sparsegpt_sparsity_is_exact_at_awkward_shapes():
    w, x = _weight(7, 45), _inputs(100, 45)
    for sparsity in (0.3, 0.5, 0.61):
        new, mask = layerwise.sparsegpt(w, x.T @ x, sparsity, block_size=8)
        assert int((~mask).sum()) == round(sparsity * 7 * 45)
        assert bool((new[~mask] == 0).all())
    new, mask = layerwise.sparsegpt(_weight(6, 48), _inputs(80, 48).T @ _inputs(80, 48), 0.5, Structure(2, 4), 16)
    assert mask.reshape(6, 12, 4).sum(2).eq(2).all()


def test_sparsegpt_reconstruction_is_the_least_squares_optimum_when_pruned_columns_come_first():
    """With the removed weights to the left of every kept one, each OBS update reaches every kept weight, so the
    result is the exact minimiser of ‖wX − ŵX‖ over the kept weights: checked against a least-squares solve."""
    w, x = _weight(4, 12, dtype=torch.float64), _inputs(200, 12, dtype=torch.float64)
    mask = torch.ones(4, 12, dtype=torch.bool)
    mask[:, :3] = False
    new, got = layerwise.sparsegpt(w, x.T @ x, 0.0, block_size=5, damping=0.0, mask=mask)
    assert torch.equal(got, mask)
    kept = x[:, 3:]
    solution = torch.linalg.lstsq(kept, x @ w.T).solution.T  # (rows, kept columns)
    assert torch.allclose(new[:, 3:], solution, atol=1e-8)
    assert bool((new[:, :3] == 0).all())


def test_sparsegpt_at_zero_sparsity_changes_nothing():
    w, x = _weight(5, 8), _inputs(50, 8)
    new, mask = layerwise.sparsegpt(w, x.T @ x, 0.0)
    assert bool(mask.all()) and torch.allclose(new, w)


def test_a_dead_input_feature_is_handled():
    w, x = _weight(4, 8), _inputs(50, 8)
    x[:, 2] = 0
    new, mask = layerwise.sparsegpt(w, x.T @ x, 0.5, block_size=4)
    assert torch.isfinite(new).all() and int((~mask).sum()) == 16
