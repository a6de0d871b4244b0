"""Block-by-block one-shot pruning of whole models (Llama, BLOOM, XLM-R), against an independent walk.

The reference prunes block l after running the WHOLE model (blocks before l already pruned) with plain
hooks on block l's linear maps: no captured arguments, no replay. lnsub's walk captures the first block's
inputs once and replays each block alone, so agreement checks the replay (rotary embeddings, ALiBi,
attention and padding masks) as well as the order of pruning. Models run in float64, so that sums taken in
another order cannot flip a comparison.
"""

from __future__ import annotations

import pytest
import torch
from transformers import (BloomConfig, BloomForCausalLM, LlamaConfig, LlamaForCausalLM, MT5Config,
                          MT5ForConditionalGeneration, XLMRobertaConfig, XLMRobertaForMaskedLM, XLMRobertaModel)

from lnsub.trainables import layerwise, pruning
from lnsub.trainables.errors import LnsubError
from lnsub.trainables.layerwise import Structure
from lnsub.trainables.oneshot import OneShotConfig, calibration_windows, find_blocks, prune_one_shot


def _llama():
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                        num_attention_heads=4, num_key_value_heads=2))


def _bloom():
    return BloomForCausalLM(BloomConfig(vocab_size=50, hidden_size=32, n_layer=2, n_head=4))


def _xlmr():
    return XLMRobertaForMaskedLM(XLMRobertaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                                  num_attention_heads=4, intermediate_size=64, pad_token_id=1))


MODELS = {"llama": _llama, "bloom": _bloom, "xlmr": _xlmr}


def _model(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    return MODELS[kind]().double().eval()


def _calibration(padded: bool, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(3):
        ids = torch.randint(3, 50, (2, 12), generator=g)
        mask = torch.ones_like(ids)
        if padded:  # the second row ends in padding (XLM-R's pad id is 1)
            mask[1, 8:] = 0
            ids[1, 8:] = 1
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


def _reference(model, calibration, config: OneShotConfig) -> dict[str, torch.Tensor]:
    """Prune block by block, each from a full forward of the model as it stands, hooks on its linear maps."""
    structure = Structure.parse(config.structure)
    by_layer: dict[int, list] = {}
    for p in pruning.prunable_parameters(model):
        by_layer.setdefault(p.layer, []).append(p)
    masks, current = {}, [None]
    for layer in sorted(by_layer):
        rows = {p.name: [] for p in by_layer[layer]}
        hooks = [model.get_submodule(p.name.removesuffix(".weight")).register_forward_hook(
            lambda m, i, o, n=p.name: rows[n].append(i[0][current[0]])) for p in by_layer[layer]]
        with torch.no_grad():
            for batch in calibration:
                current[0] = batch["attention_mask"].bool()
                model(**batch)
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for p in by_layer[layer]:
                x, weight = torch.cat(rows[p.name]), model.get_parameter(p.name)
                if config.method == "wanda":
                    masks[p.name] = layerwise.wanda_mask(weight, x.pow(2).sum(0).sqrt(), config.sparsity, structure)
                    weight.mul_(masks[p.name])
                else:
                    new, masks[p.name] = layerwise.sparsegpt(weight, x.T @ x, config.sparsity, structure,
                                                             config.block_size, config.damping)
                    weight.copy_(new)
    return masks


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("method,structure,sparsity", [("wanda", "unstructured", 0.5), ("sparsegpt", "unstructured", 0.6),
                                                       ("wanda", "2:4", 0.5), ("sparsegpt", "2:4", 0.5)])
def test_block_by_block_walk_equals_pruning_from_whole_forwards(kind, method, structure, sparsity):
    config = OneShotConfig(method, sparsity, structure, block_size=16)
    calibration = _calibration(padded=kind == "xlmr")
    ours, theirs = _model(kind), _model(kind)
    masks = prune_one_shot(ours, calibration, config, offload=kind != "llama")
    expected = _reference(theirs, calibration, config)
    assert list(masks) == [p.name for p in pruning.prunable_parameters(ours)]
    for name in expected:
        assert torch.equal(masks[name], expected[name]), name
        assert torch.allclose(ours.get_parameter(name), theirs.get_parameter(name), atol=1e-10), name
        weight = ours.get_parameter(name)
        if structure == "2:4":
            assert masks[name].reshape(weight.shape[0], -1, 4).sum(2).eq(2).all()
        elif method == "wanda":  # every output row at exactly the sparsity
            assert masks[name].sum(1).eq(round((1 - sparsity) * weight.shape[1])).all()
        else:
            assert int((~masks[name]).sum()) == round(sparsity * weight.numel())
        assert bool((weight[~masks[name]] == 0).all())


def test_padding_counts_for_nothing_in_the_statistics():
    """Changing the tokens under attention_mask 0 in XLM-R's calibration set changes no mask."""
    calibration = _calibration(padded=True)
    other = [dict(b, input_ids=b["input_ids"].clone()) for b in calibration]
    for b in other:
        b["input_ids"][1, 8:] = 7  # different tokens where attention_mask is 0
    a = prune_one_shot(_model("xlmr"), calibration, OneShotConfig("wanda", 0.5))
    b = prune_one_shot(_model("xlmr"), other, OneShotConfig("wanda", 0.5))
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_magnitude_needs_no_data_and_is_exact_per_matrix():
    model = _model("llama")
    masks = prune_one_shot(model, [], OneShotConfig("magnitude", 0.3))
    for name, mask in masks.items():
        assert int((~mask).sum()) == round(0.3 * mask.numel())
        assert bool((model.get_parameter(name)[~mask] == 0).all())


def test_inconsistent_configurations_are_one_line_errors():
    for bad in (OneShotConfig("obs"), OneShotConfig("wanda", 0.6, "2:4"), OneShotConfig("wanda", 1.0),
                OneShotConfig("wanda", 0.5, "2-4")):
        with pytest.raises(LnsubError):
            bad.checked()


def test_stacks_and_poolers_are_refused_for_calibration_methods():
    torch.manual_seed(0)
    t5 = MT5ForConditionalGeneration(MT5Config(vocab_size=40, d_model=16, d_ff=24, num_layers=1, num_heads=2, d_kv=8))
    base = XLMRobertaModel(XLMRobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                            num_attention_heads=2, intermediate_size=32))
    for model in (t5, base):
        with pytest.raises(LnsubError):
            find_blocks(model, pruning.prunable_parameters(model))
    blocks = find_blocks(_llama(), pruning.prunable_parameters(_llama()))
    assert list(blocks) == ["model.layers.0", "model.layers.1", "model.layers.2"]
    assert blocks["model.layers.1"]["model.layers.1.mlp.down_proj.weight"] == "mlp.down_proj"


class _WordTokenizer:
    """A stand-in tokenizer: one id per word, with BOS 1 and EOS 2."""

    bos_token_id, eos_token_id = 1, 2

    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [[10 + int(w) for w in t.split()] for t in texts]}


def test_calibration_windows_are_seeded_slices_of_the_language_stream():
    texts = [" ".join(str(i * 10 + j) for j in range(5)) for i in range(20)]
    stream = []
    for t in texts:
        stream += [1] + [10 + int(w) for w in t.split()] + [2]
    windows = calibration_windows(_WordTokenizer(), texts, samples=6, length=9, seed=3)
    again = calibration_windows(_WordTokenizer(), texts, samples=6, length=9, seed=3)
    assert len(windows) == 6 and all(w["input_ids"].shape == (1, 9) for w in windows)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(windows, again))
    joined = ",".join(map(str, stream))
    assert all(",".join(map(str, w["input_ids"][0].tolist())) in joined for w in windows)
    assert calibration_windows(_WordTokenizer(), texts, 6, 9, seed=4)[0]["input_ids"].tolist() != \
        windows[0]["input_ids"].tolist() or windows[1]["input_ids"].tolist() != \
        calibration_windows(_WordTokenizer(), texts, 6, 9, seed=4)[1]["input_ids"].tolist()
    with pytest.raises(LnsubError):
        calibration_windows(_WordTokenizer(), texts[:1], samples=1, length=50)
