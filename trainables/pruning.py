"""Which weights are prunable, global magnitude pruning, masks and their baselines (docs/method.md, IMP).

Prunable weights are found from the model's architecture:

- BERT: in each encoder layer the query, key, value, attention-output, intermediate
  and output weight matrices, plus the pooler's when the model has one.
- XLM-R: BERT's layout under `roberta.`, so BERT's rule (72 matrices in the base model,
  plus the pooler's where the model has one).
- T5 and mT5: in every encoder and every decoder block the attention matrices q, k, v
  and o (self-attention, and the decoder's cross-attention) and the feed-forward
  matrices wi (wi_0 and wi_1 where gated, as in mT5) and wo.
- Decoder-only LLMs, every linear map of the repeated blocks: the Llama family (Llama,
  Mistral, Qwen2, Qwen3) q, k, v, o and the gated MLP's gate, up, down; BLOOM its fused
  qkv, the attention output (o) and the MLP's up (dense_h_to_4h) and down (dense_4h_to_h).

Never pruned: embeddings (T5's shared embedding), biases, LayerNorms (RMSNorms, Qwen3's
q/k norms), T5's relative-attention bias, lm_head and any task head.

A model's prunable set falls into pruning units, each pruned to the level's sparsity on
its own: BERT has one ("all"); T5 has two, its encoder and its decoder, as the authors'
mT5 code prunes them (helpers/pruning_utils.py, pruning_mt5_model with glb=False).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

Masks = dict[str, torch.Tensor]  # parameter name -> bool tensor, True = kept

# model_type -> pattern on the Linear module's name inside the base model
# BERT: group 1 layer, 2 component (or 3: the pooler); T5: 1 stack, 2 layer, 3 component
T5_PATTERN = re.compile(r"^(encoder|decoder)\.block\.(\d+)\.layer\.\d+\.(SelfAttention\.[qkvo]|EncDecAttention\.[qkvo]"
                        r"|DenseReluDense\.wi|DenseReluDense\.wi_0|DenseReluDense\.wi_1|DenseReluDense\.wo)$")
ARCHITECTURES: dict[str, re.Pattern] = {
    "bert": re.compile(r"^encoder\.layer\.(\d+)\.(attention\.self\.query|attention\.self\.key|attention\.self\.value"
                       r"|attention\.output\.dense|intermediate\.dense|output\.dense)$|^(pooler\.dense)$"),
    "t5": T5_PATTERN,
    "mt5": T5_PATTERN,
}
ARCHITECTURES["xlm-roberta"] = ARCHITECTURES["bert"]
# Decoder-only families: named groups, layer and component (the block's index in the base model's stack)
LLAMA_PATTERN = re.compile(r"^layers\.(?P<layer>\d+)\.(?P<component>self_attn\.[qkvo]_proj|mlp\.gate_proj"
                           r"|mlp\.up_proj|mlp\.down_proj)$")
BLOOM_PATTERN = re.compile(r"^h\.(?P<layer>\d+)\.(?P<component>self_attention\.query_key_value"
                           r"|self_attention\.dense|mlp\.dense_h_to_4h|mlp\.dense_4h_to_h)$")
ARCHITECTURES.update({family: LLAMA_PATTERN for family in ("llama", "mistral", "qwen2", "qwen3")})
ARCHITECTURES["bloom"] = BLOOM_PATTERN
COMPONENTS = {
    "attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
    "attention.output.dense": "attention_output", "intermediate.dense": "intermediate",
    "output.dense": "output", "pooler.dense": "pooler",
    **{f"SelfAttention.{m}": f"self_{m}" for m in "qkvo"},
    **{f"EncDecAttention.{m}": f"cross_{m}" for m in "qkvo"},
    **{f"DenseReluDense.{m}": m for m in ("wi", "wi_0", "wi_1", "wo")},
    **{f"self_attn.{m}_proj": m for m in "qkvo"},
    **{f"mlp.{m}_proj": m for m in ("gate", "up", "down")},
    "self_attention.query_key_value": "qkv", "self_attention.dense": "o",
    "mlp.dense_h_to_4h": "up", "mlp.dense_4h_to_h": "down",
}
# the modules of a T5 model with an LM head that hold its backbone (it has no base-model attribute)
T5_BACKBONE = ("shared.", "encoder.", "decoder.")


@dataclass(frozen=True)
class Prunable:
    name: str  # full parameter name in the task model, e.g. "bert.encoder.layer.0.attention.self.query.weight"
    layer: int | None  # None for the pooler; a block's index within its stack for T5
    component: str  # query, key, value, attention_output, intermediate, output, pooler; T5: self_q, cross_k, wo...;
    #                 Llama family: q, k, v, o, gate, up, down; BLOOM: qkv, o, up, down
    shape: tuple[int, ...]
    stack: str | None = None  # T5: "encoder" or "decoder"; BERT: None
    unit: str = "all"  # the pruning unit it belongs to: "all" (BERT), the stack (T5)


def locate(stem: str, model_type: str) -> tuple[str | None, int | None, str] | None:
    """(stack, layer, component) of a module name relative to the base model, or None if not prunable."""
    m = ARCHITECTURES[model_type].match(stem)
    if not m:
        return None
    if ARCHITECTURES[model_type] is T5_PATTERN:
        return m.group(1), int(m.group(2)), COMPONENTS[m.group(3)]
    if "component" in m.re.groupindex:  # the decoder-only families
        return None, int(m.group("layer")), COMPONENTS[m.group("component")]
    return None, (int(m.group(1)) if m.group(1) is not None else None), COMPONENTS[m.group(2) or m.group(3)]


def locate_name(name: str) -> tuple[str | None, int | None, str]:
    """(stack, layer, component) of a full prunable parameter name of any known architecture, by its name alone."""
    stem = name.removesuffix(".weight")
    starts = [0] + [i + 1 for i, c in enumerate(stem) if c == "."]
    for start in starts:
        for model_type in ("bert", "t5", "llama", "bloom"):
            found = locate(stem[start:], model_type)
            if found:
                return found
    raise ValueError(f"{name!r} is not a prunable weight of a known architecture ({', '.join(ARCHITECTURES)})")


def backbone(model: nn.Module) -> tuple[nn.Module, str]:
    """(the base model, its parameter-name prefix in the task model, '' or 'bert.')."""
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, model) if prefix else model
    return base, (f"{prefix}." if base is not model else "")


def is_backbone(model: nn.Module, key: str) -> bool:
    """Whether a state-dict key of the task model belongs to the backbone (rewound to θ0) or to the head."""
    base, prefix = backbone(model)
    if base is model and getattr(model.config, "model_type", None) in ("t5", "mt5"):
        return key.startswith(T5_BACKBONE)  # T5 with an LM head: shared, encoder, decoder; lm_head is the head
    return key.startswith(prefix) if prefix else True


def prunable_parameters(model: nn.Module) -> list[Prunable]:
    """The prunable weight matrices of a model, in a fixed order (the module order)."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(f"no prunable-set rule for model type {model_type!r}; known: {', '.join(ARCHITECTURES)}")
    base, head = backbone(model)
    found = []
    for name, module in base.named_modules():
        where = locate(name, model_type)
        if where and isinstance(module, nn.Linear):
            stack, layer, component = where
            found.append(Prunable(f"{head}{name}.weight", layer, component, tuple(module.weight.shape), stack,
                                  stack or "all"))
    if not found:
        raise ValueError(f"found no prunable weights in a {model_type} model")
    return found


def prunable_count(params: list[Prunable]) -> int:
    return sum(int(torch.tensor(p.shape).prod()) for p in params)


def pruning_units(params: list[Prunable]) -> dict[str, list[str]]:
    """{unit: parameter names}: each unit is pruned to the level's sparsity on its own."""
    units: dict[str, list[str]] = {}
    for p in params:
        units.setdefault(p.unit, []).append(p.name)
    return units


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


def _prune_by_unit(scores: dict[str, torch.Tensor], masks: Masks, targets: dict[str, int],
                   units: dict[str, list[str]]) -> Masks:
    """Each unit's `targets[unit]` zeros in all (those already in `masks` count), by the lowest scores in it."""
    new: Masks = {}
    for unit, names in units.items():
        sub = {n: masks[n] for n in names}
        n_prune = targets[unit] - sum(int((~m).sum()) for m in sub.values())
        if n_prune < 0:
            raise ValueError(f"unit {unit!r} wants {targets[unit]} zeros, fewer than the mask already has")
        new.update(_global_order_prune(scores, sub, n_prune))
    return {n: new[n] for n in masks}  # the masks' own order


def _units_of(masks: Masks, units: dict[str, list[str]] | None) -> dict[str, list[str]]:
    if units is None:
        return {"all": list(masks)}
    if sorted(n for names in units.values() for n in names) != sorted(masks):
        raise ValueError("the pruning units do not cover the mask's parameters exactly")
    return units


def magnitude_prune(weights: dict[str, torch.Tensor], masks: Masks, level: int, fraction: float,
                    units: dict[str, list[str]] | None = None) -> Masks:
    """L1 magnitude pruning to level `level`, global within each pruning unit (`pruning_units`; None: one unit
    of every tensor): exactly pruned_target(level) of each unit's weights are zero.

    `masks` is the mask of level-1; the new mask is nested in it.
    """
    units = _units_of(masks, units)
    targets = {u: pruned_target(level, fraction, sum(masks[n].numel() for n in names)) for u, names in units.items()}
    return _prune_by_unit({n: weights[n].detach().abs().cpu() for n in masks}, masks, targets, units)


def random_masks(params: list[Prunable], sparsity: float, seed: int) -> Masks:
    """A uniformly random mask with exactly round(sparsity * n) zeros in each pruning unit of n weights."""
    generator = torch.Generator().manual_seed(seed)
    scores = {p.name: torch.rand(p.shape, generator=generator) for p in params}
    return _one_level(scores, params, sparsity)


def one_shot_masks(weights: dict[str, torch.Tensor], params: list[Prunable], sparsity: float) -> Masks:
    """One-shot magnitude pruning of `weights` (θ0, or trained weights) to `sparsity`, global in each unit."""
    return _one_level({p.name: weights[p.name].detach().abs().cpu() for p in params}, params, sparsity)


def _one_level(scores: dict[str, torch.Tensor], params: list[Prunable], sparsity: float) -> Masks:
    units = pruning_units(params)
    shapes = {p.name: p for p in params}
    targets = {u: pruned_target(1, sparsity, prunable_count([shapes[n] for n in names])) for u, names in units.items()}
    return _prune_by_unit(scores, dense_masks(params), targets, units)


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

