"""One-shot pruning and language-specific neurons on the testbed's tiny decoder, per twin: measured, not asserted.

For each twin L: a calibration set of L's monolingual training sentences (random windows), masks by magnitude,
Wanda and SparseGPT (unstructured at --sparsity, and 2:4), each pruned model's held-out perplexity on L, and
the layer-wise reconstruction error of every prunable matrix, ‖(W − Ŵ) X‖_F / ‖W X‖_F with X the dense
model's inputs to that matrix on L's calibration set (mean over matrices). Then LAPE on the twins' held-out
sentences and how its language-specific neurons meet the twins' Wanda masks.

Usage: python bench/oneshot_tinydecoder.py [--decoupled] [--samples 32] [--length 64] [--out result.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from lnsub.analysis import neurons
from lnsub.trainables import lm_scoring, pruning
from lnsub.trainables.oneshot import OneShotConfig, calibration_windows, prune_one_shot
from lnsub.trainables.testbed.tinybert import pretraining_sentences
from lnsub.trainables.testbed.tinydecoder import (TinyDecoderConfig, decoupled, ensure_tiny_decoder,
                                                  language_specials)

SETTINGS = [(m, s) for s in ("unstructured", "2:4") for m in ("magnitude", "wanda", "sparsegpt")]


def dense_inputs(model, calibration) -> dict[str, torch.Tensor]:
    """Every prunable matrix's inputs in the dense model over the calibration set, (tokens, features)."""
    rows, hooks = {}, []
    for p in pruning.prunable_parameters(model):
        module = model.get_submodule(p.name.removesuffix(".weight"))
        hooks.append(module.register_forward_hook(
            lambda m, i, o, n=p.name: rows.setdefault(n, []).append(i[0].reshape(-1, i[0].shape[-1]))))
    with torch.no_grad():
        for batch in calibration:
            model(**batch)
    for h in hooks:
        h.remove()
    return {n: torch.cat(r) for n, r in rows.items()}


def reconstruction_error(dense, pruned, inputs) -> float:
    errors = []
    for name, x in inputs.items():
        w, w_hat = dense.get_parameter(name).detach(), pruned.get_parameter(name).detach()
        errors.append(float(torch.linalg.norm(x @ (w - w_hat).T) / torch.linalg.norm(x @ w.T)))
    return sum(errors) / len(errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--decoupled", action="store_true")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = decoupled(TinyDecoderConfig()) if args.decoupled else TinyDecoderConfig()
    folder = ensure_tiny_decoder(config)
    dense = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    languages = list(config.testbed.languages)
    result = {"model": config.id, "per_language": {}, "wanda_masks": {}}
    held = {lang: pretraining_sentences(config.data(), lang, "validation") for lang in languages}
    for lang in languages:
        bos, eos = language_specials(folder, lang)
        texts = pretraining_sentences(config.data(code_switch=0.0), lang)[:2000]
        calibration = calibration_windows(tokenizer, texts, args.samples, args.length, seed=0, bos=bos, eos=eos)
        inputs = dense_inputs(dense, calibration)
        row = {"dense": lm_scoring.perplexity(dense, tokenizer, held[lang], bos, eos, 128)["perplexity"]}
        for method, structure in SETTINGS:
            model, start = copy.deepcopy(dense), time.perf_counter()
            sparsity = 0.5 if structure == "2:4" else args.sparsity
            masks = prune_one_shot(model, calibration, OneShotConfig(method, sparsity, structure, block_size=32))
            row[f"{method} {structure}"] = {
                "seconds": round(time.perf_counter() - start, 2),
                "perplexity": lm_scoring.perplexity(model, tokenizer, held[lang], bos, eos, 128)["perplexity"],
                "reconstruction_error": reconstruction_error(dense, model, inputs),
                "sparsity": 1 - pruning.density(masks)}
            if (method, structure) == ("wanda", "unstructured"):
                result["wanda_masks"][lang] = masks
        result["per_language"][lang] = row
        print(lang, json.dumps(row), flush=True)
    lape(dense, tokenizer, folder, held, languages, result)
    masks = result.pop("wanda_masks")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    del masks


def mean_jaccard(masks: dict[str, dict[str, torch.Tensor]]) -> float:
    """Mean Jaccard index of kept weights over every pair of twins' masks (two random masks at 50%: 1/3)."""
    flat = {lang: torch.cat([m.flatten() for m in ms.values()]) for lang, ms in masks.items()}
    langs = list(flat)
    pairs = [(a, b) for i, a in enumerate(langs) for b in langs[i + 1:]]
    return sum(float((flat[a] & flat[b]).sum() / (flat[a] | flat[b]).sum()) for a, b in pairs) / len(pairs)


def lape(dense, tokenizer, folder, held, languages, result) -> None:
    batches = {}
    for lang in languages:
        bos, eos = language_specials(folder, lang)
        rows = [[bos, *ids, eos] for ids in tokenizer(held[lang], add_special_tokens=False)["input_ids"]]
        batches[lang] = [{"input_ids": torch.tensor([r])} for r in rows]
    counts = neurons.activation_counts(dense, batches)
    found = neurons.language_specific_neurons(counts)
    met = neurons.neurons_meet_masks(found, result["wanda_masks"])
    diagonal = [met.kept_share[i][i] for i in range(len(languages)) if met.kept_share[i][i] is not None]
    off = [met.kept_share[i][j] for i in range(len(languages)) for j in range(len(languages))
           if i != j and met.kept_share[i][j] is not None]
    result["wanda_jaccard_mean"] = mean_jaccard(result["wanda_masks"])
    result["lape"] = {"sizes": found.sizes(), "selected": int(found.selected().sum()), "neurons": met.neurons,
                      "filter_threshold": found.filter_threshold, "agnostic": met.agnostic,
                      "kept_share": met.kept_share, "base_rate": met.base_rate,
                      "own_mask_mean": sum(diagonal) / max(len(diagonal), 1),
                      "other_masks_mean": sum(off) / max(len(off), 1),
                      "kept_by_every_mask": met.kept_by_every_mask, "every_mask_rate": met.every_mask_rate,
                      "agnostic_recall": met.agnostic_recall}
    print("wanda masks, mean pairwise Jaccard", result["wanda_jaccard_mean"])
    print("lape", json.dumps({k: v for k, v in result["lape"].items() if k != "kept_share"}), flush=True)


if __name__ == "__main__":
    main()
