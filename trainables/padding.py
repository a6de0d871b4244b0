"""Tokens computed per real token: what padding costs under each way of batching (bench/padding.py reports it).

A batch is computed at the length of its longest example (per-batch padding, as the collators pad), or at
max_length when every example is padded to it (the authors' configuration). Length grouping
(spec.group_by_length) orders each epoch so that batches hold examples of similar length. The orders
are train.epoch_order's, the ones training uses; the last incomplete batch is dropped, as in training.
"""

from __future__ import annotations

import dataclasses

from lnsub.trainables.spec import CellSpec
from lnsub.trainables.train import RoundData, epoch_order

POLICIES = ("max_length", "batch", "grouped")  # pad to max_length; per-batch padding; per-batch, length-grouped


def batch_lengths(lengths: list[int], order: list[int], batch: int) -> list[list[int]]:
    """The lengths of each whole batch of `order`."""
    return [[lengths[i] for i in order[start:start + batch]] for start in range(0, len(order) - batch + 1, batch)]


def epoch_batches(lengths: list[int], spec: CellSpec, policy: str, batch: int, level: int = 0,
                  epoch: int = 0) -> list[list[int]]:
    """The lengths of each whole batch of one epoch, in the order training draws them under `policy`."""
    grouped = dataclasses.replace(spec, group_by_length=policy == "grouped")
    data = RoundData(range(len(lengths)), None, None, None, train_lengths=lengths)
    return batch_lengths(lengths, epoch_order(data, grouped, level, epoch, batch), batch)


def batch_widths(lengths: list[int], spec: CellSpec, policy: str, batch: int, level: int = 0,
                 epoch: int = 0) -> list[int]:
    """The width each whole batch of one epoch is computed at: max_length, or its longest example."""
    return [width(b, spec, policy) for b in epoch_batches(lengths, spec, policy, batch, level, epoch)]


def width(lengths: list[int], spec: CellSpec, policy: str) -> int:
    """The width one batch of these lengths is computed at under `policy`."""
    return spec.max_length if policy == "max_length" else max(lengths)


def tokens_computed(lengths: list[int], spec: CellSpec, policy: str, batch: int, level: int = 0,
                    epoch: int = 0) -> tuple[int, int]:
    """(tokens computed, real tokens) over one epoch's whole batches under `policy`."""
    batches = epoch_batches(lengths, spec, policy, batch, level, epoch)
    return sum(width(b, spec, policy) * len(b) for b in batches), sum(sum(b) for b in batches)


def padding_ratio(lengths: list[int], spec: CellSpec, policy: str, batch: int | None = None) -> float:
    """Tokens computed per real token over one epoch (1.0: no padding)."""
    computed, real = tokens_computed(lengths, spec, policy, batch or spec.batch_size)
    return computed / real
