"""Where a cell's (and a transfer job's) files live: the one module that knows their names.

open_lth's layout, keyed by the cell's id, with atomic writes and checksums:

    <storage>/cells/<cell id>/spec.json
    <storage>/cells/<cell id>/level_<k>/mask.npz, mask.json   the mask level k trains with
    <storage>/cells/<cell id>/level_<k>/head.safetensors       task head after training level k (carried over)
    <storage>/cells/<cell id>/level_<k>/head.json               its names and checksum
    <storage>/cells/<cell id>/level_<k>/weights.safetensors    one-shot: the weights SparseGPT updated (+ weights.json)
    <storage>/cells/<cell id>/level_<k>/metrics.json           validation metrics of level k
    <storage>/cells/<cell id>/level_<k>/DONE                    written last
    <storage>/cells/<cell id>/level_<k>/checkpoint/step_<n>/   a round in progress (state.pt + meta.json)
    <storage>/cells/<cell id>/level_<k>/quarantine/            damaged checkpoints, out of the resume's sight
    <storage>/cells/<cell id>/baselines/<kind>_s<sparsity>/    random and one-shot masks, same format
    <storage>/cells/<cell id>/timing.json                       the last call's wall time
    <storage>/cells/<cell id>/DONE                              every level finished

    <storage>/transfer/<job id>/job.json       a transfer job (its id is a hash of it)
    <storage>/transfer/<job id>/checkpoint/    a job in progress; quarantine/ beside it
    <storage>/transfer/<job id>/result.json    its validation metrics; DONE written last

A file is distrusted (a level recomputed, a checkpoint quarantined) only on evidence
of damage: a missing file, a bad format, a checksum or size that does not match. Any
other OSError is a failure of the storage, not of the file: it propagates, the trial
fails, and Ray Tune retries it with everything still in place.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch

from lnsub.trainables import masks as maskio
from lnsub.trainables.metrics import PEAK_RSS_BYTES, SECONDS, STEPS_TRAINED, WORKERS
from lnsub.trainables.spec import CellSpec
from lnsub.trainables.storage import Storage, read_json
from lnsub.trainables.storage.layout import (BASELINES, CELLS, CHECKPOINT, DONE, NEVER_PULLED, ONESHOT_PRETRAINED,
                                             ONESHOT_TRAINED, QUARANTINE, TRANSFER, sha256_file)
from lnsub.trainables.storage.remote import disk_full_named

log = logging.getLogger(__name__)
HEAD_FILE, HEAD_META, METRICS, SPEC, TIMING = "head.safetensors", "head.json", "metrics.json", "spec.json", "timing.json"
SETTLING = "settling.json"  # where the round's mask stopped moving (trainables.settling)
WEIGHTS_FILE, WEIGHTS_META = "weights.safetensors", "weights.json"
CHECKPOINT_STATE, CHECKPOINT_META = "state.pt", "meta.json"
__all__ = ["CellStore", "JobStore", "Checkpoints", "ONESHOT_PRETRAINED", "ONESHOT_TRAINED", "DAMAGE"]
KEEP_CHECKPOINTS = 2  # the newest, and one to fall back to if the newest turns out damaged
# What a damaged file raises when read back (a missing one, bad JSON, a bad pickle); never other OSErrors.
DAMAGE = (FileNotFoundError, ValueError, KeyError, EOFError, pickle.UnpicklingError, maskio.CorruptMask)


def save_tensors(state: dict, path: Path) -> None:
    """torch.save through a file object, so that a full disk is an OSError that says so (storage.remote.DiskFull),
    not torch's "unexpected pos" from its own writer."""
    with disk_full_named(path), open(path, "wb") as f:
        torch.save(state, f)


def cells_root(storage: Storage) -> Path:
    return storage.path(CELLS)


class Checkpoints:
    """A round's checkpoints, newest first on resume; a damaged one is moved to `quarantine` and skipped."""

    def __init__(self, storage: Storage, folder: Path, quarantine: Path):
        self.storage, self.folder, self.quarantine_dir = storage, Path(folder), Path(quarantine)

    def steps(self) -> list[Path]:
        """Checkpoint folders, oldest first (the names sort by step)."""
        return sorted(self.folder.glob("step_*"))

    def save(self, step: int, state: dict) -> None:
        """Write state.pt, then meta.json with its checksum; keep the newest KEEP_CHECKPOINTS."""
        target = self.folder / f"step_{step:08d}"
        with self.storage.atomic_path(target / CHECKPOINT_STATE) as tmp:
            save_tensors(state, tmp)
        self.storage.write_json(target / CHECKPOINT_META,
                                {"step": step, "sha256": sha256_file(target / CHECKPOINT_STATE)})
        for old in self.steps()[:-KEEP_CHECKPOINTS]:
            self.storage.remove_tree(old)

    def read(self, candidate: Path) -> dict:
        """One checkpoint, checked against its checksum and step; DAMAGE if it is not whole."""
        meta = read_json(candidate / CHECKPOINT_META)
        if sha256_file(candidate / CHECKPOINT_STATE) != meta["sha256"]:
            raise ValueError("checksum mismatch")
        try:
            state = torch.load(candidate / CHECKPOINT_STATE, map_location="cpu", weights_only=True)
        except RuntimeError as e:  # torch's word for a file that is not a checkpoint (bad zip, bad record)
            raise ValueError(f"not a checkpoint: {e}") from e
        if state["step"] != meta["step"]:
            raise ValueError("step mismatch")
        return state

    def load_newest(self) -> dict | None:
        """The newest checkpoint that reads back whole; damaged ones are quarantined with a warning."""
        for candidate in reversed(self.steps()):
            try:
                return self.read(candidate)
            except DAMAGE as e:
                log.warning("checkpoint %s is damaged (%s: %s); falling back to the one before",
                            candidate, type(e).__name__, e)
                self.quarantine(candidate)
        return None

    def quarantine(self, candidate: Path) -> Path:
        """Move a damaged checkpoint where the resume never looks again (kept as evidence)."""
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        target, n = self.quarantine_dir / candidate.name, 0
        while target.exists():  # the same step can be damaged again after a later resume
            n += 1
            target = self.quarantine_dir / f"{candidate.name}.{n}"
        self.storage.move(candidate, target)
        return target

    def clear(self) -> None:
        self.storage.remove_tree(self.folder)


class CellStore:
    """One cell's folder in a storage (a Storage, or a folder's path), keyed by the cell's id."""

    def __init__(self, storage: Storage | str | Path, spec: CellSpec):
        self.storage = Storage.open(storage)
        self.spec = spec
        self.root = cells_root(self.storage) / spec.id

    # --- paths --------------------------------------------------------------------------
    def level_dir(self, level: int) -> Path:
        """The folder of level k; its mask reads back with masks.load_masks / load_packed."""
        return self.root / f"level_{level}"

    def checkpoint_dir(self, level: int) -> Path:
        return self.level_dir(level) / CHECKPOINT

    def quarantine_dir(self, level: int) -> Path:
        return self.level_dir(level) / QUARANTINE

    def baseline_dir(self, kind: str, sparsity: float) -> Path:
        return self.root / BASELINES / f"{kind}_s{sparsity:.4f}"

    def baseline_mask_path(self, kind: str, sparsity: float) -> Path:
        """The folder to hand masks.load_masks / load_packed for a baseline mask."""
        return self.baseline_dir(kind, sparsity)

    def mask_files(self, level: int) -> list[Path]:
        """Level k's mask files (data, then metadata), e.g. to copy them elsewhere."""
        return [self.level_dir(level) / maskio.MASK_FILE, self.level_dir(level) / maskio.MASK_META]

    def checkpoints(self, level: int) -> Checkpoints:
        return Checkpoints(self.storage, self.checkpoint_dir(level), self.quarantine_dir(level))

    # --- state --------------------------------------------------------------------------
    def has_spec(self) -> bool:
        return (self.root / SPEC).exists()

    def write_spec(self) -> None:
        if not self.has_spec():
            self.storage.write_json(self.root / SPEC, {"id": self.spec.id, "spec": self.spec.to_dict()})

    def finished(self) -> bool:
        return self.storage.is_done(self.root)

    def pull(self) -> None:
        """On an object store: bring the cell's finished work (not its checkpoints) into this process's copy."""
        self.storage.pull(self.root, exclude=NEVER_PULLED)

    def fresh(self) -> None:
        """On an object store: this cell as the store holds it, checkpoints included (a cell starts here)."""
        self.storage.fresh(self.root)

    def drop(self) -> None:
        """On an object store: free this process's copy of the cell (the store holds it all)."""
        self.storage.drop(self.root)

    def mark_finished(self) -> None:
        self.storage.mark_done(self.root)

    def level_done(self, level: int) -> bool:
        return self.storage.is_done(self.level_dir(level))

    def metrics(self, level: int) -> dict:
        return read_json(self.level_dir(level) / METRICS)

    def all_metrics(self) -> list[dict]:
        return [self.metrics(k) for k in range(self.spec.levels + 1) if self.level_done(k)]

    def write_timing(self, seconds: float, steps_trained: int, workers: int, peak_rss_bytes: int | None = None) -> None:
        self.storage.write_json(self.root / TIMING, {SECONDS: seconds, STEPS_TRAINED: steps_trained, WORKERS: workers,
                                        PEAK_RSS_BYTES: peak_rss_bytes})

    def timing(self) -> dict:
        return read_json(self.root / TIMING)

    # --- masks and heads ------------------------------------------------------------------
    def has_mask(self, level: int) -> bool:
        """Whether level k's mask was written (its metadata comes last); see _mask_ok for whole."""
        return (self.level_dir(level) / maskio.MASK_META).exists()

    def save_mask(self, level: int, m: dict[str, torch.Tensor], **extra) -> dict:
        return maskio.save_masks(self.storage, self.level_dir(level), m, level=level, cell=self.spec.id, **extra)

    def load_mask(self, level: int) -> dict[str, torch.Tensor]:
        return maskio.load_masks(self.level_dir(level))

    def has_baseline(self, kind: str, sparsity: float) -> bool:
        return (self.baseline_dir(kind, sparsity) / maskio.MASK_META).exists()

    def save_baseline(self, kind: str, sparsity: float, m: dict[str, torch.Tensor]) -> dict:
        return maskio.save_masks(self.storage, self.baseline_dir(kind, sparsity), m, kind=kind, sparsity=sparsity)

    def baseline(self, kind: str, sparsity: float) -> dict[str, torch.Tensor]:
        return maskio.load_masks(self.baseline_dir(kind, sparsity))

    def save_head(self, level: int, head: dict[str, torch.Tensor]) -> None:
        self._save_tensors(level, head, HEAD_FILE, HEAD_META)

    def load_head(self, level: int) -> dict[str, torch.Tensor]:
        return self._load_tensors(level, HEAD_FILE, HEAD_META)

    def save_weights(self, level: int, weights: dict[str, torch.Tensor]) -> None:
        """A one-shot level's pruned weights that are not θ0 ⊙ mask (SparseGPT updates the weights it keeps)."""
        self._save_tensors(level, weights, WEIGHTS_FILE, WEIGHTS_META)

    def has_weights(self, level: int) -> bool:
        return (self.level_dir(level) / WEIGHTS_META).exists()

    def load_weights(self, level: int) -> dict[str, torch.Tensor]:
        return self._load_tensors(level, WEIGHTS_FILE, WEIGHTS_META)

    def _save_tensors(self, level: int, tensors: dict[str, torch.Tensor], file: str, meta: str) -> None:
        from safetensors.torch import save_file  # heavy: only a level's end needs it

        with self.storage.atomic_path(self.level_dir(level) / file) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        self.storage.write_json(self.level_dir(level) / meta,
                                {"sha256": sha256_file(self.level_dir(level) / file), "names": sorted(tensors)})

    def _load_tensors(self, level: int, file: str, meta_file: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file  # heavy: only a level's start needs it

        folder = self.level_dir(level)
        meta = read_json(folder / meta_file)
        if sha256_file(folder / file) != meta["sha256"]:
            raise maskio.CorruptMask(f"{folder / file} does not match its checksum")
        return load_file(str(folder / file))

    def save_settling(self, level: int, curve: dict) -> None:
        self.storage.write_json(self.level_dir(level) / SETTLING, curve)

    def load_settling(self, level: int) -> dict | None:
        """The level's settling curve, or None (the last level has none; cells from before it was recorded)."""
        path = self.level_dir(level) / SETTLING
        return read_json(path) if path.is_file() else None

    def save_metrics(self, level: int, metrics: dict) -> None:
        self.storage.write_json(self.level_dir(level) / METRICS, metrics)

    def mark_level_done(self, level: int) -> None:
        self.storage.mark_done(self.level_dir(level))

    def clear_checkpoints(self, level: int) -> None:
        self.checkpoints(level).clear()

    # --- resume ---------------------------------------------------------------------------
    def _level_intact(self, level: int) -> bool:
        """A finished level is trusted unless its mask, head or metrics show damage (other OSErrors propagate)."""
        try:
            maskio.verify(self.level_dir(level))
            self.load_head(level)
            self.metrics(level)
            return True
        except DAMAGE as e:
            log.warning("cell %s level %d is damaged (%s); it will be recomputed", self.spec.id, level, e)
            return False

    def _invalidate(self, level: int) -> None:
        self.storage.remove(self.level_dir(level) / DONE)
        self.storage.remove(self.root / DONE)

    def first_unfinished_level(self) -> int:
        """The level to run next, after checking what the finished levels left behind.

        Level k needs its own mask (written when level k-1 finished) and level k-1's
        head. If either is damaged, level k-1 is redone (it produces both), and so on
        back to the last intact level.
        """
        k = 0
        while k <= self.spec.levels and self.level_done(k):
            k += 1
        # walk back while what level k needs is missing or damaged
        while k > 0:
            prev_ok = self._level_intact(k - 1)
            mask_ok = k > self.spec.levels or self._mask_ok(k)
            if prev_ok and mask_ok:
                break
            self._invalidate(k - 1)
            k -= 1
        return k

    def _mask_ok(self, level: int) -> bool:
        try:
            maskio.verify(self.level_dir(level))
            return True
        except maskio.CorruptMask as e:
            log.warning("cell %s: the mask of level %d is damaged (%s)", self.spec.id, level, e)
            return False


class JobStore:
    """A transfer job's folder, keyed by the job's id."""

    def __init__(self, storage: Storage | str | Path, job_id: str):
        self.storage = Storage.open(storage)
        self.root = self.storage.path(TRANSFER, job_id)

    def write_job(self, job: dict) -> None:
        if not (self.root / "job.json").exists():
            self.storage.write_json(self.root / "job.json", job)

    def finished(self) -> bool:
        return self.storage.is_done(self.root)

    def result(self) -> dict:
        return read_json(self.root / "result.json")

    def save_result(self, record: dict) -> None:
        """The result, then DONE, then the checkpoints go."""
        self.storage.write_json(self.root / "result.json", record)
        self.storage.mark_done(self.root)
        self.checkpoints().clear()

    def checkpoints(self) -> Checkpoints:
        return Checkpoints(self.storage, self.root / CHECKPOINT, self.root / QUARANTINE)


def pull_transfer_results(storage: Storage) -> None:
    """On an object store: bring every transfer job's result (not its checkpoints) into this process's copy."""
    storage.pull(storage.path(TRANSFER), exclude=NEVER_PULLED)
