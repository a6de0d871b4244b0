"""run_cell: iterative magnitude pruning with rewinding to the pretrained weights (METHOD.md).

Level 0 trains the dense model. After training level k, the trained weights are
pruned globally by magnitude so that (k+1) x fraction of the ORIGINAL prunable
weights are zero; that mask is level k+1's. Level k+1 starts from θ0 ⊙ mask for
every encoder tensor (embeddings, LayerNorms and biases rewound too) and from
level k's trained task head, which carries over. Callable without Ray.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from trainables import pruning
from trainables.atomic import write_json
from trainables.masks import digest as mask_digest
from trainables.masks import save_masks
from trainables.spec import TESTBED_MODEL, CellSpec
from trainables.store import CellStore
from trainables.testbed.languages import is_synthetic
from trainables.train import RoundData, eval_loader, train_round

log = logging.getLogger(__name__)


@dataclass
class CellResult:
    cell_id: str
    levels: list[dict]  # metrics per level, in order
    steps_trained: int  # optimizer steps this call performed (0 for a finished cell)
    root: Path
    seconds: float = 0.0


@dataclass
class Hooks:
    """Optional callbacks, on the main process: tests observe, the orchestrator reports."""

    level_start: Callable[[int, torch.nn.Module], None] | None = None  # model rewound, before training
    level_trained: Callable[[int, torch.nn.Module], None] | None = None  # after training, before pruning
    level_done: Callable[[int, dict], None] | None = None
    after_step: Callable[[int, int], None] | None = None  # (level, step)


def model_path(spec: CellSpec) -> str:
    """The folder or hub id that `from_pretrained` gets for this cell."""
    if spec.model == TESTBED_MODEL:
        from trainables.testbed.tinybert import ensure_tiny_model

        return str(ensure_tiny_model(spec.testbed_config()))
    return spec.model


def data_root(spec: CellSpec) -> str | None:
    if spec.data_dir is not None:
        return spec.data_dir
    if is_synthetic(spec.language):
        from trainables.testbed.generate import ensure_testbed

        return str(ensure_testbed(spec.testbed_config().testbed) / "data")
    return None


def load_round_data(spec: CellSpec, tokenizer, accelerator) -> RoundData:
    from trainables.tasks import get_task

    task = get_task(spec.task)
    with accelerator.main_process_first():
        ds = task.load(spec.language, data_dir=data_root(spec))
        enc = task.preprocess(ds, tokenizer, spec.max_length, seed=spec.seed)
    train, valid = enc["train"], enc["validation"]
    if spec.train_size is not None and spec.train_size < len(train):
        train = train.select(range(spec.train_size))
    if spec.valid_size is not None and spec.valid_size < len(valid):
        valid = valid.select(range(spec.valid_size))
    return RoundData(train, valid, task.collator(tokenizer, train=True), task.collator(tokenizer, train=False))


def load_task(spec: CellSpec, accelerator):
    """(task, round data, the pretrained model with a fresh head) for a cell's spec.

    The head (and a missing pooler) are drawn after set_seed(spec.seed), so every
    run of the same spec, an IMP cell or a transfer job, starts from the same draw.
    """
    from transformers import set_seed

    from trainables.tasks import get_task

    task = get_task(spec.task)
    path = model_path(spec)
    data = load_round_data(spec, task.load_tokenizer(path), accelerator)
    set_seed(spec.seed)
    return task, data, task.load_model(path)


def split_state(model) -> tuple[dict, dict, set[str]]:
    """(encoder tensors θ, head tensors, head names tied to encoder tensors) of a task model."""
    prefix = model.base_model_prefix + "."
    state = model.state_dict()
    base = {k: v.detach().clone() for k, v in state.items() if k.startswith(prefix)}
    base_ptrs = {v.data_ptr() for k, v in state.items() if k.startswith(prefix)}
    tied = {k for k, v in state.items() if not k.startswith(prefix) and v.data_ptr() in base_ptrs}
    head = {k: v.detach().clone() for k, v in state.items() if not k.startswith(prefix) and k not in tied}
    return base, head, tied


def rewind(model, theta0: dict, head: dict, tied: set[str], masks: pruning.Masks) -> None:
    """Set the encoder to θ0 ⊙ mask and the head to `head` (tied weights follow the encoder)."""
    missing, unexpected = model.load_state_dict({**theta0, **head}, strict=False)
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"rewind mismatch: missing {sorted(set(missing) - tied)}, unexpected {unexpected}")
    pruning.apply_masks(model, masks)


def _broadcast_masks(masks: pruning.Masks, accelerator) -> pruning.Masks:
    """Rank 0's mask, on every rank, bit for bit."""
    if accelerator.num_processes == 1:
        return masks
    from accelerate.utils import broadcast

    names = list(masks)
    flat = torch.cat([masks[n].flatten() for n in names]).to(torch.uint8).to(accelerator.device)
    flat = broadcast(flat, from_process=0).cpu().bool()
    out, offset = {}, 0
    for n in names:
        size = masks[n].numel()
        out[n] = flat[offset:offset + size].view(masks[n].shape).clone()
        offset += size
    return out


def _rank_digests(masks: pruning.Masks, accelerator) -> list[str]:
    """Every rank's SHA-256 of the mask it will train with; they must all agree."""
    digest = mask_digest(masks)
    if accelerator.num_processes == 1:
        return [digest]
    from accelerate.utils import gather_object

    digests = gather_object([digest])
    if len(set(digests)) != 1:
        raise RuntimeError(f"ranks disagree on the pruned mask: {digests}")
    return digests


def write_baselines(store: CellStore, spec: CellSpec, params, trained: dict, theta0: dict) -> None:
    """One-shot magnitude masks from the round-0 trained weights (only known then), and from θ0."""
    for level in range(1, spec.levels + 1):
        sparsity = spec.sparsities[level]
        for kind, weights in (("oneshot_trained", trained), ("oneshot_pretrained", theta0)):
            folder = store.baseline_dir(kind, sparsity)
            if not (folder / "mask.json").exists():
                save_masks(folder, pruning.one_shot_masks(weights, params, sparsity), kind=kind, sparsity=sparsity)


def make_accelerator(spec: CellSpec):
    """Accelerate for this process; under Ray Train it joins the workers' process group.

    On a machine without a GPU, Accelerate treats a multi-process launch (WORLD_SIZE > 1)
    as distributed only when told to use the CPU.
    """
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=spec.mixed_precision,
                       gradient_accumulation_steps=spec.grad_accum)


def run_cell(spec: CellSpec, storage: str | Path, accelerator=None, *, checkpoint_every: int = 100,
             hooks: Hooks | None = None) -> CellResult:
    """Run (or finish) the IMP job of one cell; a finished cell returns at once."""
    started = time.perf_counter()
    hooks = hooks or Hooks()
    store = CellStore(storage, spec)
    if store.finished():
        return CellResult(spec.id, store.all_metrics(), 0, store.root)

    accelerator = accelerator or make_accelerator(spec)
    main = accelerator.is_main_process
    if main:
        store.write_spec()
    task, data, model = load_task(spec, accelerator)
    theta0, head0, tied = split_state(model)
    params = pruning.prunable_parameters(model)
    first = store.first_unfinished_level() if main else 0
    first = _broadcast_int(first, accelerator)
    steps_trained = 0
    for level in range(first, spec.levels + 1):
        level_started = time.perf_counter()
        if level == 0:
            masks = pruning.dense_masks(params)
            if main:
                store.save_mask(0, masks, sparsity=0.0)
            head = head0
        else:
            masks, head = store.load_mask(level), store.load_head(level - 1)
        rewind(model, theta0, head, tied, masks)
        if main and hooks.level_start:
            hooks.level_start(level, model)
        accelerator.wait_for_everyone()
        after = (lambda s, lv=level: hooks.after_step(lv, s)) if hooks.after_step else None
        stats = train_round(model, masks, data, spec, level, accelerator, store.checkpoint_dir(level),
                            checkpoint_every, after)
        steps_trained += stats["steps_trained"]
        trained_model = stats.pop("model")
        metrics = task.evaluate(trained_model, eval_loader(data, spec, accelerator), accelerator)
        model = accelerator.unwrap_model(trained_model)
        if main and hooks.level_trained:
            hooks.level_trained(level, model)
        trained, head_after, _ = split_state(model)
        digests = None
        if level < spec.levels:
            new_masks = pruning.magnitude_prune(trained, masks, level + 1, spec.prune_fraction) if main else masks
            new_masks = _broadcast_masks(new_masks, accelerator)
            digests = _rank_digests(new_masks, accelerator)
        if main:
            if level == 0:
                write_baselines(store, spec, params, trained, theta0)
            if level < spec.levels:
                store.save_mask(level + 1, new_masks, sparsity=spec.sparsities[level + 1])
            store.save_head(level, head_after)
            record = {"level": level, "sparsity": spec.sparsities[level], "density": pruning.density(masks),
                      "metric": task.metric, "score": metrics[task.metric], **metrics,
                      **{k: v for k, v in stats.items() if k != "resumed_from"},
                      "resumed_from_step": stats["resumed_from"], "workers": accelerator.num_processes,
                      "next_mask_rank_digests": digests,
                      "level_seconds": time.perf_counter() - level_started}
            store.save_metrics(level, record)
            store.mark_level_done(level)
            store.clear_checkpoints(level)
            log.info("cell %s level %d (sparsity %.0f%%): %s %.4f", spec.id, level, 100 * record["sparsity"],
                     task.metric, record["score"])
            if hooks.level_done:
                hooks.level_done(level, record)
        accelerator.free_memory()
        accelerator.wait_for_everyone()
    seconds = time.perf_counter() - started
    if main:
        # this call's wall time, set-up included: the cell's compute as the orchestrator sees it
        write_json(store.root / "timing.json", {"seconds": seconds, "steps_trained": steps_trained,
                                                "workers": accelerator.num_processes})
        store.mark_finished()
    accelerator.wait_for_everyone()
    return CellResult(spec.id, store.all_metrics(), steps_trained, store.root, seconds)


def _broadcast_int(value: int, accelerator) -> int:
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast

    return int(broadcast(torch.tensor([value], device=accelerator.device), from_process=0).item())
