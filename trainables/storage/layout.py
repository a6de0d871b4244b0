"""The names storage is laid out by, spelled once, and the one checksum every commit uses.

    <storage>/cells/<cell id>/...          one cell's levels (trainables.store.CellStore)
    <storage>/transfer/<job id>/...        one transfer job (trainables.store.JobStore)
    <storage>/sweeps/<name>/...            a sweep's plan, lease, failures and analyses

A stage of work is committed by a DONE file written last, which names the SHA-256 of every
file it commits (storage.commit); work in progress (a round's checkpoints) and what was set
aside as damaged (quarantine) are never part of a commit and never pulled by a reader.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

DONE = "DONE"
CELLS, TRANSFER, SWEEPS = "cells", "transfer", "sweeps"
CHECKPOINT, QUARANTINE, BASELINES = "checkpoint", "quarantine", "baselines"
NEVER_PULLED = (CHECKPOINT, QUARANTINE)  # what a reader of finished work does not need
# baseline masks (folders under a cell's baselines/): one-shot magnitude pruning of θ0, and of the round-0 weights
ONESHOT_PRETRAINED, ONESHOT_TRAINED = "oneshot_pretrained", "oneshot_trained"
_CHUNK = 8 * 1024 * 1024


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def safe_relative(rel: str) -> bool:
    """A store key or recorded path that stays inside its root: relative, no '..', '.', empty part or backslash."""
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and "\\" not in rel and "\x00" not in rel and all(
        part not in ("", ".", "..") for part in parts)
