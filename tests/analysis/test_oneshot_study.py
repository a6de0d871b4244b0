"""The one-shot analysis on planted masks: pairwise Jaccard and overlap beyond θ0 against brute force and a planted
truth, the random rows' patterns, and LAPE's neurons against the masks by counting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lnsub.analysis import neurons
from lnsub.analysis.oneshot_study import groups, lape_rows, overlap_rows, random_masks, transfer_summary
from lnsub.analysis.oneshot_tables import lape_table, overlap_table
from lnsub.analysis.tables import write_csv
from lnsub.trainables import pruning
from lnsub.trainables.spec import make_spec
from lnsub.trainables.store import CellStore

LAYERS, HIDDEN, FFN = 2, 8, 16
LANGS = ["syn-en", "syn-ur", "syn-ar"]


def _names() -> dict[str, tuple[int, int]]:
    out = {}
    for layer in range(LAYERS):
        base = f"model.layers.{layer}.mlp."
        out |= {base + "gate_proj.weight": (FFN, HIDDEN), base + "up_proj.weight": (FFN, HIDDEN),
                base + "down_proj.weight": (HIDDEN, FFN)}
    return out


def _spec(language: str, method: str = "wanda"):
    return make_spec("clm", language, model="testbed-decoder", method=method, levels=1, prune_fraction=0.5)


def _store_masks(tmp_path, masks_by_lang: dict[str, dict[str, torch.Tensor]], method: str = "wanda") -> list:
    specs = []
    for lang, masks in masks_by_lang.items():
        spec = _spec(lang, method)
        store = CellStore(tmp_path, spec)
        store.save_mask(1, masks, sparsity=0.5)
        store.mark_level_done(1)
        specs.append(spec)
    return specs


def _half_mask(rng: np.random.Generator, shape) -> torch.Tensor:
    flat = np.zeros(int(np.prod(shape)), dtype=bool)
    flat[rng.permutation(flat.size)[:flat.size // 2]] = True
    return torch.from_numpy(flat.reshape(shape))


def test_overlap_rows_match_brute_force_and_find_a_planted_shared_mask(tmp_path):
    rng = np.random.default_rng(0)
    shapes = _names()
    theta0 = {n: torch.from_numpy(rng.standard_normal(s).astype(np.float32)) for n, s in shapes.items()}
    shared = {n: _half_mask(rng, s) for n, s in shapes.items()}
    masks = {"syn-en": shared, "syn-ur": {n: m.clone() for n, m in shared.items()},
             "syn-ar": {n: _half_mask(rng, s) for n, s in shapes.items()}}
    specs = _store_masks(tmp_path, masks)
    rows = {(r["language_a"], r["language_b"]): r for r in overlap_rows(CellStore(tmp_path, specs[0]).storage,
                                                                         specs, theta0)}
    assert len(rows) == 3
    flat = {lang: np.concatenate([m[n].numpy().ravel() for n in shapes]) for lang, m in masks.items()}
    for (a, b), row in rows.items():
        brute = (flat[a] & flat[b]).sum() / (flat[a] | flat[b]).sum()
        assert row["jaccard"] == pytest.approx(brute) and row["random"] == pytest.approx(1 / 3)
    assert rows[("syn-en", "syn-ur")]["jaccard"] == 1.0 and rows[("syn-en", "syn-ur")]["ratio_beyond_theta0"] > 1.5
    write_csv(tmp_path / "overlap.csv", list(rows.values()))
    header, body = overlap_table(tmp_path)  # the report's table reads the rows back
    assert body[0][:2] == ["wanda unstructured 50%", 3] and float(body[0][3]) == pytest.approx(1 / 3, abs=1e-3)
    independent = [rows[k]["ratio_beyond_theta0"] for k in rows if "syn-ar" in k]
    assert all(0.8 < r < 1.2 for r in independent)  # independent masks: no overlap beyond θ0


def test_lape_rows_count_kept_specific_neurons(tmp_path):
    shapes = _names()
    specific = torch.zeros(LAYERS, FFN, len(LANGS), dtype=torch.bool)
    specific[0, 0:4, 0] = True  # syn-en's neurons: layer 0, 0..3
    specific[1, 4:8, 1] = True  # syn-ur's: layer 1, 4..7
    specific[1, 6:8, 2] = True  # syn-ar's: layer 1, 6..7 (shared with syn-ur)
    found = neurons.LanguageNeurons(LANGS, list(range(LAYERS)), torch.zeros(LAYERS, FFN), 0.0, 0.0, specific,
                                    torch.zeros(LAYERS, FFN, dtype=torch.bool))
    kept_cols = {"syn-en": {0: range(0, 8), 1: range(0, 8)}, "syn-ur": {0: range(8, 16), 1: range(4, 12)},
                 "syn-ar": {0: range(0, 16, 2), 1: range(0, 16, 2)}}
    masks = {}
    for lang, cols in kept_cols.items():
        m = {n: torch.ones(s, dtype=torch.bool) for n, s in shapes.items()}
        for layer, keep in cols.items():
            down = torch.zeros(HIDDEN, FFN, dtype=torch.bool)
            down[:, list(keep)] = True
            m[f"model.layers.{layer}.mlp.down_proj.weight"] = down
        masks[lang] = m
    specs = _store_masks(tmp_path, masks)
    cells = next(iter(groups(specs).values()))
    rows, summary = lape_rows(CellStore(tmp_path, specs[0]).storage, cells, ("clm", "wanda", "unstructured", 0), found)
    share = {(r["neurons_of"], r["mask_of"]): r["kept_share"] for r in rows}
    for a_i, a in enumerate(LANGS):
        mine = [(layer, j) for layer in range(LAYERS) for j in range(FFN) if specific[layer, j, a_i]]
        for b in LANGS:
            brute = sum(j in kept_cols[b][layer] for layer, j in mine) / len(mine)
            assert share[(a, b)] == pytest.approx(brute), (a, b)
    assert share[("syn-en", "syn-en")] == 1.0 and share[("syn-en", "syn-ur")] == 0.0
    assert all(r["base_rate"] == pytest.approx(0.5) for r in rows)
    own = np.mean([share[(x, x)] for x in LANGS])
    assert summary[0]["own_mask_share"] == pytest.approx(own)
    write_csv(tmp_path / "lape_summary.csv", summary)
    header, body = lape_table(tmp_path)  # the report's table reads the rows back
    assert body[0][0] == "wanda unstructured 50%" and float(body[0][1]) == pytest.approx(own, abs=1e-3)


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_random_rows_follow_the_pattern(pattern):
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    params = pruning.prunable_parameters(model)
    masks = random_masks(params, 0.5, pattern)
    for p in params:
        mask = masks[p.name]
        assert int(mask.sum()) == mask.numel() // 2
        if pattern == "2:4":
            assert (mask.reshape(mask.shape[0], -1, 4).sum(-1) == 2).all()
    assert all(torch.equal(masks[n], m) for n, m in random_masks(params, 0.5, pattern).items())


def test_transfer_summary_averages_other_targets_only():
    rows = [{"task": "clm", "method": "wanda", "sparsity_pattern": "unstructured", "seed": 0, "level": 1,
             "source": s, "target": t, "relative": rel}
            for s, t, rel in [("a", "a", 0.0), ("a", "b", 0.1), ("a", "c", 0.3), ("random", "a", 0.5),
                              ("random", "b", 0.7)]]
    out = {r["source"]: r for r in transfer_summary(rows)}
    assert out["a"]["mean_relative_difference"] == pytest.approx(0.2) and out["a"]["targets"] == 2
    assert out["random"]["mean_relative_difference"] == pytest.approx(0.6)
