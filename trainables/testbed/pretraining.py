"""What the testbed's tiny models share in pretraining: the learning-rate schedule and one optimizer step."""

from __future__ import annotations

import math

import torch


def warmup_cosine(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first 5% of `steps`, then cosine decay to 0."""
    warmup = max(1, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * s / steps))))


def train_step(model, batch: dict, optimizer: torch.optim.Optimizer, schedule) -> float:
    """One step: the loss's gradients, clipped to norm 1, applied and cleared; returns the loss."""
    loss = model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad()
    return loss.item()
