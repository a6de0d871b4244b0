"""One round of IMP training with Accelerate: masked, checkpointed, resumable.

A fresh AdamW and linear schedule each round (docs/method.md; spec.lr_schedule "whole_run" stretches each
round's schedule over the whole run, as the authors' code does). Pruned weights stay
exactly zero: their gradients are zeroed before clipping (so AdamW's moments
never move them) and the mask is reapplied after every optimizer step.
Checkpoints carry model, optimizer, scheduler, every rank's RNG state and the
step; the data order is a pure function of (seed, level, epoch) (and of the examples' lengths with
spec.group_by_length), so resuming skips the batches already seen and continues exactly. The store
(trainables.store.Checkpoints) writes and reads them, and quarantines a damaged one.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from lnsub.trainables.checkpointing import CheckpointWriter
from lnsub.trainables.errors import LnsubError
from lnsub.trainables.pruning import Masks, MaskEnforcer
from lnsub.trainables.spec import CellSpec
from lnsub.trainables.store import Checkpoints

log = logging.getLogger(__name__)


@dataclass
class RoundData:
    train: object  # tokenised datasets.Dataset
    valid: object
    train_collator: Callable
    valid_collator: Callable
    train_lengths: list[int] | None = None  # tokens of each training example, read once (group_by_length)

    def lengths(self) -> list[int]:
        """Tokens of each training example, read from the Arrow list offsets (no ids are materialised)."""
        if self.train_lengths is None:
            import pyarrow.compute as pc  # heavy: only when grouping

            self.train_lengths = pc.list_value_length(self.train.with_format("arrow")["input_ids"]).to_pylist()
        return self.train_lengths


def per_device_batch(spec: CellSpec, num_processes: int) -> int:
    share = num_processes * spec.grad_accum
    if spec.batch_size % share:
        raise LnsubError(f"batch_size {spec.batch_size} is not divisible by workers x grad_accum = {share}")
    return spec.batch_size // share


def epoch_order(data: RoundData, spec: CellSpec, level: int, epoch: int, batch: int) -> list[int]:
    """The epoch's example order: a permutation drawn from (seed, level, epoch) alone.

    With spec.group_by_length, Hugging Face's length grouping of that draw (mega-batches of up to 50
    batches, each sorted by length, the longest example in the first batch), so that a batch holds
    examples of similar length and pads little; then the batches after the first are shuffled, by the
    same generator, so that an epoch does not run from long to short batches within each mega-batch.
    """
    g = torch.Generator().manual_seed(hash_seed(spec.seed, level, epoch))
    if not spec.group_by_length:
        return torch.randperm(len(data.train), generator=g).tolist()
    from transformers.trainer_pt_utils import get_length_grouped_indices  # heavy: only when grouping

    grouped = get_length_grouped_indices(data.lengths(), batch, generator=g)
    whole = len(grouped) // batch  # an incomplete last batch stays last, where drop_last drops it
    batches = [grouped[i * batch:(i + 1) * batch] for i in range(whole)]
    rest = torch.randperm(max(whole - 1, 0), generator=g).tolist()
    return [i for b in [*batches[:1], *(batches[1 + k] for k in rest)] for i in b] + grouped[whole * batch:]


def hash_seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:7], "big")


def train_loader(data: RoundData, spec: CellSpec, level: int, epoch: int, accelerator):
    batch = per_device_batch(spec, accelerator.num_processes)
    loader = torch.utils.data.DataLoader(
        data.train, batch_size=batch, sampler=epoch_order(data, spec, level, epoch, batch),
        collate_fn=_UnpaddedMaskDropped(data.train_collator), drop_last=True, pin_memory=_pin(accelerator))
    return accelerator.prepare_data_loader(loader)


def eval_loader(data: RoundData, spec: CellSpec, accelerator):
    loader = torch.utils.data.DataLoader(data.valid, batch_size=max(1, per_device_batch(spec, accelerator.num_processes)) * 2,
                                         collate_fn=data.valid_collator, pin_memory=_pin(accelerator))
    return accelerator.prepare_data_loader(loader)


def _pin(accelerator) -> bool:
    """Pinned batches on a GPU: with the Accelerator's non_blocking copies the host never waits for them."""
    return accelerator.device.type == "cuda"


class _UnpaddedMaskDropped:
    """The collator, less an attention_mask that masks nothing (MLM's full blocks): the model reads
    no mask as all ones, so the result is the same, and transformers' SDPA path skips its
    `padding_mask.all()` check, a host sync on every forward. Checked here, on the host, for free.
    """

    def __init__(self, collate: Callable):
        self.collate = collate

    def __call__(self, examples):
        batch = self.collate(examples)
        mask = batch.get("attention_mask")
        if isinstance(mask, torch.Tensor) and bool(mask.all()):
            del batch["attention_mask"]
        return batch


def total_steps(spec: CellSpec, steps_per_epoch: int) -> int:
    if spec.steps is not None:
        return spec.steps
    return max(1, math.ceil(spec.epochs * steps_per_epoch))


def lr_factor(spec: CellSpec, total: int) -> Callable[[int], float]:
    """The learning rate at step s of a round of `total` steps, as a fraction of spec.lr.

    per_round (the paper's text): linear warm-up over spec.warmup_steps, then linear decay to 0 at the
    round's end. whole_run (the authors' code): each round rebuilds the same schedule over the whole
    run, (levels + 1) x total steps, and stops after `total`, so every round decays from 100% to
    levels / (levels + 1) of the peak (90% with 10 rounds).
    """
    horizon = total * (spec.levels + 1) if spec.lr_schedule == "whole_run" else total
    warmup = spec.warmup_steps
    return lambda s: (s + 1) / warmup if s < warmup else max(0.0, (horizon - s) / max(1, horizon - warmup))


def compile_model(model: torch.nn.Module) -> None:
    """torch.compile the model in place, once: its __call__ is compiled, its parameters and their names stay."""
    if getattr(model, "_compiled_call_impl", None) is None:
        model.compile()


# --- checkpoints ---------------------------------------------------------------------------

def _rng_state() -> torch.Tensor:
    """This process's torch CPU RNG state (the MLM collator draws its masks from it)."""
    return torch.get_rng_state()


def _numpy_state() -> dict:
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {"keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}


def save_checkpoint(checkpoints: Checkpoints | CheckpointWriter, step: int, model, optimizer, scheduler, accelerator,
                    settling: dict | None = None) -> None:
    """Every rank contributes its RNG state; rank 0 saves the checkpoint (with the settling curve's state).

    Through a CheckpointWriter (what train_round passes) the write runs behind training; through Checkpoints
    it is done when this returns.
    """
    states = accelerator.gather(_rng_state().unsqueeze(0).to(accelerator.device)).cpu()
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else torch.empty(0, dtype=torch.uint8)
    if accelerator.is_main_process:
        checkpoints.save(step, {"step": step, "model": accelerator.unwrap_model(model).state_dict(),
                                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                "torch_rng": states, "cuda_rng": cuda,
                                "python_rng": list(random.getstate()[1]), "numpy_rng": _numpy_state(),
                                **({"settling": settling} if settling is not None else {})})
    accelerator.wait_for_everyone()


def _restore_rng(state: dict, rank: int) -> None:
    torch.set_rng_state(state["torch_rng"][rank].clone())
    if torch.cuda.is_available() and state["cuda_rng"].numel():
        torch.cuda.set_rng_state(state["cuda_rng"])
    random.setstate((3, tuple(state["python_rng"]), None))
    n = state["numpy_rng"]
    np.random.set_state(("MT19937", np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached"]))


# --- the round -----------------------------------------------------------------------------

@dataclass(frozen=True)
class RoundStats:
    """What one round of training did; its fields are keys of metrics.json (see trainables.metrics)."""

    steps: int  # optimizer steps of the round
    steps_trained: int  # performed by this call (steps - resumed_from when resumed)
    resumed_from: int | None  # the checkpoint's step
    train_loss: float | None  # mean over the last tenth of the round
    train_seconds: float
    seconds_per_step: float | None


@dataclass
class _Round:
    """A round's moving parts, once prepared: what the step loop needs."""

    model: object  # as prepared by Accelerate (wrapped under DDP)
    unwrapped: torch.nn.Module
    optimizer: object
    scheduler: object
    steps_per_epoch: int
    total: int
    step: int  # where training starts: 0, or the checkpoint's step
    resumed_from: int | None
    settling: dict | None = None  # the checkpoint's settling state, if it kept one


def _prepare_round(model, data: RoundData, spec: CellSpec, level: int, accelerator,
                   checkpoints: Checkpoints) -> _Round:
    """A fresh AdamW and linear schedule (spec.lr_schedule), prepared; restored from the newest whole checkpoint."""
    from accelerate.utils import set_seed  # heavy: imported when training starts, not with the package

    set_seed(hash_seed(spec.seed, "level", level) % 2**31, device_specific=True)  # + rank
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, eps=spec.adam_eps, weight_decay=spec.weight_decay,
                                  fused=True)  # one kernel, not a per-tensor loop (BERT-base on CPU: 0.4 s, not 3 s)
    steps_per_epoch = math.ceil(len(train_loader(data, spec, level, 0, accelerator)) / spec.grad_accum)
    if steps_per_epoch == 0:
        raise LnsubError(f"cell {spec.id}: fewer training examples than one batch of {spec.batch_size}")
    total = total_steps(spec, steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(spec, total))
    if spec.compile:
        compile_model(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    run = _Round(model, accelerator.unwrap_model(model), optimizer, scheduler, steps_per_epoch, total, 0, None)
    state = checkpoints.load_newest()
    if state is not None:
        run.unwrapped.load_state_dict(state["model"])
        optimizer.optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _restore_rng(state, accelerator.process_index)
        run.step = run.resumed_from = state["step"]
        run.settling = state.get("settling")
        log.info("cell %s level %d: resuming at step %d/%d", spec.id, level, run.step, total)
    return run


def train_round(model, masks: Masks, data: RoundData, spec: CellSpec, level: int, accelerator,
                checkpoints: Checkpoints, checkpoint_every: int,
                after_step: Callable[[int], None] | None = None, settling=None) -> tuple[object, RoundStats]:
    """Train `model` (already rewound and masked) for one round: (the model as prepared, its stats).

    The returned model is Accelerate's (wrapped under DDP); accelerator.unwrap_model gives the module.
    `settling` (trainables.settling.Settling) records the mask pruning would take at its snapshot steps and
    may end the round early; its stats then count the steps trained.
    """
    run = _prepare_round(model, data, spec, level, accelerator, checkpoints)
    if settling is not None:
        settling.restore(run.settling)
    enforce = MaskEnforcer(run.unwrapped, masks)
    if run.resumed_from is not None:
        enforce.weights()
    run.model.train()
    report_every = max(1, run.total // 10)
    losses: deque[torch.Tensor] = deque(maxlen=report_every)  # on the device: no host sync per step
    started = time.perf_counter()
    writer = CheckpointWriter(checkpoints)  # rank 0's writes run behind the steps that follow them
    try:
        _steps(run, data, spec, level, accelerator, enforce, writer, checkpoint_every, after_step, settling, losses,
               report_every)
    except BaseException:
        writer.close(failing=True)
        raise
    writer.close()
    trained = run.step - (run.resumed_from or 0)
    seconds = time.perf_counter() - started
    return run.model, RoundStats(run.total, trained, run.resumed_from, _mean(losses) if losses else None,
                                 seconds, seconds / trained if trained else None)


def _steps(run: _Round, data: RoundData, spec: CellSpec, level: int, accelerator, enforce: MaskEnforcer,
           writer: CheckpointWriter, checkpoint_every: int, after_step, settling, losses: deque,
           report_every: int) -> None:
    """The round's optimizer steps from run.step to run.total (which settling may bring forward)."""
    while run.step < run.total:
        epoch, done_in_epoch = divmod(run.step, run.steps_per_epoch)
        loader = train_loader(data, spec, level, epoch, accelerator)
        skip = done_in_epoch * spec.grad_accum
        if skip:
            loader = accelerator.skip_first_batches(loader, skip)
        accelerator.step = 0  # accumulation boundaries count from the start of each epoch
        for batch in loader:
            loss = _micro_step(run, batch, enforce, spec, accelerator)
            if not accelerator.sync_gradients:
                continue
            enforce.weights()
            run.scheduler.step()
            run.step += 1
            losses.append(loss.detach())
            if run.step % report_every == 0 or run.step == run.total:
                log.info("cell %s level %d: step %d/%d, loss %.4f", spec.id, level, run.step, run.total,
                         _mean(losses))
            if after_step is not None:
                after_step(run.step)
            if settling is not None and settling.due(run.step, run.total) and _settled(settling, run, accelerator):
                run.total = run.step  # the mask has settled: the round ends here
            if run.step < run.total and checkpoint_every and run.step % checkpoint_every == 0:
                save_checkpoint(writer, run.step, run.model, run.optimizer, run.scheduler, accelerator,
                                settling.state() if settling is not None else None)
            if run.step >= run.total:
                break


def _settled(settling, run: _Round, accelerator) -> bool:
    """Rank 0's snapshot decides for every rank (the weights agree; the decision must too)."""
    stop = settling.observe(run.step, run.total, run.unwrapped) if accelerator.is_main_process else False
    if accelerator.num_processes == 1:
        return stop
    from accelerate.utils import broadcast  # heavy: only a multi-process run gets here

    return bool(broadcast(torch.tensor([int(stop)], device=accelerator.device), from_process=0).item())


def _micro_step(run: _Round, batch, enforce: MaskEnforcer, spec: CellSpec, accelerator) -> torch.Tensor:
    """Forward and backward of one batch; at an accumulation boundary, masked, clipped and stepped."""
    with accelerator.accumulate(run.model):
        loss = run.model(**batch).loss
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            enforce.gradients()
            accelerator.clip_grad_norm_(run.model.parameters(), spec.max_grad_norm)
        run.optimizer.step()
        run.optimizer.zero_grad()
    return loss


def _mean(losses) -> float:
    """The mean of the recent losses: one host sync, at report time only."""
    return torch.stack(list(losses)).double().mean().item()
