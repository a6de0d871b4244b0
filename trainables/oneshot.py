"""One-shot pruning of a pretrained model from a calibration set, block by block: magnitude, Wanda, SparseGPT.

Discovery for large multilingual models without training: a language's sub-network is the mask that
Wanda or SparseGPT (layerwise.py) finds from a calibration set of that language's token sequences.
The model is pruned in place (SparseGPT also updates the weights it keeps) and the masks come back
keyed by the prunable parameters' names (pruning.prunable_parameters), so they are saved, overlapped
and transferred as IMP's are.

The walk, as in both methods' reference code: the calibration sequences run through the model up to its
first repeated block, whose inputs are kept. Then for each block in turn: its linear maps' input
statistics are gathered over every calibration token (dense block), each prunable matrix is pruned
from its own statistics, and the block is run again, pruned, to give the next block its inputs. So each
block is pruned knowing what the pruned blocks before it hand on. Magnitude needs no data.

Memory, where the model sits on the CPU and `device` is the accelerator: one block's weights are on the
device at a time. For a 7B Llama (hidden d = 4096, FFN f = 11008, 128 sequences of 2048 tokens, fp16):
  * a block's weights: 12 d² + 3 d f parameters, 0.40 GB;
  * the block's inputs and outputs: 2 × 128 × 2048 × d × 2 B = 4.3 GB, on the device with
    `offload=False`; with `offload=True` (the default) they stay on the CPU and one sequence at a time
    visits the device (2 × 16 MB);
  * Wanda: one float32 vector per linear map (its input width): under 0.1 MB;
  * SparseGPT: one float32 Hessian per linear map, in_features²: 6 × d² × 4 B (q, k, v, o, gate, up)
    + f² × 4 B (down) = 0.40 + 0.48 GB, plus one matrix's float32 copy and its inverse-Hessian factor
    during its own pruning (≤ 0.5 GB);
  * a forward of one sequence through one block (attention scores, the MLP's f-wide activations):
    under 0.5 GB.
So about 2 GB for SparseGPT and under 1 GB for Wanda with offload, about 6.5 GB without: a 7B model
prunes on one 24 GB GPU. The CPU holds the model (13.5 GB in fp16) and the offloaded activations.

Tokens that a batch's attention_mask marks as padding add nothing to the statistics.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from lnsub.trainables import layerwise, pruning
from lnsub.trainables.errors import LnsubError
from lnsub.trainables.layerwise import Structure

METHODS = ("magnitude", "wanda", "sparsegpt")


@dataclass(frozen=True)
class OneShotConfig:
    method: str = "wanda"
    sparsity: float = 0.5  # of every prunable matrix; with N:M it must be 1 - N/M
    structure: str = "unstructured"  # or "N:M", e.g. "2:4"
    block_size: int = 128  # SparseGPT's lazy column batch (the reference code's)
    damping: float = 0.01  # SparseGPT: λ = damping · mean diag(H) (the reference code's percdamp)

    def checked(self) -> Structure:
        """The N:M structure, once the configuration is known to be consistent (LnsubError otherwise)."""
        if self.method not in METHODS:
            raise LnsubError(f"unknown one-shot method {self.method!r}; known: {', '.join(METHODS)}")
        structure = Structure.parse(self.structure)
        if structure.nm and abs(self.sparsity - structure.sparsity()) > 1e-9:
            raise LnsubError(f"{self.structure} sparsity is {structure.sparsity():g}, not {self.sparsity:g}")
        if not 0 <= self.sparsity < 1:
            raise LnsubError(f"sparsity must be in [0, 1), not {self.sparsity}")
        return structure


class _Captured(Exception):
    """Raised by the first block's pre-hook: the rest of the model's forward is not needed."""


def _to(value, device):
    """Tensors, and tensors in tuples, lists and dicts, on `device`; anything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def find_blocks(model: nn.Module, params: list[pruning.Prunable]) -> dict[str, dict[str, str]]:
    """{block module name: {prunable parameter name: its Linear's name inside the block}}, in model order.

    A block is the element of a ModuleList that holds the weight (BERT's encoder.layer.<i>, Llama's
    layers.<i>, BLOOM's h.<i>). Calibration methods need every prunable weight inside such a block of
    one stack: BERT's pooler and T5's two stacks are refused.
    """
    blocks: dict[str, dict[str, str]] = {}
    for p in params:
        if p.layer is None or p.stack is not None:
            raise LnsubError(f"{p.name} is outside a single stack of repeated blocks: prune it by magnitude")
        parts = p.name.removesuffix(".weight").split(".")
        for i, part in enumerate(parts):
            if part == str(p.layer) and isinstance(model.get_submodule(".".join(parts[:i])), nn.ModuleList):
                blocks.setdefault(".".join(parts[:i + 1]), {})[p.name] = ".".join(parts[i + 1:])
                break
    return blocks


def capture_inputs(model: nn.Module, first: nn.Module, calibration: Sequence[dict], store: torch.device):
    """Per calibration batch: the first block's hidden-state input (kept on `store`), its other arguments, and
    the tokens that count (True where attention_mask is 1)."""
    hidden, calls = [], []

    def hook(module, args, kwargs):
        kwargs = dict(kwargs)
        states = args[0] if args else kwargs.pop("hidden_states")
        hidden.append(states.detach().to(store))
        calls.append((tuple(args[1:]), kwargs))
        raise _Captured

    home = model.get_input_embeddings().weight.device
    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in calibration:
            with contextlib.suppress(_Captured):
                model(**_to(batch, home))
    finally:
        handle.remove()
    keeps = [batch["attention_mask"].bool() if "attention_mask" in batch else
             torch.ones(batch["input_ids"].shape, dtype=torch.bool) for batch in calibration]
    return hidden, calls, keeps


def _run(block: nn.Module, states: torch.Tensor, call, device) -> torch.Tensor:
    args, kwargs = _to(call, device)
    out = block(states.to(device), *args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


class _Statistics:
    """Σ x_j² per input feature (Wanda) and, where asked, H = Σ x xᵀ (SparseGPT), over the counted tokens."""

    def __init__(self, features: int, hessian: bool, weight: torch.Tensor):
        dtype = torch.promote_types(weight.dtype, torch.float32)  # float32, or float64 for a float64 model
        self.squares = torch.zeros(features, dtype=dtype, device=weight.device)
        self.hessian = torch.zeros(features, features, dtype=dtype, device=weight.device) if hessian else None

    def add(self, x: torch.Tensor) -> None:
        x = x.to(self.squares.dtype)
        self.squares += x.pow(2).sum(0)
        if self.hessian is not None:
            self.hessian += x.T @ x


def _counted(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The rows of a Linear's input (batch, tokens, features), or its flattened form, at the counted tokens."""
    keep = keep.to(x.device)
    return x[keep] if x.shape[:-1] == keep.shape else x.reshape(-1, x.shape[-1])[keep.flatten()]


def _gather(block: nn.Module, members: dict[str, str], hidden, calls, keeps, hessian: bool, device):
    """The input statistics of each prunable Linear of the (dense) block over all calibration batches."""
    stats, current, handles = {}, [None], []
    for name, inner in members.items():
        module = block.get_submodule(inner)
        stats[name] = _Statistics(module.in_features, hessian, module.weight)
        handles.append(module.register_forward_hook(
            lambda mod, inputs, out, s=stats[name]: s.add(_counted(inputs[0], current[0]))))
    try:
        for states, call, keep in zip(hidden, calls, keeps):
            current[0] = keep
            _run(block, states, call, device)
    finally:
        for handle in handles:
            handle.remove()
    return stats


@torch.no_grad()
def _prune_block(block: nn.Module, members: dict[str, str], stats: dict[str, _Statistics], config: OneShotConfig,
                 structure: Structure) -> pruning.Masks:
    masks = {}
    for name, inner in members.items():
        weight = block.get_submodule(inner).weight
        if config.method == "wanda":
            mask = layerwise.wanda_mask(weight, stats[name].squares.sqrt(), config.sparsity, structure)
            weight.mul_(mask.to(weight.dtype))
        else:
            new, mask = layerwise.sparsegpt(weight, stats[name].hessian, config.sparsity, structure,
                                            config.block_size, config.damping)
            weight.copy_(new)
        masks[name] = mask.cpu()
        stats[name] = None  # free the Hessian before the next matrix's
    return masks


@torch.no_grad()
def magnitude_one_shot(model: nn.Module, config: OneShotConfig) -> pruning.Masks:
    """Layer-wise magnitude pruning of every prunable matrix (no data): the smallest |W| of each matrix."""
    structure = config.checked()
    params, masks = pruning.prunable_parameters(model), {}
    for p in params:
        weight = model.get_parameter(p.name)
        mask = layerwise.magnitude_mask(weight, config.sparsity, structure)
        weight.mul_(mask.to(weight.dtype))
        masks[p.name] = mask.cpu()
    return masks


@torch.no_grad()
def prune_one_shot(model: nn.Module, calibration: Sequence[dict], config: OneShotConfig,
                   device: torch.device | str | None = None, offload: bool = True) -> pruning.Masks:
    """Prune `model` in place, block by block (see the module's docstring); return its masks, True = kept.

    `calibration`: model inputs (input_ids, optional attention_mask), one dict per batch, e.g. from
    `calibration_windows`. `device`: where each block is pruned (None: where it is).
    """
    structure = config.checked()
    if config.method == "magnitude":
        return magnitude_one_shot(model, config)
    params = pruning.prunable_parameters(model)
    blocks = find_blocks(model, params)
    training, use_cache = model.training, getattr(model.config, "use_cache", None)
    model.eval()
    model.config.use_cache = False  # no key-value cache among the captured arguments
    try:
        first = model.get_submodule(next(iter(blocks)))
        store = torch.device("cpu") if offload else torch.device(device or next(first.parameters()).device)
        hidden, calls, keeps = capture_inputs(model, first, calibration, store)
        masks: pruning.Masks = {}
        for name, members in blocks.items():
            block = model.get_submodule(name)
            home = next(block.parameters()).device
            block.to(device or home)
            stats = _gather(block, members, hidden, calls, keeps, config.method == "sparsegpt", device or home)
            masks.update(_prune_block(block, members, stats, config, structure))
            hidden = [_run(block, states, call, device or home).to(store) for states, call in zip(hidden, calls)]
            block.to(home)
    finally:
        model.train(training)
        model.config.use_cache = use_cache
    return {p.name: masks[p.name] for p in params}


def calibration_windows(tokenizer, texts: Sequence[str], samples: int, length: int, seed: int = 0,
                        bos: int | None = None, eos: int | None = None) -> list[dict]:
    """`samples` windows of `length` tokens drawn at random from the texts joined end to end, one batch each.

    Each text is tokenised alone and framed by `bos`/`eos` (default: the tokenizer's, where it has them),
    as both methods' reference code draws 2048-token windows from random C4 documents; here from one
    language's texts, which makes the calibration set, and so the mask, that language's.
    """
    bos = tokenizer.bos_token_id if bos is None else bos
    eos = tokenizer.eos_token_id if eos is None else eos
    stream = []
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        stream += ([bos] if bos is not None else []) + ids + ([eos] if eos is not None else [])
    if len(stream) < length:
        raise LnsubError(f"the calibration texts hold {len(stream)} tokens, fewer than one window of {length}")
    rng = random.Random(f"calibration|{seed}")
    starts = [rng.randrange(len(stream) - length + 1) for _ in range(samples)]
    return [{"input_ids": torch.tensor([stream[s:s + length]])} for s in starts]
