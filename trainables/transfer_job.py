"""One transfer job (docs/method.md, transfer matrix): a source's mask, trained on a target's task.

Load θ0, apply the source mask permanently (pruned weights stay zero through
training), put a fresh task head on it, train on the target cell's data and
evaluate on its validation split. Sources are a cell's IMP mask at a level
(a language's ticket; the diagonal is the target's own), a random mask of the
same sparsity, or the one-shot magnitude mask of θ0. Callable without Ray.
A job's files live under <storage>/transfer/<job id>/ (trainables.store.JobStore).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lnsub.trainables import metrics as M
from lnsub.trainables import pruning
from lnsub.trainables.checkpointing import DEFAULT_CHECKPOINT_EVERY
from lnsub.trainables.errors import LnsubError
from lnsub.trainables.ids import stable_id
from lnsub.trainables.loading import load_task, make_accelerator
from lnsub.trainables.masks import digest
from lnsub.trainables.spec import CellSpec
from lnsub.trainables.storage import Storage
from lnsub.trainables.store import ONESHOT_PRETRAINED, CellStore, JobStore, pull_transfer_results
from lnsub.trainables.train import eval_loader, hash_seed, train_round

log = logging.getLogger(__name__)
SCHEMA = 1
SOURCE_KINDS = ("ticket", "random", "oneshot")
# docs/method.md: sub-network training of MLM runs 20k steps where discovery ran 10k; NER and XNLI keep their epochs.
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
        """The target's schedule, with docs/method.md's sub-network-training length."""
        spec = self.target
        factor = STEPS_FACTOR.get(spec.task, 1.0)
        if spec.steps is not None and factor != 1.0:
            spec = dataclasses.replace(spec, steps=int(round(spec.steps * factor)))
        return spec


def job_store(storage: Storage | str | Path, job: TransferJob) -> JobStore:
    return JobStore(storage, job.id)


def job_dir(storage: Storage | str | Path, job: TransferJob) -> Path:
    return job_store(storage, job).root


def finished(storage: Storage | str | Path, job: TransferJob) -> bool:
    return job_store(storage, job).finished()


def result(storage: Storage | str | Path, job: TransferJob) -> dict:
    return job_store(storage, job).result()


def pull_results(storage: Storage | str | Path) -> None:
    """On an object store: bring every transfer job's result (not its checkpoints) into this process's copy."""
    pull_transfer_results(Storage.open(storage))


def _imp_level_0(storage: Storage, job: TransferJob) -> dict | None:
    """The cell's level-0 metrics, if that level is finished and trained as a transfer job trains: on one worker
    (on several, dropout is drawn per rank: an equally good training, not the same figures, and the θ0 scores
    stay like for like)."""
    cell = CellStore(storage, job.target)
    if not cell.level_done(0):
        return None
    level = cell.metrics(0)
    return level if level.get(M.WORKERS) == 1 else None


def _result(job: TransferJob, masks: pruning.Masks, metric: str, metrics: dict, steps: int, steps_trained: int,
            resumed_from: int | None, started: float, **extra) -> dict:
    """result.json: the job, its mask, the target's validation metrics and how much training they took."""
    spec = job.target
    return {M.JOB: job.id, M.KIND: job.kind, M.SOURCE: job.source, M.TASK: spec.task,
            M.TARGET: spec.language, M.SEED: spec.seed, M.LEVEL: job.level, M.SPARSITY: job.sparsity,
            M.DENSITY: pruning.density(masks), M.MASK_SHA256: digest(masks),
            M.METRIC: metric, M.SCORE: metrics[metric], **metrics,
            M.STEPS: steps, M.STEPS_TRAINED: steps_trained, M.RESUMED_FROM_STEP: resumed_from,
            M.SECONDS: time.perf_counter() - started, **extra}


def _save(record: dict, store: JobStore, accelerator, how: str = "") -> dict:
    """Rank 0 saves the result (then DONE); every rank returns it."""
    if accelerator.is_main_process:
        store.save_result(record)
        log.info("transfer %s -> %s/%s%s: %s %.4f", record[M.SOURCE], record[M.TASK], record[M.TARGET], how,
                 record[M.METRIC], record[M.SCORE])
    accelerator.wait_for_everyone()
    return record


def random_seed(job: TransferJob) -> int:
    """The random mask depends on the target's seed and the sparsity only: one per row and seed."""
    return hash_seed("random-mask", job.target.seed, f"{job.sparsity:.6f}") >> 24  # its first 4 of 7 bytes


def source_masks(job: TransferJob, storage: Storage, params: list[pruning.Prunable]) -> pruning.Masks:
    """The mask to apply, on the target model's prunable set.

    Across tasks the prunable sets differ only by the pooler (XNLI has one): a
    weight the source mask does not cover stays dense, and the density is recorded.
    """
    target = job.target
    if job.kind == "ticket":
        source = CellSpec.from_dict(job.source_cell)
        store = CellStore(storage, source)
        if not store.has_mask(job.level):
            raise LnsubError(f"source cell {source.id} has no mask at level {job.level} yet")
        loaded = store.load_mask(job.level)
    elif job.kind == "oneshot":
        store = CellStore(storage, target)
        if not store.has_baseline(ONESHOT_PRETRAINED, job.sparsity):
            raise LnsubError(f"no one-shot θ0 mask at sparsity {job.sparsity:.0%} in "
                             f"{store.baseline_mask_path(ONESHOT_PRETRAINED, job.sparsity)}")
        loaded = store.baseline(ONESHOT_PRETRAINED, job.sparsity)
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


def repeats_imp_level_0(job: TransferJob) -> bool:
    """Whether the job trains exactly what its cell's IMP level 0 trained, so that its score is that level's.

    The diagonal ticket at level 0: the cell's all-ones mask on θ0 with a fresh head, on the cell's own schedule
    (MLM's sub-network training is twice as long: not that), with no settling to have cut level 0 short. Both
    train through train_round from the same spec, level and seed: the same data order, dropout and head
    (tests/trainables/test_transfer_job.py trains both and compares every figure).
    """
    return (job.kind == "ticket" and job.level == 0 and job.source_cell == job.target_cell
            and job.training_spec() == job.target and job.target.settle_stop is None)


def run_transfer_job(job: TransferJob, storage: Storage | str | Path, *,
                     checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY, after_step=None) -> dict:
    """Train the source's sub-network on the target; idempotent (a finished job returns its result).

    A job that repeats its cell's IMP level 0 (repeats_imp_level_0), trained on one worker as the job would be,
    takes that level's record instead of training: the same figures, `same_as` naming the level, and no FLOP
    spent twice.
    """
    storage = Storage.open(storage)  # a folder, or this process's scratch copy of a store
    store = job_store(storage, job)
    storage.fresh(store.root)
    for spec in ([CellSpec.from_dict(job.source_cell)] if job.kind == "ticket" else []) + [job.target]:
        CellStore(storage, spec).pull()
    if store.finished():
        return store.result()
    started = time.perf_counter()
    spec = job.training_spec()
    accelerator = make_accelerator(spec)
    if accelerator.is_main_process:
        store.write_job({"id": job.id, "job": job.to_dict()})
    level = _imp_level_0(storage, job) if repeats_imp_level_0(job) else None
    if level is not None:  # what the job would train, figure for figure: the cell's level-0 record
        metrics = {k: level[k] for k in M.TASK_METRICS if k in level}
        record = _result(job, CellStore(storage, job.target).load_mask(0), level[M.METRIC], metrics, level[M.STEPS],
                         0, None, started, **{M.SAME_AS: f"{job.target.id}/level_0"})
        return _save(record, store, accelerator, " (the cell's IMP level 0, not trained again)")
    task, data, model = load_task(spec, accelerator)  # a fresh head: the target cell's own dense start
    params = pruning.prunable_parameters(model)
    masks = source_masks(job, storage, params)
    pruning.apply_masks(model, masks)  # θ0 ⊙ mask; train_round keeps the pruned weights at zero
    trained, stats = train_round(model, masks, data, spec, job.level, accelerator, store.checkpoints(),
                                 checkpoint_every, after_step)
    metrics = task.evaluate(trained, eval_loader(data, spec, accelerator), accelerator)
    return _save(_result(job, masks, task.metric, metrics, stats.steps, stats.steps_trained, stats.resumed_from,
                         started), store, accelerator)
