"""A cell's folder, keyed by its id (open_lth's layout, with atomic writes and checksums).

    <storage>/cells/<cell id>/spec.json
    <storage>/cells/<cell id>/level_<k>/mask.npz, mask.json   the mask level k trains with
    <storage>/cells/<cell id>/level_<k>/head.safetensors       task head after training level k (carried over)
    <storage>/cells/<cell id>/level_<k>/metrics.json           validation metrics of level k
    <storage>/cells/<cell id>/level_<k>/DONE                    written last
    <storage>/cells/<cell id>/level_<k>/checkpoint/step_<n>/   a round in progress (state.pt + meta.json)
    <storage>/cells/<cell id>/baselines/<kind>_s<sparsity>/    random and one-shot masks, same format
    <storage>/cells/<cell id>/DONE                              every level finished
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from trainables import masks as maskio
from trainables.atomic import DONE, atomic_path, is_done, mark_done, read_json, write_json
from trainables.spec import CellSpec

log = logging.getLogger(__name__)
HEAD_FILE, HEAD_META, METRICS = "head.safetensors", "head.json", "metrics.json"


def cells_root(storage: str | Path) -> Path:
    return Path(storage) / "cells"


class CellStore:
    def __init__(self, storage: str | Path, spec: CellSpec):
        self.spec = spec
        self.root = cells_root(storage) / spec.id

    # --- paths --------------------------------------------------------------------------
    def level_dir(self, level: int) -> Path:
        return self.root / f"level_{level}"

    def checkpoint_dir(self, level: int) -> Path:
        return self.level_dir(level) / "checkpoint"

    def baseline_dir(self, kind: str, sparsity: float) -> Path:
        return self.root / "baselines" / f"{kind}_s{sparsity:.4f}"

    # --- state --------------------------------------------------------------------------
    def has_spec(self) -> bool:
        return (self.root / "spec.json").exists()

    def write_spec(self) -> None:
        path = self.root / "spec.json"
        if not path.exists():
            write_json(path, {"id": self.spec.id, "spec": self.spec.to_dict()})

    def finished(self) -> bool:
        return is_done(self.root)

    def mark_finished(self) -> None:
        mark_done(self.root)

    def level_done(self, level: int) -> bool:
        return is_done(self.level_dir(level))

    def metrics(self, level: int) -> dict:
        return read_json(self.level_dir(level) / METRICS)

    def all_metrics(self) -> list[dict]:
        return [self.metrics(k) for k in range(self.spec.levels + 1) if self.level_done(k)]

    # --- masks and heads ------------------------------------------------------------------
    def save_mask(self, level: int, m: dict[str, torch.Tensor], **extra) -> dict:
        return maskio.save_masks(self.level_dir(level), m, level=level, cell=self.spec.id, **extra)

    def load_mask(self, level: int) -> dict[str, torch.Tensor]:
        return maskio.load_masks(self.level_dir(level))

    def save_head(self, level: int, head: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        with atomic_path(self.level_dir(level) / HEAD_FILE) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in head.items()}, str(tmp))
        write_json(self.level_dir(level) / HEAD_META,
                   {"sha256": maskio.sha256_file(self.level_dir(level) / HEAD_FILE), "names": sorted(head)})

    def load_head(self, level: int) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        folder = self.level_dir(level)
        meta = read_json(folder / HEAD_META)
        if maskio.sha256_file(folder / HEAD_FILE) != meta["sha256"]:
            raise maskio.CorruptMask(f"{folder / HEAD_FILE} does not match its checksum")
        return load_file(str(folder / HEAD_FILE))

    def save_metrics(self, level: int, metrics: dict) -> None:
        write_json(self.level_dir(level) / METRICS, metrics)

    def mark_level_done(self, level: int) -> None:
        mark_done(self.level_dir(level))

    # --- resume ---------------------------------------------------------------------------
    def _level_intact(self, level: int) -> bool:
        """A finished level is trusted only if its mask, head and metrics read back whole."""
        try:
            maskio.verify(self.level_dir(level))
            self.load_head(level)
            self.metrics(level)
            return True
        except (OSError, ValueError, KeyError, maskio.CorruptMask) as e:
            log.warning("cell %s level %d is damaged (%s); it will be recomputed", self.spec.id, level, e)
            return False

    def _invalidate(self, level: int) -> None:
        (self.level_dir(level) / DONE).unlink(missing_ok=True)
        (self.root / DONE).unlink(missing_ok=True)

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

    def clear_checkpoints(self, level: int) -> None:
        shutil.rmtree(self.checkpoint_dir(level), ignore_errors=True)
