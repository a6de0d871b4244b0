"""One transfer job (METHOD.md, transfer matrix): a source's mask, trained on a target's task.

Load θ0, apply the source mask permanently (pruned weights stay zero through
training), put a fresh task head on it, train on the target cell's data and
evaluate on its validation split. Sources are a cell's IMP mask at a level
(a language's ticket; the diagonal is the target's own), a random mask of the
same sparsity, or the one-shot magnitude mask of θ0. Callable without Ray.

    <storage>/transfer/<job id>/job.json       the job (its id is a hash of it)
    <storage>/transfer/<job id>/checkpoint/    a job in progress
    <storage>/transfer/<job id>/result.json    its validation metrics; DONE written last
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from trainables import pruning
from trainables.atomic import is_done, mark_done, read_json, write_json
from trainables.errors import LnsubError
from trainables.ids import stable_id
from trainables.masks import digest, load_masks
from trainables.spec import CellSpec
from trainables.store import CellStore

log = logging.getLogger(__name__)
SCHEMA = 1
SOURCE_KINDS = ("ticket", "random", "oneshot")
# METHOD.md: sub-network training of MLM runs 20k steps where discovery ran 10k; NER and XNLI keep their epochs.
STEPS_FACTOR = {"mlm": 2.0}


@dataclass(frozen=True)
class TransferJob:
    kind: str  # ticket, random or oneshot
    source: str  # row label: the source language (task:language across tasks), "random" or "oneshot"
    source_cell: dict | None  # the source cell's spec, for kind == "ticket"
    target_cell: dict  # the target cell's spec: model, data and training schedule
    level: int  # the IMP level whose sparsity (and, for tickets, mask) is used
    sparsity: float

    @property
    def id(self) -> str:
        target = self.target
        return stable_id(self, SCHEMA, prefix=f"transfer-{target.task}-{target.language}-")

    @property
    def target(self) -> CellSpec:
        return CellSpec.from_dict(self.target_cell)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TransferJob":
        return cls(**d)

    def training_spec(self) -> CellSpec:
        """The target's schedule, with METHOD.md's sub-network-training length."""
        spec = self.target
        factor = STEPS_FACTOR.get(spec.task, 1.0)
        if spec.steps is not None and factor != 1.0:
            spec = dataclasses.replace(spec, steps=int(round(spec.steps * factor)))
        return spec


def job_dir(storage: str | Path, job: TransferJob) -> Path:
    return Path(storage) / "transfer" / job.id


def finished(storage: str | Path, job: TransferJob) -> bool:
    return is_done(job_dir(storage, job))


def result(storage: str | Path, job: TransferJob) -> dict:
    return read_json(job_dir(storage, job) / "result.json")


def random_seed(job: TransferJob) -> int:
    """The random mask depends on the target's seed and the sparsity only: one per row and seed."""
    from trainables.train import hash_seed

    return hash_seed("random-mask", job.target.seed, f"{job.sparsity:.6f}") >> 24  # its first 4 of 7 bytes


def source_masks(job: TransferJob, storage: str | Path, params: list[pruning.Prunable]) -> pruning.Masks:
    """The mask to apply, on the target model's prunable set.

    Across tasks the prunable sets differ only by the pooler (XNLI has one): a
    weight the source mask does not cover stays dense, and the density is recorded.
    """
    target = job.target
    if job.kind == "ticket":
        source = CellSpec.from_dict(job.source_cell)
        store = CellStore(storage, source)
        if not (store.level_dir(job.level) / "mask.json").exists():
            raise LnsubError(f"source cell {source.id} has no mask at level {job.level} yet")
        loaded = load_masks(store.level_dir(job.level))
    elif job.kind == "oneshot":
        folder = CellStore(storage, target).baseline_dir("oneshot_pretrained", job.sparsity)
        if not (folder / "mask.json").exists():
            raise LnsubError(f"no one-shot θ0 mask at sparsity {job.sparsity:.0%} in {folder}")
        loaded = load_masks(folder)
    elif job.kind == "random":
        return pruning.random_masks(params, job.sparsity, seed=random_seed(job))
    else:
        raise LnsubError(f"unknown transfer source kind {job.kind!r}; known: {', '.join(SOURCE_KINDS)}")
    out = {}
    for p in params:
        mask = loaded.get(p.name)
        if mask is not None and tuple(mask.shape) != p.shape:
            raise LnsubError(f"mask {p.name} has shape {tuple(mask.shape)}, the target model {p.shape}")
        out[p.name] = mask if mask is not None else torch.ones(p.shape, dtype=torch.bool)
    return out


def run_transfer_job(job: TransferJob, storage: str | Path, *, checkpoint_every: int = 100,
                     after_step=None) -> dict:
    """Train the source's sub-network on the target; idempotent (a finished job returns its result)."""
    from trainables.imp import load_task, make_accelerator
    from trainables.train import eval_loader, train_round

    folder = job_dir(storage, job)
    if is_done(folder):
        return read_json(folder / "result.json")
    started = time.perf_counter()
    spec = job.training_spec()
    accelerator = make_accelerator(spec)
    if accelerator.is_main_process and not (folder / "job.json").exists():
        write_json(folder / "job.json", {"id": job.id, "job": job.to_dict()})
    task, data, model = load_task(spec, accelerator)  # a fresh head: the target cell's own dense start
    params = pruning.prunable_parameters(model)
    masks = source_masks(job, storage, params)
    pruning.apply_masks(model, masks)  # θ0 ⊙ mask; train_round keeps the pruned weights at zero
    stats = train_round(model, masks, data, spec, job.level, accelerator, folder / "checkpoint",
                        checkpoint_every, after_step)
    trained = stats.pop("model")
    metrics = task.evaluate(trained, eval_loader(data, spec, accelerator), accelerator)
    record = {"job": job.id, "kind": job.kind, "source": job.source, "task": spec.task,
              "target": spec.language, "seed": spec.seed, "level": job.level, "sparsity": job.sparsity,
              "density": pruning.density(masks), "mask_sha256": digest(masks),
              "metric": task.metric, "score": metrics[task.metric], **metrics,
              "steps": stats["steps"], "steps_trained": stats["steps_trained"],
              "resumed_from_step": stats["resumed_from"], "seconds": time.perf_counter() - started}
    if accelerator.is_main_process:
        write_json(folder / "result.json", record)
        mark_done(folder)
        shutil.rmtree(folder / "checkpoint", ignore_errors=True)
        log.info("transfer %s -> %s/%s: %s %.4f", job.source, spec.task, spec.language, task.metric, record["score"])
    accelerator.wait_for_everyone()
    return record
