"""mT5 masks in the analyses: overlap grouped by layer, component and stack; and, slow, the smoke-mt5
grid swept and analysed end to end as a user runs it (sweep, analyze, transfer, similarity)."""

from __future__ import annotations

import csv

import pytest
import torch
from prebuild import write_smoke_mt5_test_grid
from transformers import MT5Config, MT5ForConditionalGeneration

from lnsub.analysis import overlap
from lnsub.orchestrator.analyses import analyze, similarity, transfer
from lnsub.orchestrator.grid import grid_path, plan
from lnsub.trainables import pruning
from lnsub.trainables.tasks.xnli import exact_matches


def _tiny_mt5():
    torch.manual_seed(0)
    return MT5ForConditionalGeneration(MT5Config(vocab_size=40, d_model=16, d_ff=24, num_layers=2, num_heads=2,
                                                 d_kv=8, feed_forward_proj="gated-gelu"))


def test_overlap_groups_an_mt5_mask_by_layer_component_and_stack():
    params = pruning.prunable_parameters(_tiny_mt5())
    packed = {k: overlap.pack_bool(pruning.random_masks(params, 0.5, seed=k)) for k in (0, 1)}
    sizes = {p.name: p.shape[0] * p.shape[1] for p in params}
    out = overlap.jaccard_matrix(packed, by=overlap.GROUPINGS)
    assert {g for g in out if "_layer_" in g} == {
        f"{s}_layer_{k}" for s in ("encoder", "decoder") for k in (0, 1)}
    assert {"encoder", "decoder", "self_q", "cross_o", "wi_0", "wi_1", "wo", "all"} <= set(out)
    for stack in ("encoder", "decoder"):  # each stack's Jaccard from Python sets
        a, b = ({(n, i) for n, m in pruning.random_masks(params, 0.5, seed=k).items()
                 if n.startswith(stack) for i in torch.nonzero(m.flatten()).flatten().tolist()} for k in (0, 1))
        assert out[stack][1][0, 1] == pytest.approx(len(a & b) / len(a | b))
    assert sum(e - s for s, e in overlap.group_slices(packed[0], "stack")["decoder"]) == sum(
        v for n, v in sizes.items() if n.startswith("decoder."))
    bert_like = overlap.pack_bool({"bert.encoder.layer.0.output.dense.weight": torch.ones(2, 2, dtype=torch.bool)})
    assert overlap.group_slices(bert_like, "stack") == {}  # an encoder-only model has no stacks


def test_exact_match_needs_the_label_tokens_and_then_the_end():
    class Echo:  # "generates" the given rows after the decoder's start token
        def __init__(self, rows):
            self.rows = rows
            self.generation_config = type("G", (), {"pad_token_id": 0})()

        def generate(self, **kwargs):
            return torch.cat([torch.zeros(len(self.rows), 1, dtype=torch.long), self.rows], dim=1)

    labels = torch.tensor([[5, 6, 1], [7, 1, -100], [7, 1, -100]])
    out = torch.tensor([[5, 6, 1], [7, 1, 0], [7, 8, 1]])
    batch = {"input_ids": torch.zeros(3, 2, dtype=torch.long), "attention_mask": torch.ones(3, 2)}
    assert exact_matches(Echo(out), batch, labels).tolist() == [1, 1, 0]


def test_mt5_grids_plan():
    smoke = plan("smoke-mt5")
    assert {(c.spec.model, c.spec.task) for c in smoke.cells} == {("testbed-mt5", "xnli")}
    assert len(smoke.cells) == 3 and all(c.spec.model_revision.startswith("tinymt5-") for c in smoke.cells)
    full = plan("full-mt5")
    assert {c.spec.language for c in full.cells} == {"en", "fr", "de", "zh", "ru", "es", "ur", "ar", "hi", "sw"}
    assert [(s.task, s.language) for s in full.skipped] == [("xnli", "fa")] or not full.skipped
    assert len(full.cells) == 30 and {c.spec.lr for c in full.cells} == {2e-4}


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_smoke_mt5_sweeps_and_every_analysis_runs(tmp_path, lnsub_cli):
    """smoke-mt5's own settings, cut to 2 twins, 1 level and a tiny mT5 pretrained for 100 steps (tests/prebuild.py,
    which tests/conftest.py runs beside the quick tests) to keep the suite short: the sweep from the command line,
    then every analysis as `lnsub study` runs them (in one process)."""
    sweep = lnsub_cli("sweep", "--grid", str(write_smoke_mt5_test_grid(tmp_path)), cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stdout[-3000:]
    storage = str(tmp_path / "lnsub-runs")
    analyze("smoke-mt5", storage)
    rows = _rows(next(tmp_path.glob("lnsub-runs/**/overlap/overlap.csv")))
    assert {r["grouping"] for r in rows} == {"total", "layer", "component", "stack"}
    assert {r["group"] for r in rows if r["grouping"] == "stack"} == {"encoder", "decoder"}
    cka = _rows(similarity("smoke-mt5", storage, sentences=40).folder / "similarity.csv")
    assert {r["encoder"] for r in cka} >= {"dense", "random"} and all(r["cka_debiased"] for r in cka)
    result = transfer("smoke-mt5", storage, 1)
    assert not result.transfer.errors
    matrix = _rows(result.folder / "transfer_matrix_level1.csv")
    assert {(r["source"], r["target"]) for r in matrix} >= {(a, b) for a in ("syn-en", "syn-ar") for b in ("syn-en", "syn-ar")}
    assert all(0.0 <= float(r[k]) <= 1.0 for r in matrix for k in ("a_st", "a_tt"))  # exact-match accuracies
