"""One round of IMP training with Accelerate: masked, checkpointed, resumable.

A fresh AdamW and linear schedule each round (METHOD.md). Pruned weights stay
exactly zero: their gradients are zeroed before clipping (so AdamW's moments
never move them) and the mask is reapplied after every optimizer step.
Checkpoints carry model, optimizer, scheduler, every rank's RNG state and the
step; the data order is a pure function of (seed, level, epoch), so resuming
skips the batches already seen and continues exactly.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from trainables.atomic import atomic_path, read_json, write_json
from trainables.errors import LnsubError
from trainables.masks import sha256_file
from trainables.pruning import Masks, apply_masks, mask_gradients
from trainables.spec import CellSpec

log = logging.getLogger(__name__)
KEEP_CHECKPOINTS = 2


@dataclass
class RoundData:
    train: object  # tokenised datasets.Dataset
    valid: object
    train_collator: Callable
    valid_collator: Callable


def per_device_batch(spec: CellSpec, num_processes: int) -> int:
    share = num_processes * spec.grad_accum
    if spec.batch_size % share:
        raise LnsubError(f"batch_size {spec.batch_size} is not divisible by workers x grad_accum = {share}")
    return spec.batch_size // share


def _order(n: int, spec: CellSpec, level: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(hash_seed(spec.seed, level, epoch))
    return torch.randperm(n, generator=g).tolist()


def hash_seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:7], "big")


def train_loader(data: RoundData, spec: CellSpec, level: int, epoch: int, accelerator):
    loader = torch.utils.data.DataLoader(
        data.train, batch_size=per_device_batch(spec, accelerator.num_processes),
        sampler=_order(len(data.train), spec, level, epoch), collate_fn=data.train_collator, drop_last=True)
    return accelerator.prepare_data_loader(loader)


def eval_loader(data: RoundData, spec: CellSpec, accelerator):
    loader = torch.utils.data.DataLoader(data.valid, batch_size=max(1, per_device_batch(spec, accelerator.num_processes)) * 2,
                                         collate_fn=data.valid_collator)
    return accelerator.prepare_data_loader(loader)


def total_steps(spec: CellSpec, steps_per_epoch: int) -> int:
    if spec.steps is not None:
        return spec.steps
    return max(1, math.ceil(spec.epochs * steps_per_epoch))


# --- checkpoints ---------------------------------------------------------------------------

def _rng_state() -> torch.Tensor:
    """This process's torch CPU RNG state (the MLM collator draws its masks from it)."""
    return torch.get_rng_state()


def _numpy_state() -> dict:
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {"keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}


def save_checkpoint(folder: Path, step: int, model, optimizer, scheduler, accelerator) -> None:
    """Every rank contributes its RNG state; rank 0 writes state.pt, then meta.json with its checksum."""
    states = accelerator.gather(_rng_state().unsqueeze(0).to(accelerator.device)).cpu()
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else torch.empty(0, dtype=torch.uint8)
    if accelerator.is_main_process:
        target = folder / f"step_{step:08d}"
        state = {"step": step, "model": accelerator.unwrap_model(model).state_dict(),
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "torch_rng": states, "cuda_rng": cuda,
                 "python_rng": list(random.getstate()[1]), "numpy_rng": _numpy_state()}
        with atomic_path(target / "state.pt") as tmp:
            torch.save(state, tmp)
        write_json(target / "meta.json", {"step": step, "sha256": sha256_file(target / "state.pt")})
        for old in sorted(folder.glob("step_*"))[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def load_checkpoint(folder: Path) -> dict | None:
    """The newest checkpoint that reads back whole; damaged ones are set aside with a warning."""
    for candidate in sorted(folder.glob("step_*"), reverse=True):
        try:
            meta = read_json(candidate / "meta.json")
            if sha256_file(candidate / "state.pt") != meta["sha256"]:
                raise ValueError("checksum mismatch")
            state = torch.load(candidate / "state.pt", map_location="cpu", weights_only=True)
            if state["step"] != meta["step"]:
                raise ValueError("step mismatch")
            return state
        except Exception as e:  # noqa: BLE001 - any failure to read means: do not trust it
            log.warning("checkpoint %s is damaged (%s: %s); falling back to the one before",
                        candidate, type(e).__name__, e)
            try:
                candidate.rename(candidate.with_name(candidate.name + ".corrupt"))
            except OSError:
                pass
    return None


def _restore_rng(state: dict, rank: int) -> None:
    torch.set_rng_state(state["torch_rng"][rank].clone())
    if torch.cuda.is_available() and state["cuda_rng"].numel():
        torch.cuda.set_rng_state(state["cuda_rng"])
    random.setstate((3, tuple(state["python_rng"]), None))
    n = state["numpy_rng"]
    np.random.set_state(("MT19937", np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached"]))


# --- the round -----------------------------------------------------------------------------

def train_round(model, masks: Masks, data: RoundData, spec: CellSpec, level: int, accelerator,
                checkpoint_dir: Path, checkpoint_every: int, after_step: Callable[[int], None] | None = None) -> dict:
    """Train `model` (already rewound and masked) for one round; return training stats."""
    from accelerate.utils import set_seed

    set_seed(hash_seed(spec.seed, "level", level) % 2**31, device_specific=True)  # + rank
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, eps=spec.adam_eps, weight_decay=spec.weight_decay)
    steps_per_epoch = math.ceil(len(train_loader(data, spec, level, 0, accelerator)) / spec.grad_accum)
    if steps_per_epoch == 0:
        raise LnsubError(f"cell {spec.id}: fewer training examples than one batch of {spec.batch_size}")
    total = total_steps(spec, steps_per_epoch)
    warmup = spec.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)

    step, resumed_from = 0, None
    state = load_checkpoint(checkpoint_dir)
    if state is not None:
        unwrapped.load_state_dict(state["model"])
        optimizer.optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _restore_rng(state, accelerator.process_index)
        step = resumed_from = state["step"]
        log.info("cell %s level %d: resuming at step %d/%d", spec.id, level, step, total)
        apply_masks(unwrapped, masks)

    model.train()
    losses: list[float] = []
    started, trained = time.perf_counter(), 0
    report_every = max(1, total // 10)
    while step < total:
        epoch, done_in_epoch = divmod(step, steps_per_epoch)
        loader = train_loader(data, spec, level, epoch, accelerator)
        skip = done_in_epoch * spec.grad_accum
        if skip:
            loader = accelerator.skip_first_batches(loader, skip)
        accelerator.step = 0  # accumulation boundaries count from the start of each epoch
        for batch in loader:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    mask_gradients(unwrapped, masks)
                    accelerator.clip_grad_norm_(model.parameters(), spec.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            apply_masks(unwrapped, masks)
            scheduler.step()
            step += 1
            trained += 1
            losses.append(loss.item())
            if step % report_every == 0 or step == total:
                log.info("cell %s level %d: step %d/%d, loss %.4f", spec.id, level, step, total,
                         sum(losses[-report_every:]) / len(losses[-report_every:]))
            if after_step is not None:
                after_step(step)
            if step < total and checkpoint_every and step % checkpoint_every == 0:
                save_checkpoint(checkpoint_dir, step, model, optimizer, scheduler, accelerator)
            if step >= total:
                break
    seconds = time.perf_counter() - started
    return {"model": model, "steps": total, "steps_trained": trained, "resumed_from": resumed_from,
            "train_loss": sum(losses[-report_every:]) / max(1, len(losses[-report_every:])) if losses else None,
            "train_seconds": seconds, "seconds_per_step": seconds / trained if trained else None}
