"""Language-specific neurons (LAPE) and masks, against brute force on tiny models and a planted truth.

References: activations recomputed token by token in plain Python from the FFN's input (a hook on the
MLP's input, not on the activation the code reads); entropy, percentiles and selection from sorted
Python lists; a neuron's kept state from counting its output column's kept weights one by one.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from transformers import BloomConfig, BloomForCausalLM, LlamaConfig, LlamaForCausalLM

from lnsub.analysis import neurons
from lnsub.trainables import pruning


def _llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=3,
                                        num_attention_heads=2, num_key_value_heads=1)).double().eval()


def _bloom():
    torch.manual_seed(0)
    return BloomForCausalLM(BloomConfig(vocab_size=50, hidden_size=16, n_layer=2, n_head=2)).double().eval()


RANGES = {"A": (3, 20), "B": (20, 35), "C": (35, 50)}


def _batches(seed: int = 0) -> dict[str, list[dict]]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for lang, (lo, hi) in RANGES.items():
        out[lang] = []
        for _ in range(2):
            ids = torch.randint(lo, hi, (2, 7), generator=g)
            mask = torch.ones_like(ids)
            mask[1, 5:] = 0  # padding, which must not count
            out[lang].append({"input_ids": ids, "attention_mask": mask})
    return out


def _silu(z: float) -> float:
    return z / (1 + math.exp(-z))


def _bloom_gelu(z: float) -> float:
    return 0.5 * z * (1 + math.tanh(0.79788456 * z * (1 + 0.044715 * z * z)))


def _brute_counts(model, batches, kind: str) -> tuple[list[list[list[int]]], list[int]]:
    """counts[layer][neuron][language] recomputed from each MLP's input, token by token."""
    mlps = [layer.mlp for layer in (model.model.layers if kind == "llama" else model.transformer.h)]
    captured = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, i=i: captured.__setitem__(i, args[0]))
             for i, m in enumerate(mlps)]
    counts = [[[0] * len(batches) for _ in range(24 if kind == "llama" else 64)] for _ in mlps]
    tokens = [0] * len(batches)
    for li, (lang, lang_batches) in enumerate(batches.items()):
        for batch in lang_batches:
            with torch.no_grad():
                model(**batch)
            for b in range(batch["input_ids"].shape[0]):
                for t in range(batch["input_ids"].shape[1]):
                    if not batch["attention_mask"][b, t]:
                        continue
                    tokens[li] += 1
                    for layer, mlp in enumerate(mlps):
                        x = captured[layer][b, t].tolist()
                        w = (mlp.gate_proj if kind == "llama" else mlp.dense_h_to_4h).weight.tolist()
                        bias = [0.0] * len(w) if kind == "llama" else mlp.dense_h_to_4h.bias.tolist()
                        for j, row in enumerate(w):
                            z = sum(a * c for a, c in zip(row, x)) + bias[j]
                            counts[layer][j][li] += (_silu(z) if kind == "llama" else _bloom_gelu(z)) > 0
    for h in hooks:
        h.remove()
    return counts, tokens


@pytest.mark.parametrize("kind", ["llama", "bloom"])
def test_activation_counts_equal_a_token_by_token_recomputation(kind):
    model = _llama() if kind == "llama" else _bloom()
    batches = _batches()
    counts = neurons.activation_counts(model, batches)
    expected, tokens = _brute_counts(model, batches, kind)
    assert counts.languages == list(RANGES) and counts.tokens.tolist() == tokens == [24, 24, 24]
    assert counts.over_zero.tolist() == expected


def _brute_lape(probs: list[list[list[float]]], top_rate: float, rate: float = 0.95) -> tuple[dict[str, set], set]:
    flat = sorted(p for layer in probs for neuron in layer for p in neuron)
    tau = flat[round(len(flat) * rate) - 1]
    entries = []
    for layer, rows in enumerate(probs):
        for j, p in enumerate(rows):
            total = sum(p)
            h = -sum((q / total) * math.log(q / total) for q in p if q > 0) if total > 0 else 0.0
            if not any(q > tau for q in p):
                h = math.inf
            entries.append((h, layer, j))
    entries.sort()
    chosen = entries[:round(len(entries) * top_rate)]
    specific = {lang: {(l, j) for _, l, j in chosen if probs[l][j][i] > tau} for i, lang in enumerate(RANGES)}
    agnostic = {(l, j) for l, rows in enumerate(probs) for j, p in enumerate(rows) if all(q > tau for q in p)}
    return specific, agnostic


@pytest.mark.parametrize("rate", [0.95, 0.6])
def test_language_specific_neurons_equal_brute_force(rate):
    counts = neurons.activation_counts(_llama(), _batches())
    found = neurons.language_specific_neurons(counts, top_rate=0.1, filter_rate=rate, bar_rate=rate)
    probs = (counts.over_zero.double() / counts.tokens.double()).tolist()
    specific, agnostic = _brute_lape(probs, 0.1, rate)
    assert all(specific.values()) and (agnostic or rate == 0.95)  # the comparison has something to compare
    for i, lang in enumerate(found.languages):
        got = {(l, j) for l, j in torch.nonzero(found.specific[:, :, i]).tolist()}
        assert got == specific[lang], lang
    assert {(l, j) for l, j in torch.nonzero(found.agnostic).tolist()} == agnostic
    assert found.sizes() == {lang: len(s) for lang, s in specific.items()}


def test_lape_finds_planted_language_specific_and_shared_neurons():
    """4 languages, 2 layers x 500 neurons: 10 planted specific neurons (firing only in their language), 6
    planted shared ones (firing on 95% of every language's tokens), the rest firing at random, 20-60%."""
    rng = random.Random(0)
    tokens = 1000
    over = torch.tensor([[[rng.randint(200, 600) for _ in range(4)] for _ in range(500)] for _ in range(2)])
    planted = {(0, 7): 0, (0, 99): 1, (0, 250): 2, (0, 499): 3, (1, 0): 0, (1, 13): 1, (1, 77): 2, (1, 300): 3,
               (1, 301): 3, (1, 450): 1}
    for (l, j), lang in planted.items():
        over[l, j] = 0
        over[l, j, lang] = 900
    shared = [(0, 1), (0, 2), (1, 5), (1, 6), (1, 400), (0, 321)]
    for l, j in shared:
        over[l, j] = 950
    counts = neurons.ActivationCounts(["w", "x", "y", "z"], [0, 1], over.long(), torch.full((4,), tokens))
    found = neurons.language_specific_neurons(counts)
    assert int(found.selected().sum()) == 10  # round(1% of 1000)
    for i in range(4):
        got = {(l, j) for l, j in torch.nonzero(found.specific[:, :, i]).tolist()}
        assert got == {n for n, lang in planted.items() if lang == i}
    assert {(l, j) for l, j in torch.nonzero(found.agnostic).tolist()} == set(shared)
    assert found.per_language()["z"] == {0: [499], 1: [300, 301]}


def _masks_for(model, seed: int) -> dict[str, torch.Tensor]:
    return pruning.random_masks(pruning.prunable_parameters(model), 0.5, seed)


def test_neurons_meet_masks_equal_brute_force():
    model = _llama()
    counts = neurons.activation_counts(model, _batches())
    found = neurons.language_specific_neurons(counts, top_rate=0.2, bar_rate=0.6)
    masks = {lang: _masks_for(model, seed) for seed, lang in enumerate(RANGES)}
    assert found.agnostic.any() and all(found.sizes().values())
    met = neurons.neurons_meet_masks(found, masks)
    down = {lang: {l: m[f"model.layers.{l}.mlp.down_proj.weight"] for l in range(3)} for lang, m in masks.items()}

    def kept(lang, l, j):
        column = [bool(down[lang][l][r, j]) for r in range(16)]
        return sum(column) / 16 > 0.5

    for a, lang_a in enumerate(RANGES):
        own = [(l, j) for l in range(3) for j in range(24) if found.specific[l, j, a]]
        for b, lang_b in enumerate(RANGES):
            expected = sum(kept(lang_b, l, j) for l, j in own) / len(own) if own else None
            assert met.kept_share[a][b] == expected
    for b, lang_b in enumerate(RANGES):
        assert met.base_rate[b] == sum(kept(lang_b, l, j) for l in range(3) for j in range(24)) / 72
    every = {(l, j) for l in range(3) for j in range(24) if all(kept(x, l, j) for x in RANGES)}
    agnostic = {(l, j) for l, j in torch.nonzero(found.agnostic).tolist()}
    assert (met.neurons, met.kept_by_every_mask, met.agnostic) == (72, len(every), len(agnostic))
    assert met.agnostic_kept_by_every_mask == len(agnostic & every)


def test_input_row_density_is_constant_under_wanda_like_row_sparsity():
    """Why a neuron's kept state is read from its output column: per-row methods fix every input row's density."""
    model = _llama()
    masks = {}
    for p in pruning.prunable_parameters(model):
        scores = torch.rand(p.shape, generator=torch.Generator().manual_seed(len(masks)))
        masks[p.name] = torch.zeros(p.shape, dtype=torch.bool).scatter_(1, scores.argsort(1)[:, p.shape[1] // 2:], True)
    densities = neurons.neuron_densities(masks)
    for layer, (out, ins) in densities.items():
        assert torch.allclose(ins, torch.full_like(ins, 0.5))
        assert out.std() > 0  # the output columns vary
