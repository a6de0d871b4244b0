"""run_cell: iterative magnitude pruning with rewinding to the pretrained weights (docs/method.md).

Level 0 trains the dense model. After training level k, the trained weights are
pruned globally by magnitude so that (k+1) x fraction of the ORIGINAL prunable
weights are zero; that mask is level k+1's. Level k+1 starts from θ0 ⊙ mask for
every encoder tensor (embeddings, LayerNorms and biases rewound too) and from
level k's trained task head, which carries over. Callable without Ray.

A level is a guarded stage (open_lth): one whose DONE marker stands is not run
again. Otherwise it runs rewind, train, evaluate, prune, commit, and leaves a
LevelRecord (metrics.json) behind.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from lnsub.trainables import metrics as M
from lnsub.trainables import memory, pruning
from lnsub.trainables.checkpointing import DEFAULT_CHECKPOINT_EVERY
from lnsub.trainables.settling import Settling
from lnsub.trainables.loading import load_task, make_accelerator
from lnsub.trainables.masks import digest as mask_digest
from lnsub.trainables.oneshot_cell import run_oneshot_cell
from lnsub.trainables.spec import CellSpec
from lnsub.trainables.storage import Storage
from lnsub.trainables.storage.layout import NEVER_PULLED
from lnsub.trainables.store import ONESHOT_PRETRAINED, ONESHOT_TRAINED, CellStore
from lnsub.trainables.tasks import Task
from lnsub.trainables.train import RoundData, RoundStats, eval_loader, train_round

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
    level_done: Callable[[int, dict], None] | None = None  # (level, LevelRecord.to_dict())
    after_step: Callable[[int, int], None] | None = None  # (level, step)


@dataclass(frozen=True)
class LevelRecord:
    """What one level leaves behind: metrics.json, flat (see to_dict and trainables.metrics)."""

    level: int
    sparsity: float  # of the mask the level trained with
    density: float
    metric: str  # the task's validation metric ...
    score: float  # ... and its value
    task_metrics: dict[str, float]  # everything the task's evaluation reported
    stats: RoundStats
    workers: int
    next_mask_rank_digests: list[str] | None  # None at the last level: no next mask
    level_seconds: float = 0.0

    def to_dict(self) -> dict:
        s = self.stats
        return {M.LEVEL: self.level, M.SPARSITY: self.sparsity, M.DENSITY: self.density, M.METRIC: self.metric,
                M.SCORE: self.score, **self.task_metrics,
                M.STEPS: s.steps, M.STEPS_TRAINED: s.steps_trained, M.TRAIN_LOSS: s.train_loss,
                M.TRAIN_SECONDS: s.train_seconds, M.SECONDS_PER_STEP: s.seconds_per_step,
                M.RESUMED_FROM_STEP: s.resumed_from, M.WORKERS: self.workers,
                M.NEXT_MASK_RANK_DIGESTS: self.next_mask_rank_digests, M.LEVEL_SECONDS: self.level_seconds}


@dataclass
class Cell:
    """What every level of one cell shares; `model` is the module the next level rewinds."""

    spec: CellSpec
    store: CellStore
    accelerator: object
    task: Task
    data: RoundData
    model: torch.nn.Module
    theta0: dict  # the pretrained encoder tensors
    head0: dict  # the fresh task head level 0 starts from
    tied: set[str]  # head names tied to encoder tensors (they follow the encoder)
    params: list[pruning.Prunable]
    hooks: Hooks = field(default_factory=Hooks)
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


def split_state(model) -> tuple[dict, dict, set[str]]:
    """(backbone tensors θ, head tensors, head names tied to backbone tensors) of a task model.

    The backbone is the base model (BERT's `bert.`; for T5 with an LM head its shared embedding,
    encoder and decoder), the head the rest (a classifier, MLM's `cls.`, T5's `lm_head`).
    """
    state = model.state_dict()
    in_base = {k: pruning.is_backbone(model, k) for k in state}
    base = {k: v.detach().clone() for k, v in state.items() if in_base[k]}
    base_ptrs = {v.data_ptr() for k, v in state.items() if in_base[k]}
    tied = {k for k, v in state.items() if not in_base[k] and v.data_ptr() in base_ptrs}
    head = {k: v.detach().clone() for k, v in state.items() if not in_base[k] and k not in tied}
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
    from accelerate.utils import broadcast  # heavy: only a multi-process run gets here

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
    from accelerate.utils import gather_object  # heavy: only a multi-process run gets here

    digests = gather_object([digest])
    if len(set(digests)) != 1:
        raise RuntimeError(f"ranks disagree on the pruned mask: {digests}")
    return digests


def write_baselines(store: CellStore, spec: CellSpec, params, trained: dict, theta0: dict) -> None:
    """One-shot magnitude masks from the round-0 trained weights (only known then), and from θ0."""
    for level in range(1, spec.levels + 1):
        sparsity = spec.sparsities[level]
        for kind, weights in ((ONESHOT_TRAINED, trained), (ONESHOT_PRETRAINED, theta0)):
            if not store.has_baseline(kind, sparsity):
                store.save_baseline(kind, sparsity, pruning.one_shot_masks(weights, params, sparsity))


# --- the cell: a short loop over guarded levels ------------------------------------------------

def run_cell(spec: CellSpec, storage: Storage | str | Path, accelerator=None, *,
             checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY, hooks: Hooks | None = None) -> CellResult:
    """Run (or finish) the IMP job (or the one-shot discovery) of one cell in a storage (a Storage, a folder or a store's URI); a finished cell
    returns at once."""
    started = time.perf_counter()
    store = CellStore(Storage.open(storage), spec)
    store.fresh()  # on an object store: this cell as the store holds it, checkpoints included
    if store.finished():
        return CellResult(spec.id, store.all_metrics(), 0, store.root)
    if spec.method != "imp":  # one-shot discovery: nothing to train (trainables.oneshot_cell)
        seconds = run_oneshot_cell(spec, store)
        result = CellResult(spec.id, store.all_metrics(), 0, store.root, seconds)
        store.drop()
        memory.release()
        return result
    memory.reset_peak()  # this cell's peak, not the reused process's largest cell so far
    cell = open_cell(spec, store, accelerator or make_accelerator(spec), hooks or Hooks(), checkpoint_every)
    # finished levels are checked first: one whose outputs are damaged loses its DONE and runs again
    first = _broadcast_int(store.first_unfinished_level() if cell.main else 0, cell.accelerator)
    steps_trained = 0
    with memory.long_lived():
        for level in range(first, spec.levels + 1):
            record = run_level(cell, level)
            steps_trained += record.stats.steps_trained if record else 0
    seconds = time.perf_counter() - started
    if cell.main:
        # this call's wall time, set-up included: the cell's compute as the orchestrator sees it
        store.write_timing(seconds, steps_trained, cell.accelerator.num_processes, memory.peak_rss_bytes())
        store.mark_finished()
    cell.accelerator.wait_for_everyone()
    result = CellResult(spec.id, store.all_metrics(), steps_trained, store.root, seconds)
    del cell
    store.drop()  # on an object store: the store holds it all now
    memory.release()  # the next cell in this process starts from what it needs, not from this one's peak
    return result


def open_cell(spec: CellSpec, store: CellStore, accelerator, hooks: Hooks, checkpoint_every: int) -> Cell:
    """The pretrained model with its fresh head, its θ0 and prunable set, and the cell's data."""
    if accelerator.is_main_process:
        store.write_spec()
    task, data, model = load_task(spec, accelerator)
    theta0, head0, tied = split_state(model)
    return Cell(spec, store, accelerator, task, data, model, theta0, head0, tied,
                pruning.prunable_parameters(model), hooks, checkpoint_every)


def run_level(cell: Cell, level: int) -> LevelRecord | None:
    """One IMP level, unless its DONE marker stands: rewind, train, evaluate, prune, commit."""
    if _broadcast_int(int(cell.store.level_done(level)) if cell.main else 0, cell.accelerator):
        return None
    started = time.perf_counter()
    masks = rewind_level(cell, level)
    settling = settling_of(cell, level, masks)
    prepared, stats = train_level(cell, level, masks, settling)
    metrics = evaluate_level(cell, level, prepared)
    trained, head, _ = split_state(cell.model)
    next_masks, digests = prune_level(cell, level, masks, trained)
    record = LevelRecord(level, cell.spec.sparsities[level], pruning.density(masks), cell.task.metric,
                         metrics[cell.task.metric], metrics, stats, cell.accelerator.num_processes, digests)
    if cell.main:
        curve = settling.curve(next_masks, stats.steps) if settling is not None else None
        record = commit_level(cell, record, trained, head, next_masks, started, curve)
    cell.accelerator.free_memory()
    cell.accelerator.wait_for_everyone()
    return record


def rewind_level(cell: Cell, level: int) -> pruning.Masks:
    """Level k's mask (all ones at level 0), and the model set to θ0 ⊙ mask with level k-1's head."""
    if level == 0:
        masks = pruning.dense_masks(cell.params)
        if cell.main:
            cell.store.save_mask(0, masks, sparsity=0.0)
        head = cell.head0
    else:
        if not cell.main:  # rank 0 committed them; on an object store this rank's copy has not seen them yet
            for k in (level - 1, level):
                cell.store.storage.pull(cell.store.level_dir(k), exclude=NEVER_PULLED)
        masks, head = cell.store.load_mask(level), cell.store.load_head(level - 1)
    rewind(cell.model, cell.theta0, head, cell.tied, masks)
    if cell.main and cell.hooks.level_start:
        cell.hooks.level_start(level, cell.model)
    cell.accelerator.wait_for_everyone()
    return masks


def settling_of(cell: Cell, level: int, masks: pruning.Masks) -> Settling | None:
    """The settling curve of a level that prunes after its round (every level but the last)."""
    if level == cell.spec.levels:
        return None
    theta0_mask = pruning.one_shot_masks(cell.theta0, cell.params, cell.spec.sparsities[level + 1])
    return Settling(masks, level, cell.spec.prune_fraction, pruning.pruning_units(cell.params), theta0_mask,
                    cell.spec.settle_stop)


def train_level(cell: Cell, level: int, masks: pruning.Masks,
                settling: Settling | None = None) -> tuple[object, RoundStats]:
    """One round of training (resumed from the level's newest whole checkpoint, if any)."""
    after = cell.hooks.after_step
    prepared, stats = train_round(cell.model, masks, cell.data, cell.spec, level, cell.accelerator,
                                  cell.store.checkpoints(level), cell.checkpoint_every,
                                  (lambda step: after(level, step)) if after else None, settling)
    cell.model = cell.accelerator.unwrap_model(prepared)  # what the next level rewinds
    return prepared, stats


def evaluate_level(cell: Cell, level: int, prepared) -> dict[str, float]:
    """The task's validation metrics of the trained model."""
    metrics = cell.task.evaluate(prepared, eval_loader(cell.data, cell.spec, cell.accelerator), cell.accelerator)
    if cell.main and cell.hooks.level_trained:
        cell.hooks.level_trained(level, cell.model)
    return metrics


def prune_level(cell: Cell, level: int, masks: pruning.Masks,
                trained: dict) -> tuple[pruning.Masks | None, list[str] | None]:
    """The next level's mask, pruned by rank 0 and broadcast, with every rank's digest of it (None at the end)."""
    if level == cell.spec.levels:
        return None, None
    units = pruning.pruning_units(cell.params)
    new_masks = (pruning.magnitude_prune(trained, masks, level + 1, cell.spec.prune_fraction, units)
                 if cell.main else masks)
    new_masks = _broadcast_masks(new_masks, cell.accelerator)
    return new_masks, _rank_digests(new_masks, cell.accelerator)


def commit_level(cell: Cell, record: LevelRecord, trained: dict, head: dict, next_masks: pruning.Masks | None,
                 started: float, settling: dict | None = None) -> LevelRecord:
    """On rank 0: baselines (level 0), the next mask, the head, settling and metrics.json, then DONE; checkpoints
    go."""
    store, spec, level = cell.store, cell.spec, record.level
    if level == 0:
        write_baselines(store, spec, cell.params, trained, cell.theta0)
    if settling is not None:
        store.save_settling(level, settling)
    if next_masks is not None:
        store.save_mask(level + 1, next_masks, sparsity=spec.sparsities[level + 1])
    store.save_head(level, head)
    record = replace(record, level_seconds=time.perf_counter() - started)
    store.save_metrics(level, record.to_dict())
    store.mark_level_done(level)
    store.clear_checkpoints(level)
    log.info("cell %s level %d (sparsity %.0f%%): %s %.4f", spec.id, level, 100 * record.sparsity,
             record.metric, record.score)
    if cell.hooks.level_done:
        cell.hooks.level_done(level, record.to_dict())
    return record


def _broadcast_int(value: int, accelerator) -> int:
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast  # heavy: only a multi-process run gets here

    return int(broadcast(torch.tensor([value], device=accelerator.device), from_process=0).item())
