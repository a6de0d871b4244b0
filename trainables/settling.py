"""Where a round's mask stops moving: the early-bird observation (You et al. 2020; Chen et al. 2021, EarlyBERT).

At SNAPSHOTS evenly spaced steps of a round (the last is the round's end), the mask pruning would take from
the current weights — the next level's global top-k, exactly as `pruning.magnitude_prune` takes it after the
round — is compared with the one before it and with θ0's one-shot magnitude mask at the same sparsity; at the
end of the round every snapshot is also compared with the round's final mask. The curve says when the round's
ticket was decided and how far fine-tuning moved it from θ0's magnitudes.

With `spec.settle_stop` set, the round stops at the first snapshot whose mask agrees with the one before it
to at least that Jaccard: the level's ticket is the settled mask, trained for fewer steps. Its state (the
rows so far and the last snapshot's mask) rides in the round's checkpoints, so a resumed round decides
exactly as an uninterrupted one.
"""

from __future__ import annotations

import torch

from lnsub.trainables import pruning

SNAPSHOTS = 8  # points per round at which the mask pruning would take is recorded


def jaccard(a: pruning.Masks, b: pruning.Masks) -> float:
    """|kept in both| / |kept in either|, over every prunable tensor together (1.0 for two empty masks)."""
    both = sum(int((a[n] & b[n]).sum()) for n in a)
    either = sum(int((a[n] | b[n]).sum()) for n in a)
    return both / either if either else 1.0


def snapshot_steps(total: int, n: int = SNAPSHOTS) -> list[int]:
    """The steps of a round of `total` steps at which a snapshot is taken: i/n of the way, i = 1..n, distinct."""
    return sorted({max(1, round(total * i / n)) for i in range(1, n + 1)})


class Settling:
    """The settling curve of one level's round, and (with `threshold`) the decision to stop it early."""

    def __init__(self, masks: pruning.Masks, level: int, fraction: float, units: dict[str, list[str]],
                 theta0_mask: pruning.Masks, threshold: float | None = None):
        self.masks, self.level, self.fraction, self.units = masks, level, fraction, units
        self.theta0_mask, self.threshold = theta0_mask, threshold
        self.rows: list[dict] = []
        self.snapshots: dict[int, pruning.Masks] = {}  # step -> mask, for the final comparison
        self.previous: pruning.Masks | None = None
        self.stopped_at: int | None = None

    def due(self, step: int, total: int) -> bool:
        return step in snapshot_steps(total)

    def observe(self, step: int, total: int, model: torch.nn.Module) -> bool:
        """Record the mask pruning would take now; True when the round may stop here (it settled)."""
        params = dict(model.named_parameters())
        current = pruning.magnitude_prune({n: params[n] for n in self.masks}, self.masks, self.level + 1,
                                          self.fraction, self.units)
        row = {"step": step, "fraction_of_round": step / total, "jaccard_theta0": jaccard(current, self.theta0_mask),
               "jaccard_previous": jaccard(current, self.previous) if self.previous is not None else None}
        self.rows.append(row)
        self.snapshots[step] = current
        self.previous = current
        settled = (self.threshold is not None and row["jaccard_previous"] is not None
                   and row["jaccard_previous"] >= self.threshold and step < total)
        if settled:
            self.stopped_at = step
        return settled

    def state(self) -> dict:
        """What a checkpoint keeps so that a resumed round decides as an uninterrupted one."""
        return {"rows": [dict(r) for r in self.rows],
                "previous": {n: m.clone() for n, m in (self.previous or {}).items()}}

    def restore(self, state: dict | None) -> None:
        if not state:
            return
        self.rows = [dict(r) for r in state["rows"]]
        self.previous = {n: m.bool() for n, m in state["previous"].items()} or None

    def curve(self, final: pruning.Masks, total: int) -> dict:
        """settling.json: every snapshot with its Jaccard to the round's final mask (those taken in this process)."""
        rows = [{**r, "jaccard_final": jaccard(self.snapshots[r["step"]], final) if r["step"] in self.snapshots
                 else None} for r in self.rows]
        return {"level": self.level, "steps": total, "stopped_at": self.stopped_at, "threshold": self.threshold,
                "snapshots": rows}
