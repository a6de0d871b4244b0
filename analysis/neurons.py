"""Language-specific neurons (LAPE, Tang et al., ACL 2024) and how they meet the languages' masks.

A neuron is one unit of a block's feed-forward layer: row j of its input matrices (gate and up in the
Llama family, dense_h_to_4h in BLOOM, intermediate.dense in BERT and XLM-R) and column j of its output
matrix (down, dense_4h_to_h, output.dense).

Activation probability (Tang et al. §2): p(l, j, L) = the fraction of language L's tokens for which the
activation function's output at neuron j of layer l is above zero: act(gate) for gated MLPs (SiLU in
Llama and Qwen), GELU of the up projection in BLOOM, BERT and XLM-R. Padding tokens do not count.

Language activation probability entropy (LAPE), following the authors' identify.py exactly:
  * p is normalised across languages per neuron, p̂ = p / Σ_L p, and H = −Σ_L p̂ log p̂ (natural log,
    0 · log 0 = 0; a neuron that never fires has p̂ = 0 and H = 0 before the filter below);
  * filter: τ = the k-th smallest of all p(l, j, L) (every layer, neuron and language together), k =
    round(0.95 · count), the 95th percentile. A neuron with no language above τ is set aside (H = +∞);
  * the language-specific neurons are the round(1% · neurons) of lowest H (ties: the lower layer, then
    the lower index, first);
  * each is specific to every language L where p(l, j, L) > τ' (τ' the same percentile, 0.95, as the
    authors' activation_bar_ratio): a neuron may be specific to several languages.
Language-agnostic neurons (lnsub's complement, not the paper's): p > τ' in every language: the neurons
every language needs.

Meeting masks. A neuron is kept by a mask when the density of its output column (the weights through
which it writes to the residual stream) exceeds 0.5. Why the output column: pruned to zero, it silences
the neuron whatever its inputs; and it is the side that varies under every method: Wanda keeps every
output row of gate and up at exactly the sparsity, and 2:4 does the same for every row, so input-row
densities are constant there and say nothing. The input rows' mean density is reported beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn

from lnsub.trainables import pruning
from lnsub.trainables.oneshot import find_blocks

# where a block's feed-forward activation is computed, and which prunable components a neuron's rows and column
# are in, per architecture (pruning.ARCHITECTURES' model types)
LLAMA_FFN = ("mlp.act_fn", ("gate", "up"), "down")
FFN = {"bloom": ("mlp.gelu_impl", ("up",), "down"),
       "bert": ("intermediate.intermediate_act_fn", ("intermediate",), "output"),
       "xlm-roberta": ("intermediate.intermediate_act_fn", ("intermediate",), "output"),
       **{family: LLAMA_FFN for family in ("llama", "mistral", "qwen2", "qwen3")}}
NEURON_INPUTS = {"gate", "up", "intermediate"}
NEURON_OUTPUTS = {"down", "output"}
TOP_RATE, FILTER_RATE, BAR_RATE = 0.01, 0.95, 0.95  # Tang et al.'s identify.py


@dataclass
class ActivationCounts:
    """How often each FFN neuron fired, per language: over_zero[l, j, L] of tokens[L] tokens."""

    languages: list[str]
    layers: list[int]
    over_zero: torch.Tensor  # (layers, neurons, languages), int64
    tokens: torch.Tensor  # (languages,), int64

    @property
    def probabilities(self) -> torch.Tensor:
        return self.over_zero.double() / self.tokens.double()


def _activation_modules(model: nn.Module) -> dict[int, nn.Module]:
    """{layer: the module whose output is that block's FFN activation}."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in FFN:
        raise ValueError(f"no feed-forward rule for model type {model_type!r}; known: {', '.join(FFN)}")
    params = [p for p in pruning.prunable_parameters(model) if p.layer is not None]
    layer_of = {p.name: p.layer for p in params}
    return {layer_of[next(iter(members))]: model.get_submodule(f"{block}.{FFN[model_type][0]}")
            for block, members in find_blocks(model, params).items()}


@torch.no_grad()
def activation_counts(model: nn.Module, batches: Mapping[str, Sequence[dict]]) -> ActivationCounts:
    """Count, per language, the tokens on which each FFN neuron's activation is above zero.

    `batches`: {language: model inputs (input_ids, optional attention_mask), one dict per batch}.
    """
    modules = _activation_modules(model)
    layers = sorted(modules)
    device = next(model.parameters()).device
    counts: dict[int, torch.Tensor] = {}
    current = [None]

    def hook(layer):
        def count(module, inputs, out):
            fired = (out > 0)[current[0].to(out.device)].sum(0).cpu()
            counts[layer] = counts.get(layer, 0) + fired
        return count

    handles = [modules[layer].register_forward_hook(hook(layer)) for layer in layers]
    was_training = model.training
    model.eval()
    per_language, tokens = [], []
    try:
        for language, language_batches in batches.items():
            counts.clear()
            n = 0
            for batch in language_batches:
                keep = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).bool()
                current[0] = keep
                model(**{k: v.to(device) for k, v in batch.items()})
                n += int(keep.sum())
            per_language.append(torch.stack([counts[layer] for layer in layers]))
            tokens.append(n)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return ActivationCounts(list(batches), layers, torch.stack(per_language, dim=-1).long(), torch.tensor(tokens))


@dataclass
class LanguageNeurons:
    """LAPE's result: entropy per neuron, the thresholds, and the specific neurons per language."""

    languages: list[str]
    layers: list[int]
    entropy: torch.Tensor  # (layers, neurons), +inf where filtered out
    filter_threshold: float  # τ
    activation_bar: float  # τ'
    specific: torch.Tensor  # (layers, neurons, languages) bool: specific to that language
    agnostic: torch.Tensor  # (layers, neurons) bool: p > τ' in every language

    def sizes(self) -> dict[str, int]:
        return {lang: int(self.specific[:, :, i].sum()) for i, lang in enumerate(self.languages)}

    def per_language(self) -> dict[str, dict[int, list[int]]]:
        """{language: {layer: neuron indices}}, the shape of the authors' activation_mask files."""
        return {lang: {layer: torch.nonzero(self.specific[i, :, a]).flatten().tolist()
                       for i, layer in enumerate(self.layers)} for a, lang in enumerate(self.languages)}

    def selected(self) -> torch.Tensor:
        """(layers, neurons) bool: specific to at least one language."""
        return self.specific.any(-1)


def _kth(values: torch.Tensor, rate: float) -> float:
    """The k-th smallest value, k = round(rate · count) (torch.kthvalue's 1-based k, as identify.py)."""
    flat = values.flatten()
    return float(flat.kthvalue(max(1, round(flat.numel() * rate))).values)


def lape_entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """−Σ_L p̂ log p̂ over the last axis, p̂ = p / Σ_L p; a neuron with Σ p = 0 has entropy 0."""
    total = probabilities.sum(-1, keepdim=True)
    normed = torch.where(total > 0, probabilities / total.clamp(min=1e-300), torch.zeros_like(probabilities))
    logs = torch.where(normed > 0, normed.clamp(min=1e-300).log(), torch.zeros_like(normed))
    return -(normed * logs).sum(-1)


def language_specific_neurons(counts: ActivationCounts, top_rate: float = TOP_RATE,
                              filter_rate: float = FILTER_RATE, bar_rate: float = BAR_RATE) -> LanguageNeurons:
    """LAPE's language-specific neurons (module docstring), with Tang et al.'s thresholds by default."""
    probs = counts.probabilities
    entropy = lape_entropy(probs)
    tau = _kth(probs, filter_rate)
    entropy[(probs > tau).sum(-1) == 0] = math.inf
    layers, neurons = entropy.shape
    order = torch.sort(entropy.flatten(), stable=True).indices[:round(layers * neurons * top_rate)]
    chosen = torch.zeros(layers * neurons, dtype=torch.bool)
    chosen[order] = True
    bar = _kth(probs, bar_rate)
    specific = chosen.view(layers, neurons, 1) & (probs > bar)
    return LanguageNeurons(counts.languages, counts.layers, entropy, tau, bar, specific, (probs > bar).all(-1))


def neuron_densities(masks: Mapping[str, torch.Tensor]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """{layer: (output-column density, mean input-row density)} per FFN neuron, from a mask (True = kept)."""
    out: dict[int, torch.Tensor] = {}
    ins: dict[int, list[torch.Tensor]] = {}
    for name, mask in masks.items():
        _, layer, component = pruning.locate_name(name)
        mask = torch.as_tensor(mask).bool()
        if component in NEURON_OUTPUTS:
            out[layer] = mask.double().mean(0)
        elif component in NEURON_INPUTS:
            ins.setdefault(layer, []).append(mask.double().mean(1))
    return {layer: (out[layer], torch.stack(ins[layer]).mean(0)) for layer in sorted(out)}


def kept_neurons(masks: Mapping[str, torch.Tensor], layers: Sequence[int], threshold: float = 0.5) -> torch.Tensor:
    """(layers, neurons) bool: the neurons whose output column keeps more than `threshold` of its weights."""
    densities = neuron_densities(masks)
    return torch.stack([densities[layer][0] > threshold for layer in layers])


@dataclass
class NeuronsMeetMasks:
    """Rows: the language A of the specific neurons; columns: the language B whose mask is read."""

    languages: list[str]
    mask_languages: list[str]
    kept_share: list[list[float | None]]  # share of A's specific neurons that B's mask keeps (None: A has none)
    out_density: list[list[float | None]]  # mean output-column density of A's specific neurons under B's mask
    base_rate: list[float]  # share of all FFN neurons that B's mask keeps: the chance level of a row
    neurons: int  # FFN neurons of the model, all layers
    agnostic: int  # neurons every language needs (p > τ' in every language)
    kept_by_every_mask: int
    agnostic_kept_by_every_mask: int

    @property
    def every_mask_rate(self) -> float:
        """Share of all FFN neurons that every mask keeps: the chance level of `agnostic_recall`."""
        return self.kept_by_every_mask / self.neurons

    @property
    def agnostic_recall(self) -> float | None:
        """Share of the language-agnostic neurons that every mask keeps (compare with `every_mask_rate`)."""
        return self.agnostic_kept_by_every_mask / self.agnostic if self.agnostic else None


def neurons_meet_masks(neurons: LanguageNeurons, masks: Mapping[str, Mapping[str, torch.Tensor]],
                       threshold: float = 0.5) -> NeuronsMeetMasks:
    """For each language A and each language B's mask: how many of A's specific neurons B's mask keeps."""
    kept = {b: kept_neurons(m, neurons.layers, threshold) for b, m in masks.items()}
    density = {b: torch.stack([neuron_densities(m)[layer][0] for layer in neurons.layers]) for b, m in masks.items()}
    shares, densities = [], []
    for a in range(len(neurons.languages)):
        own = neurons.specific[:, :, a]
        n = int(own.sum())
        shares.append([int((own & kept[b]).sum()) / n if n else None for b in masks])
        densities.append([float(density[b][own].mean()) if n else None for b in masks])
    every = torch.stack(list(kept.values())).all(0)
    return NeuronsMeetMasks(
        neurons.languages, list(masks), shares, densities, [float(k.double().mean()) for k in kept.values()],
        every.numel(), int(neurons.agnostic.sum()), int(every.sum()), int((neurons.agnostic & every).sum()))
