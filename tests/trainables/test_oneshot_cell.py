"""A one-shot cell on the tiny decoder: run_cell prunes from the twin's calibration set, scores the pruned model, and
saves what the analyses read; checked against independent computations (a fresh model with the saved mask, top-k
per 2:4 group by brute force, the held-out carve by hand)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from lnsub.trainables import lm_scoring, pruning
from lnsub.trainables.imp import run_cell
from lnsub.trainables.oneshot_cell import open_scorer, pruned_model
from lnsub.trainables.providers import prepare
from lnsub.trainables.spec import make_spec
from lnsub.trainables.store import ONESHOT_PRETRAINED, CellStore
from lnsub.trainables.tasks import get_task
from lnsub.trainables.testbed import grammar
from lnsub.trainables.testbed.languages import TWINS
from lnsub.trainables.loading import data_root, model_path

SMALL = {"model": "testbed-decoder", "levels": 1, "prune_fraction": 0.5, "max_length": 64, "batch_size": 16,
         "train_size": 60, "valid_size": 8}


def _spec(method: str, pattern: str = "unstructured", language: str = "syn-ur"):
    extra = {"calibration_samples": 8} if method != "magnitude" else {}
    spec = make_spec("clm", language, method=method, sparsity_pattern=pattern, **SMALL, **extra)
    prepare([spec])
    return spec


def _held_out_sentences(spec) -> list[str]:
    """The twin's validation documents read from the file, cut after its end-of-sentence word, by hand."""
    end = grammar.build_lexicon(TWINS[spec.language], 0, 0.0)["fn:end"]
    folder = f"{data_root(spec)}/mlm/{spec.language}/validation.jsonl"
    docs = [json.loads(line)["text"] for line in open(folder)][:spec.valid_size]
    out = []
    for doc in docs:
        words, current = doc.split(), []
        for w in words:
            current.append(w)
            if w == end:
                out.append(" ".join(current))
                current = []
        if current:
            out.append(" ".join(current))
    return out


def test_a_wanda_2_4_cell_saves_the_mask_it_scored(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = _spec("wanda", "2:4")
    result = run_cell(spec, tmp_path)
    store = CellStore(tmp_path, spec)
    masks = store.load_mask(1)
    folder = model_path(spec)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    for name, mask in masks.items():  # exactly two of every four consecutive input weights kept
        assert (mask.reshape(mask.shape[0], -1, 4).sum(-1) == 2).all(), name
    with torch.no_grad():
        for name, mask in masks.items():
            model.get_parameter(name).mul_(mask)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    expected = lm_scoring.perplexity(model, tokenizer, _held_out_sentences(spec), max_length=64)["perplexity"]
    assert result.levels[1]["score"] == pytest.approx(expected, rel=1e-9)
    assert result.levels[1]["sparsity"] == 0.5 and result.levels[0]["density"] == 1.0
    # θ0's magnitude baseline: the two largest |θ0| of every group of four, by top-k
    baseline = store.baseline(ONESHOT_PRETRAINED, 0.5)
    for name, mask in baseline.items():
        groups = theta0[name].abs().reshape(theta0[name].shape[0], -1, 4)
        top = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, groups.topk(2, dim=2).indices, True)
        assert torch.equal(mask, top.reshape(mask.shape)), name
    stamps = {p: p.stat().st_mtime_ns for p in store.root.rglob("*") if p.is_file()}
    again = run_cell(spec, tmp_path)
    assert again.levels == result.levels and {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_a_sparsegpt_cell_keeps_its_updated_weights_and_transfer_reloads_them(tmp_path):
    spec = _spec("sparsegpt")
    result = run_cell(spec, tmp_path)
    store = CellStore(tmp_path, spec)
    weights, masks = store.load_weights(1), store.load_mask(1)
    assert set(weights) == set(masks)
    assert all(float(weights[n][~masks[n]].abs().sum()) == 0.0 for n in masks)
    scorer = open_scorer(spec)
    changed = sum(int((weights[n][masks[n]] != scorer.theta0[n][masks[n]]).sum()) for n in masks)
    assert changed > 0  # SparseGPT updates the weights it keeps
    pruned_model(scorer, spec, store, 1)
    assert scorer.score(spec)["perplexity"] == pytest.approx(result.levels[1]["score"], rel=1e-9)
    scorer.restore()
    assert scorer.score(spec)["perplexity"] == pytest.approx(result.levels[0]["score"], rel=1e-9)
    assert pruning.density(masks) == pytest.approx(0.5)


def test_clm_carves_validation_documents_as_mlm_does(tmp_path):
    docs = [{"id": f"doc{i}", "url": "", "title": "", "text": f"text number {i}"} for i in range(200)]
    folder = tmp_path / "mlm" / "en"
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text("\n".join(json.dumps(d) for d in docs))
    held = [d["text"] for d in docs
            if int.from_bytes(hashlib.sha256(d["id"].encode()).digest()[:8], "big") / 2.0 ** 64 < 0.3]
    clm = get_task("clm")
    assert clm.evaluation_set("en", tmp_path, None, 0.3) == held
    calibration = clm.calibration_texts("en", tmp_path, None, 0.3)
    assert calibration == [d["text"] for d in docs if d["text"] not in held] and 30 < len(held) < 90
    assert clm.evaluation_set("en", tmp_path, 5, 0.3) == held[:5]
