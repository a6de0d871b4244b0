"""Which weights are prunable, global magnitude pruning, masks and their baselines (docs/method.md, IMP).

Prunable weights are found from the model's architecture: in each encoder layer
the query, key, value, attention-output, intermediate and output weight matrices,
plus the pooler's when the model has one. Never pruned: embeddings, biases,
LayerNorms, task heads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

Masks = dict[str, torch.Tensor]  # parameter name -> bool tensor, True = kept

# model_type -> pattern on the Linear module's name inside the base model (group 1: layer, 2: component)
ARCHITECTURES: dict[str, re.Pattern] = {
    "bert": re.compile(r"^encoder\.layer\.(\d+)\.(attention\.self\.query|attention\.self\.key|attention\.self\.value"
                       r"|attention\.output\.dense|intermediate\.dense|output\.dense)$|^(pooler\.dense)$"),
}
COMPONENTS = {
    "attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
    "attention.output.dense": "attention_output", "intermediate.dense": "intermediate",
    "output.dense": "output", "pooler.dense": "pooler",
}


@dataclass(frozen=True)
class Prunable:
    name: str  # full parameter name in the task model, e.g. "bert.encoder.layer.0.attention.self.query.weight"
    layer: int | None  # None for the pooler
    component: str  # query, key, value, attention_output, intermediate, output, pooler
    shape: tuple[int, ...]


def prunable_parameters(model: nn.Module) -> list[Prunable]:
    """The prunable weight matrices of a model, in a fixed order (the module order)."""
    model_type = getattr(model.config, "model_type", None)
    pattern = ARCHITECTURES.get(model_type)
    if pattern is None:
        raise ValueError(f"no prunable-set rule for model type {model_type!r}; known: {', '.join(ARCHITECTURES)}")
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, model) if prefix else model
    head = f"{prefix}." if base is not model else ""
    found = []
    for name, module in base.named_modules():
        m = pattern.match(name)
        if m and isinstance(module, nn.Linear):
            layer = int(m.group(1)) if m.group(1) is not None else None
            component = COMPONENTS[m.group(2) or m.group(3)]
            found.append(Prunable(f"{head}{name}.weight", layer, component, tuple(module.weight.shape)))
    if not found:
        raise ValueError(f"found no prunable weights in a {model_type} model")
    return found


def prunable_count(params: list[Prunable]) -> int:
    return sum(int(torch.tensor(p.shape).prod()) for p in params)


def dense_masks(params: list[Prunable]) -> Masks:
    return {p.name: torch.ones(p.shape, dtype=torch.bool) for p in params}


def pruned_target(level: int, fraction: float, total: int) -> int:
    """How many of the ORIGINAL prunable weights are zero after `level` rounds: round(level * fraction * total)."""
    return int(round(level * fraction * total))


def _global_order_prune(scores: dict[str, torch.Tensor], masks: Masks, n_prune: int) -> Masks:
    """Remove the n_prune alive weights of smallest score, across all tensors together.

    Ties at the threshold are broken by position (tensor order, then flat index),
    so the result is exact and deterministic.
    """
    names = list(masks)
    alive = torch.cat([scores[n].flatten()[masks[n].flatten()].float() for n in names])
    if n_prune > alive.numel():
        raise ValueError(f"cannot prune {n_prune} of {alive.numel()} remaining weights")
    new = {n: masks[n].clone() for n in names}
    if n_prune == 0:
        return new
    threshold = torch.kthvalue(alive, n_prune).values
    below_total = int((alive < threshold).sum())
    ties_to_prune = n_prune - below_total
    for n in names:
        s, keep = scores[n].flatten().float(), new[n].view(-1)
        below = keep & (s < threshold)
        keep &= ~below
        if ties_to_prune > 0:
            tie_idx = torch.nonzero(keep & (s == threshold)).flatten()[:ties_to_prune]
            keep[tie_idx] = False
            ties_to_prune -= tie_idx.numel()
    return new


def magnitude_prune(weights: dict[str, torch.Tensor], masks: Masks, level: int, fraction: float) -> Masks:
    """Global L1 magnitude pruning to level `level`: exactly pruned_target(level) zeros in total.

    `masks` is the mask of level-1; the new mask is nested in it.
    """
    total = sum(m.numel() for m in masks.values())
    already = sum(int((~m).sum()) for m in masks.values())
    n_prune = pruned_target(level, fraction, total) - already
    if n_prune < 0:
        raise ValueError(f"level {level} wants fewer zeros than the mask already has")
    return _global_order_prune({n: weights[n].detach().abs().cpu() for n in masks}, masks, n_prune)


def random_masks(params: list[Prunable], sparsity: float, seed: int) -> Masks:
    """A uniformly random mask with exactly round(sparsity * total) zeros over the same prunable set."""
    generator = torch.Generator().manual_seed(seed)
    scores = {p.name: torch.rand(p.shape, generator=generator) for p in params}
    total = prunable_count(params)
    return _global_order_prune(scores, dense_masks(params), pruned_target(1, sparsity, total))


def one_shot_masks(weights: dict[str, torch.Tensor], params: list[Prunable], sparsity: float) -> Masks:
    """One-shot global magnitude pruning of `weights` (θ0, or trained weights) to `sparsity`."""
    total = prunable_count(params)
    scores = {p.name: weights[p.name].detach().abs().cpu() for p in params}
    return _global_order_prune(scores, dense_masks(params), pruned_target(1, sparsity, total))


def density(masks: Masks) -> float:
    kept = sum(int(m.sum()) for m in masks.values())
    return kept / sum(m.numel() for m in masks.values())


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Zero the pruned weights in place."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        p = params[name]
        p.mul_(mask.to(device=p.device, dtype=p.dtype))


class MaskEnforcer:
    """Keeps pruned weights at exactly zero during a round, at the cost of two fused multiplies a step.

    Bound once to a model's parameters: the masks are cast to each parameter's dtype and
    device up front, and every step multiplies all gradients (before clipping, so the norm
    counts live weights only) and then all weights with one `torch._foreach_mul_` each,
    instead of a Python loop of per-tensor casts.
    """

    def __init__(self, model: nn.Module, masks: Masks):
        params = dict(model.named_parameters())
        self.params = [params[name] for name in masks]
        self.masks = [m.to(device=p.device, dtype=p.dtype) for m, p in zip(masks.values(), self.params)]

    @torch.no_grad()
    def weights(self) -> None:
        if self.params:
            torch._foreach_mul_(self.params, self.masks)

    @torch.no_grad()
    def gradients(self) -> None:
        pairs = [(p.grad, m) for p, m in zip(self.params, self.masks) if p.grad is not None]
        if pairs:
            grads, masks = zip(*pairs)
            torch._foreach_mul_(list(grads), list(masks))

