"""End to end on the testbed's tiny decoder: per-twin calibration, one-shot masks, language-specific neurons."""

from __future__ import annotations

import copy

import pytest
import torch

from lnsub.analysis import neurons
from lnsub.trainables import lm_scoring, pruning
from lnsub.trainables.oneshot import OneShotConfig, calibration_windows, prune_one_shot
from lnsub.trainables.testbed.tinybert import pretraining_sentences
from lnsub.trainables.testbed.tinydecoder import (TinyDecoderConfig, ensure_tiny_decoder, language_specials,
                                                  pretrain_report)

pytestmark = pytest.mark.slow
TWINS = ("syn-en", "syn-ar")


@pytest.fixture(scope="module")
def decoder():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = TinyDecoderConfig()
    folder = ensure_tiny_decoder(config)
    return config, folder, AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def _calibration(config, folder, tokenizer, lang):
    bos, eos = language_specials(folder, lang)
    texts = pretraining_sentences(config.data(code_switch=0.0), lang)[:1000]
    return calibration_windows(tokenizer, texts, samples=16, length=64, seed=0, bos=bos, eos=eos)


def _inputs(model, calibration) -> dict[str, torch.Tensor]:
    rows, hooks = {}, []
    for p in pruning.prunable_parameters(model):
        hooks.append(model.get_submodule(p.name.removesuffix(".weight")).register_forward_hook(
            lambda m, i, o, n=p.name: rows.setdefault(n, []).append(i[0].reshape(-1, i[0].shape[-1]))))
    with torch.no_grad():
        for batch in calibration:
            model(**batch)
    for h in hooks:
        h.remove()
    return {n: torch.cat(r) for n, r in rows.items()}


def test_sparsegpt_reconstructs_each_layer_better_than_magnitude_on_a_trained_decoder(decoder):
    config, folder, dense, tokenizer = decoder
    calibration = _calibration(config, folder, tokenizer, "syn-en")
    inputs = _inputs(dense, calibration)
    for structure in ("unstructured", "2:4"):
        errors = {}
        for method in ("magnitude", "sparsegpt"):
            model = copy.deepcopy(dense)
            masks = prune_one_shot(model, calibration, OneShotConfig(method, 0.5, structure, block_size=32))
            assert pruning.density(masks) == 0.5
            with torch.no_grad():
                errors[method] = [float(torch.linalg.norm(x @ (dense.get_parameter(n) - model.get_parameter(n)).T)
                                        / torch.linalg.norm(x @ dense.get_parameter(n).T)) for n, x in inputs.items()]
        worse = [n for n, a, b in zip(inputs, errors["sparsegpt"], errors["magnitude"]) if a >= b]
        assert not worse, (structure, worse)


def test_each_twin_gets_its_own_mask_and_its_neurons_meet_them(decoder):
    config, folder, dense, tokenizer = decoder
    masks, batches = {}, {}
    for lang in TWINS:
        model = copy.deepcopy(dense)
        masks[lang] = prune_one_shot(model, _calibration(config, folder, tokenizer, lang), OneShotConfig("wanda"))
        bos, eos = language_specials(folder, lang)
        held = pretraining_sentences(config.data(), lang, "validation")[:200]
        batches[lang] = [{"input_ids": torch.tensor([[bos, *ids, eos]])}
                         for ids in tokenizer(held, add_special_tokens=False)["input_ids"]]
        scored = lm_scoring.perplexity(model, tokenizer, held, bos, eos, 128)
        assert scored["perplexity"] < 2 * pretrain_report(folder)["per_language"][lang]["perplexity"]  # not destroyed
    differ = sum(int((masks[TWINS[0]][n] != masks[TWINS[1]][n]).sum()) for n in masks[TWINS[0]])
    assert differ > 0  # the calibration language changes the mask
    found = neurons.language_specific_neurons(neurons.activation_counts(dense, batches))
    met = neurons.neurons_meet_masks(found, masks)
    assert met.neurons == config.layers * config.intermediate_size
    assert sum(found.sizes().values()) >= int(found.selected().sum()) > 0
