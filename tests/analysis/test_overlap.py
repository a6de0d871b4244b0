"""Mask overlap: Jaccard on packed bits against sets and sklearn, random baselines, ticket choice, plots."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from sklearn.metrics import jaccard_score

from lnsub.analysis import overlap
from lnsub.analysis.neutrality import unpack
from lnsub.trainables.masks import save_masks
from lnsub.trainables.storage import Storage

# 2 layers x 6 matrices + pooler, sizes that are not multiples of 8, so groups start mid-byte
SUFFIXES = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
            "intermediate.dense", "output.dense"]
SHAPES = [(3, 5), (7, 3), (2, 9), (5, 5), (3, 11), (11, 3)]
NAMES = [f"bert.encoder.layer.{layer}.{s}.weight" for layer in range(2) for s in SUFFIXES]
NAMES.append("bert.pooler.dense.weight")
SHAPE_OF = dict(zip(NAMES, SHAPES * 2 + [(5, 3)]))


def _masks(seed: int, density: float, zero: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {n: torch.rand(SHAPE_OF[n], generator=g) < density for n in NAMES}
    for n in zero:
        out[n] = torch.zeros(SHAPE_OF[n], dtype=torch.bool)
    return out


def _reference_group(name: str, by: str) -> str | None:
    """The test's own reading of a parameter name, independent of analysis.overlap."""
    if by == "total":
        return "all"
    m = re.match(r"bert\.encoder\.layer\.(\d+)\.(.+)\.weight$", name)
    if by == "layer":
        return f"layer_{m.group(1)}" if m else None
    part = m.group(2) if m else "pooler.dense"
    return {"attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
            "attention.output.dense": "attention_output", "intermediate.dense": "intermediate",
            "output.dense": "output", "pooler.dense": "pooler"}[part]


def _set_jaccard(a: dict, b: dict, by: str) -> dict[str, float]:
    kept_a, kept_b, groups = {}, {}, []
    for n in NAMES:
        g = _reference_group(n, by)
        if g is None:
            continue
        groups.append(g)
        kept_a.setdefault(g, set()).update((n, i) for i in np.flatnonzero(a[n].numpy()))
        kept_b.setdefault(g, set()).update((n, i) for i in np.flatnonzero(b[n].numpy()))
    return {g: (len(kept_a[g] & kept_b[g]) / len(kept_a[g] | kept_b[g]) if kept_a[g] | kept_b[g] else 1.0)
            for g in dict.fromkeys(groups)}


@pytest.mark.parametrize("by", ["total", "layer", "component"])
def test_jaccard_of_saved_masks_equals_python_sets(tmp_path, by):
    pooler, l1_key = "bert.pooler.dense.weight", "bert.encoder.layer.1.attention.self.key.weight"
    raw = {"de": _masks(0, 0.5), "fr": _masks(1, 0.3, zero=(pooler,)), "sw": _masks(2, 0.8, zero=(pooler, l1_key)),
           "ur": _masks(3, 0.0)}  # ur keeps nothing; de/fr/sw are empty in some groups, 0/0 counts as 1
    packed = {}
    for lang, m in raw.items():
        save_masks(Storage.open(tmp_path), tmp_path / lang, m)
        packed[lang] = overlap.read_packed(tmp_path / lang)
    result = overlap.jaccard_matrix(packed, by=by)
    expected_groups = {"total": ["all"], "layer": ["layer_0", "layer_1"],
                       "component": ["query", "key", "value", "attention_output", "intermediate", "output", "pooler"]}
    assert list(result) == expected_groups[by]
    for group, (labels, matrix) in result.items():
        assert labels == list(raw)
        for i, a in enumerate(labels):
            for j, b in enumerate(labels):
                assert matrix[i, j] == pytest.approx(_set_jaccard(raw[a], raw[b], by)[group], abs=1e-12), (group, a, b)


def test_several_groupings_in_one_pass_equal_each_alone():
    packed = {k: overlap.pack_bool(_masks(s, 0.4)) for k, s in (("a", 0), ("b", 1), ("c", 2))}
    together = overlap.jaccard_matrix(packed, by=("total", "layer", "component"))
    for by in overlap.GROUPINGS:
        for group, (_, matrix) in overlap.jaccard_matrix(packed, by=by).items():
            np.testing.assert_array_equal(together[group][1], matrix)


def test_jaccard_equals_sklearn_on_random_masks():
    rng = np.random.default_rng(7)
    shapes = {"bert.encoder.layer.0.intermediate.dense.weight": (37, 129), "bert.pooler.dense.weight": (61, 61)}
    raw = {f"m{k}": {n: rng.random(s) < d for n, s in shapes.items()} for k, d in enumerate([0.1, 0.5, 0.5, 0.93])}
    labels, matrix = overlap.jaccard_matrix({k: overlap.pack_bool(v) for k, v in raw.items()})["all"]
    flat = {k: np.concatenate([v[n].ravel() for n in shapes]) for k, v in raw.items()}
    for i, a in enumerate(labels):
        for j, b in enumerate(labels):
            assert matrix[i, j] == pytest.approx(jaccard_score(flat[a], flat[b]), abs=1e-12)


def test_popcount_is_exact_for_ranges_starting_and_ending_mid_byte():
    rng = np.random.default_rng(3)
    n = 1000
    a, b = rng.random(n) < 0.5, rng.random(n) < 0.6
    pa, pb = np.packbits(a), np.packbits(b)
    cases = [[(0, n)], [(3, 5)], [(1, 2)], [(9, 10)], [(5, 700)], [(8, 16), (17, 999)], [(0, 64), (64, 128)],
             [(100, 100)]]
    cases += [[tuple(sorted(rng.choice(n + 1, 2, replace=False)))] for _ in range(50)]
    for ranges in cases:
        sel = np.zeros(n, bool)
        for s, e in ranges:
            sel[s:e] = True
        inter, union = overlap.popcount_intersection_union(pa, pb, ranges)
        assert (inter, union) == (int((a & b & sel).sum()), int(((a | b) & sel).sum())), ranges


@pytest.mark.parametrize("d", [0.5, 0.2, 0.9])
def test_random_masks_overlap_like_the_closed_form(d):
    n, rng = 1009 * 991 + 2 * 7, np.random.default_rng(11)  # ~1e6 weights, layer part ends mid-byte
    masks = {}
    for k in range(3):
        flat = np.zeros(n, bool)
        flat[rng.choice(n, round(d * n), replace=False)] = True
        masks[f"r{k}"] = overlap.pack_bool({"bert.encoder.layer.0.output.dense.weight": flat[:-14].reshape(1009, 991),
                                            "bert.pooler.dense.weight": flat[-14:].reshape(2, 7)})
    _, matrix = overlap.jaccard_matrix(masks)["all"]
    expected = d / (2 - d)
    assert overlap.random_jaccard(d) == pytest.approx(expected)
    off = matrix[~np.eye(3, dtype=bool)]
    assert np.all(np.abs(off - expected) < 3e-3)  # std of one pair is <= 6e-4 at this size
    # the baseline matched to each mask's per-matrix counts is the same here: random masks have one density
    sizes = [1009 * 991, 14]
    counts = [[int(m.sum()) for m in unpack(masks[k]).values()] for k in ("r0", "r1")]
    assert overlap.random_jaccard_matched(*counts, sizes) == pytest.approx(expected, abs=1e-3)


def test_identical_masks_overlap_exactly_one():
    m = overlap.pack_bool(_masks(4, 0.37))
    for by in overlap.GROUPINGS:
        for _, matrix in overlap.jaccard_matrix({"x": m, "y": m, "z": m}, by=by).values():
            assert np.all(matrix == 1.0)


def test_masks_of_different_parameters_or_shapes_are_refused():
    a = overlap.pack_bool(_masks(0, 0.5))
    other_shape = dict(_masks(1, 0.5))
    other_shape["bert.pooler.dense.weight"] = torch.ones(3, 5, dtype=torch.bool)  # same size, other shape
    other_names = {n.replace("bert.", "roberta.", 1): m for n, m in _masks(1, 0.5).items()}
    for bad in (other_shape, other_names):
        with pytest.raises(ValueError):
            overlap.jaccard_matrix({"a": a, "b": overlap.pack_bool(bad)})


def test_groups_cover_the_right_weights():
    m = overlap.pack_bool(_masks(0, 0.5))
    total = sum(r * c for r, c in SHAPE_OF.values())
    assert overlap.group_slices(m, "total") == {"all": [(0, total)]}
    layers = overlap.group_slices(m, "layer")
    assert sum(e - s for rs in layers.values() for s, e in rs) == total - 15  # the pooler is in no layer
    comps = overlap.group_slices(m, "component")
    assert len(comps["query"]) == 2 and comps["pooler"] == [(total - 15, total)]
    assert overlap.component_of("bert.encoder.layer.11.output.dense.weight") == (11, "output")
    assert overlap.component_of("bert.encoder.layer.3.attention.output.dense.weight") == (3, "attention_output")
    assert overlap.component_of("bert.pooler.dense.weight") == (None, "pooler")
    with pytest.raises(ValueError):
        overlap.component_of("bert.embeddings.word_embeddings.weight")


LEVELS = [{"level": k, "sparsity": s, "score": sc} for k, s, sc in
          [(0, 0.0, 0.80), (1, 0.2, 0.81), (2, 0.36, 0.79), (3, 0.49, 0.77), (4, 0.59, 0.78), (5, 0.67, 0.70)]]


def test_winning_ticket_one_seed_uses_the_tolerance():
    # within 0.02 of 0.80: levels 0-2 and 4 (0.78), not 3 (0.77) nor 5
    t = overlap.winning_ticket(LEVELS, [0.80], greater_is_better=True, tolerance=0.02)
    assert (t["level"], t["sparsity"], t["score"]) == (4, 0.59, 0.78) and t["threshold"] == pytest.approx(0.78)
    assert overlap.winning_ticket(LEVELS, None, True, tolerance=0.005)["level"] == 1
    with pytest.raises(ValueError):
        overlap.winning_ticket(LEVELS, [0.80], True, tolerance=None)


def test_winning_ticket_several_seeds_uses_their_std():
    dense = [0.79, 0.80, 0.81]  # mean 0.80, sample std 0.01: threshold 0.79
    assert overlap.winning_ticket(LEVELS, dense, True, tolerance=None)["level"] == 2
    dense = [0.76, 0.80, 0.84]  # std 0.04: threshold 0.76, so level 4
    assert overlap.winning_ticket(LEVELS, dense, True, tolerance=0.0)["level"] == 4


def test_winning_ticket_lower_is_better():
    ppl = [{"level": k, "sparsity": 0.2 * k, "score": sc} for k, sc in enumerate([20.0, 19.5, 20.4, 21.5, 20.9, 30.0])]
    assert overlap.winning_ticket(ppl, [20.0], greater_is_better=False, tolerance=1.0)["level"] == 4
    t = overlap.winning_ticket(ppl, [19.8, 20.0, 20.2], greater_is_better=False, tolerance=None)  # std 0.2
    assert t["level"] == 1 and t["threshold"] == pytest.approx(20.2)


def test_cluster_order_puts_each_block_together():
    labels = ["a1", "b1", "a2", "b2", "a3", "b3", "a4"]
    rng = np.random.default_rng(0)
    same = np.array([[la[0] == lb[0] for lb in labels] for la in labels])
    sim = np.where(same, 0.8, 0.3) + rng.uniform(-0.05, 0.05, same.shape)
    sim = (sim + sim.T) / 2
    np.fill_diagonal(sim, 1.0)
    order = overlap.cluster_order(sim, labels)
    assert sorted(order) == sorted(labels)
    blocks = "".join(x[0] for x in order)
    assert blocks in ("aaaabbb", "bbbaaaa")
    assert overlap.cluster_order(sim, labels) == order  # deterministic


def test_heatmap_png_is_written(tmp_path):
    labels = ["en", "de", "fr", "sw"]
    m = overlap.jaccard_matrix({k: overlap.pack_bool(_masks(i, 0.5)) for i, k in enumerate(labels)})["all"][1]
    path = overlap.heatmap_png(m, labels, "total, level 3", tmp_path / "heat.png", baseline=overlap.random_jaccard(0.5))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert [p.name for p in tmp_path.iterdir()] == ["heat.png"]  # no temporary file left behind
