"""How long a sweep has left: the grid's expected cost, corrected by what the finished levels measured.

Each cell is expected to take its `cost_hours` (grid.yaml) on one worker, spread evenly over its
levels. Once levels have finished, their measured wall time over their expected time is a factor
that corrects every remaining level's expectation (a slower machine than the grid's, say). The
remaining work is then shared among the sweep's parallel slots; no schedule ends before its longest
remaining cell, so the estimate is max(remaining work / slots, longest remaining cell), the lower
bound `lnsub plan --devices` reports, computed on what is left.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Estimate:
    done: int  # cells finished
    total: int
    remaining_seconds: float | None  # None when nothing is known about the cost
    factor: float  # measured / expected over the finished levels (1.0 before any finished)
    measured_levels: int  # how many finished levels the factor rests on


def per_level_seconds(cost_hours: float, levels: int) -> float:
    """A cell's expected seconds a level: its cost over its levels 0..levels."""
    return cost_hours * 3600.0 / (levels + 1)


def estimate(statuses, cost_hours: dict[str, float], slots: int) -> Estimate:
    """The time left for the cells in `statuses` (CellStatus), each expected to cost cost_hours[cell id]."""
    expected_done = measured = 0.0
    levels_measured = 0
    for st in statuses:
        if st.levels_done and st.seconds > 0:
            expected_done += st.levels_done * per_level_seconds(cost_hours[st.spec.id], st.spec.levels)
            measured += st.seconds
            levels_measured += st.levels_done
    factor = measured / expected_done if expected_done > 0 else 1.0
    remaining = []
    for st in statuses:
        if st.state in ("done", "failed"):
            continue
        left = st.spec.levels + 1 - st.levels_done
        remaining.append(left * per_level_seconds(cost_hours[st.spec.id], st.spec.levels) * factor)
    done = sum(st.state == "done" for st in statuses)
    if not remaining:
        return Estimate(done, len(statuses), 0.0, factor, levels_measured)
    seconds = max(sum(remaining) / max(1, slots), max(remaining))
    return Estimate(done, len(statuses), seconds, factor, levels_measured)


def duration(seconds: float | None) -> str:
    """1h05m, 3m20s, 45s; '?' when unknown."""
    if seconds is None:
        return "?"
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
