"""Pruning against independent references: torch.nn.utils.prune and closed-form counts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.nn.utils import prune
from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification

from lnsub.trainables import pruning


def _small_bert(cls=BertForTokenClassification, seed=0):
    torch.manual_seed(seed)
    # 2 layers x (4 x 20x20 + 2 x 20x40) = 6,400 prunable weights: a multiple of 10
    return cls(BertConfig(vocab_size=50, hidden_size=20, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=40, max_position_embeddings=16))


def _modules(model, params):
    named = dict(model.named_modules())
    return [(named[p.name.rsplit(".", 1)[0]], "weight") for p in params]


def test_prunable_set_is_found_from_the_architecture():
    model = _small_bert(BertForSequenceClassification)  # has a pooler
    params = pruning.prunable_parameters(model)
    assert len(params) == 2 * 6 + 1
    assert {p.component for p in params} == {"query", "key", "value", "attention_output", "intermediate",
                                             "output", "pooler"}
    names = [p.name for p in params]
    assert "bert.encoder.layer.1.attention.self.query.weight" in names and "bert.pooler.dense.weight" in names
    assert not any("embeddings" in n or "LayerNorm" in n or "classifier" in n or n.endswith("bias") for n in names)
    assert len(pruning.prunable_parameters(_small_bert(BertForTokenClassification))) == 12  # no pooler


def test_mbert_sized_model_has_72_matrices_of_84_9_million_weights():
    config = BertConfig(vocab_size=119547)  # bert-base-multilingual-cased's shape
    with torch.device("meta"):
        model = BertForTokenClassification(config)
    params = pruning.prunable_parameters(model)
    assert len(params) == 72
    assert pruning.prunable_count(params) == 12 * (4 * 768 * 768 + 2 * 768 * 3072) == 84_934_656


def test_global_magnitude_mask_equals_torch_prune_over_several_rounds():
    model = _small_bert()
    reference = _small_bert()
    params = pruning.prunable_parameters(model)
    total = pruning.prunable_count(params)
    ours = pruning.dense_masks(params)
    ref_modules = _modules(reference, params)
    generator = torch.Generator().manual_seed(1)
    for level in range(1, 8):
        # "training" between rounds: new values for every weight, the same in both models
        new_values = {p.name: torch.randn(p.shape, generator=generator) for p in params}
        for (module, _), p in zip(ref_modules, params):
            if hasattr(module, "weight_orig"):
                module.weight_orig.data.copy_(new_values[p.name])
                module.weight = module.weight_orig * module.weight_mask  # what prune's forward pre-hook does
            else:
                module.weight.data.copy_(new_values[p.name])
        ours = pruning.magnitude_prune({n: v * ours[n] for n, v in new_values.items()}, ours, level, 0.1)
        amount = pruning.pruned_target(level, 0.1, total) - pruning.pruned_target(level - 1, 0.1, total)
        prune.global_unstructured(ref_modules, pruning_method=prune.L1Unstructured, amount=amount)
        for (module, _), p in zip(ref_modules, params):
            assert torch.equal(ours[p.name], module.weight_mask.bool()), (level, p.name)
        zeros = sum(int((~m).sum()) for m in ours.values())
        assert zeros == level * total // 10  # exactly level x 10% of the ORIGINAL count


def test_each_round_removes_one_over_ten_minus_k_of_what_is_alive():
    model = _small_bert(seed=3)
    params = pruning.prunable_parameters(model)
    weights = {p.name: w.detach() for p in params for n, w in model.named_parameters() if n == p.name}
    ref = _modules(_small_bert(seed=3), params)
    ours = pruning.dense_masks(params)
    for k in range(9):  # round k (0-based) takes 1/(10-k) of the survivors, as a float amount
        ours = pruning.magnitude_prune(weights, ours, k + 1, 0.1)
        prune.global_unstructured(ref, pruning_method=prune.L1Unstructured, amount=1 / (10 - k))
        for (module, _), p in zip(ref, params):
            assert torch.equal(ours[p.name], module.weight_mask.bool()), (k, p.name)


def test_masks_are_nested_and_ties_are_broken_deterministically():
    shapes = {"a": (4, 5), "b": (10,)}
    equal = {n: torch.ones(s) for n, s in shapes.items()}  # every weight ties
    masks = {n: torch.ones(s, dtype=torch.bool) for n, s in shapes.items()}
    previous = masks
    for level in range(1, 4):
        masks = pruning.magnitude_prune(equal, masks, level, 0.25)
        assert sum(int((~m).sum()) for m in masks.values()) == round(level * 0.25 * 30)
        for n in masks:
            assert not (masks[n] & ~previous[n]).any()  # nested: nothing pruned comes back
        previous = masks
    again = {n: torch.ones(s, dtype=torch.bool) for n, s in shapes.items()}
    for level in range(1, 4):
        again = pruning.magnitude_prune(equal, again, level, 0.25)
    assert all(torch.equal(masks[n], again[n]) for n in masks)


def test_one_shot_mask_equals_torch_prune_and_random_mask_has_exact_count():
    model = _small_bert(seed=5)
    params = pruning.prunable_parameters(model)
    theta0 = dict(model.named_parameters())
    total = pruning.prunable_count(params)
    one_shot = pruning.one_shot_masks(theta0, params, 0.5)
    ref = _modules(_small_bert(seed=5), params)
    prune.global_unstructured(ref, pruning_method=prune.L1Unstructured, amount=total // 2)
    for (module, _), p in zip(ref, params):
        assert torch.equal(one_shot[p.name], module.weight_mask.bool())
    r1, r2 = pruning.random_masks(params, 0.3, seed=1), pruning.random_masks(params, 0.3, seed=2)
    for r in (r1, r2):
        assert sum(int((~m).sum()) for m in r.values()) == round(0.3 * total)
    agree = sum(int((r1[n] == r2[n]).sum()) for n in r1) / total
    assert 0.5 < agree < 0.65  # two independent masks of density 0.7 agree on 0.7² + 0.3² = 58%


def test_masked_gradients_keep_pruned_weights_at_zero():
    model = _small_bert(seed=7)
    params = pruning.prunable_parameters(model)
    masks = pruning.random_masks(params, 0.5, seed=0)
    pruning.apply_masks(model, masks)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    enforce = pruning.MaskEnforcer(model, masks)  # as train_round uses it
    for _ in range(3):
        out = model(input_ids=torch.randint(0, 50, (2, 8)), labels=torch.randint(0, 2, (2, 8)))
        out.loss.backward()
        enforce.gradients()
        optimizer.step()
        optimizer.zero_grad()
    named = dict(model.named_parameters())
    for name, m in masks.items():
        assert (named[name][~m] == 0).all()  # exactly zero without reapplying the mask


def test_bad_targets_are_refused():
    masks = {"a": torch.ones(10, dtype=torch.bool)}
    pruned = pruning.magnitude_prune({"a": torch.arange(10.0)}, masks, 5, 0.1)
    with pytest.raises(ValueError):
        pruning.magnitude_prune({"a": torch.arange(10.0)}, pruned, 2, 0.1)
    with pytest.raises(ValueError, match="no prunable-set rule"):
        unknown = torch.nn.Linear(2, 2)
        unknown.config = SimpleNamespace(model_type="gpt2")
        pruning.prunable_parameters(unknown)
