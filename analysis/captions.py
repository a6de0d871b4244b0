"""The report's readings: sentences made from the same numbers as the claims' verdicts (analysis/claims.py).

A caption never states a finding on its own: where a figure bears on one of the paper's claims, its
reading carries that claim's verdict, worded by the verdict ("holds", "does not hold", "cannot tell"),
so a figure cannot say "above" where the claims table says "cannot tell". Values under their random
baseline are named, and a score that rises with sparsity is explained by the carried-over task head.
"""

from __future__ import annotations

import statistics
from typing import Sequence

from lnsub.analysis.verdicts import FAILS, HOLDS, UNSURE

# Each claim as a question a reading can answer with its verdict (the statements of claims.PAPER, neutral).
QUESTIONS = {
    "a": "sub-networks of different languages overlap above random masks with their per-matrix densities",
    "b": "the same language with another seed overlaps more than other languages with another seed",
    "c": "the sparsest winning tickets sit near 50% sparsity",
    "d": "transfer between languages costs only a small drop and beats the random and one-shot masks",
    "e": "sub-networks of different languages overlap beyond what θ0's magnitudes alone explain",
    "f": "the dense model's representations align across languages more than a random encoder's",
}


def verdict_clause(claim: str, row: dict | None) -> str:
    """One sentence on claim `claim` worded by its verdict in `row` (a claims.csv row); '' without a row."""
    if not row:
        return ""
    question = QUESTIONS[claim]
    effect = f" (effect {row['effect_text']})" if row.get("effect_text") else ""
    verdict = row.get("verdict", UNSURE)
    if verdict == HOLDS:
        return f"Claim ({claim}) holds: {question}{effect}."
    if verdict == FAILS:
        return f"Claim ({claim}) does not hold: it is not so that {question}{effect}."
    return f"Claim ({claim}): cannot tell whether {question}{effect}."


def pooled(clause: str) -> str:
    """A verdict clause read under one task's figure: the verdict is the claims table's, pooled over tasks."""
    return f"In the claims table (pooled over tasks at the level nearest 50%): {clause}" if clause else ""


def range_phrase(values: Sequence[float], what: str, fmt: str = ".0%") -> str:
    """'<what> range from X to Y (median Z)', or '<what> are all at X' when they are one value."""
    lo, hi = min(values), max(values)
    if format(lo, fmt) == format(hi, fmt):
        return f"{what} {'is' if len(values) == 1 else 'are all'} at {format(lo, fmt)}"
    return f"{what} range from {format(lo, fmt)} to {format(hi, fmt)} (median {format(statistics.median(values), fmt)})"


def below_baseline_phrase(below: Sequence[tuple[str, float, float]]) -> str:
    """Names every (thing, value, baseline) under its random baseline; '' when none is."""
    if not below:
        return ""
    parts = [f"{name} {value:.3f} < {base:.3f}" for name, value, base in below]
    return "Below its random baseline: " + ", ".join(parts) + "."


def rising(series: dict[str, tuple[Sequence[float], Sequence[float]]], greater_is_better: bool,
           tolerance: float = 0.0) -> list[str]:
    """Labels whose score at the deepest sparsity is better than the dense one (by more than `tolerance`)."""
    sign = 1.0 if greater_is_better else -1.0
    return [label for label, (_, ys) in series.items() if sign * (ys[-1] - ys[0]) > tolerance]


def head_carryover_note(labels: Sequence[str]) -> str:
    """Why a score can rise with sparsity: the task head carries over from level to level (IMP as the paper)."""
    if not labels:
        return ""
    return (f"The score of {', '.join(labels)} improves with sparsity: IMP rewinds the encoder to θ0 but carries "
            f"the task head over from each level to the next, so a level-k ticket's head has trained k+1 times; the "
            f"rise is the head's training as much as the mask's (the transfer section trains the same masks with a "
            f"fresh head).")


def overlap_reading(task: str, sparsity: float, jaccard: float, uniform: float, claims: dict[str, dict],
                    matched: float | None = None, ratio: float | None = None, excess: float | None = None,
                    oneshot: float | None = None, same_language: float | None = None,
                    other_seed: float | None = None) -> str:
    """The overlap curve's reading: the numbers at the deepest level, then claims (a), (e) and (b) as they stand.
    `jaccard` is of pairs trained with one seed (the curve's), `other_seed` of pairs of other languages and seeds."""
    text = (f"At {sparsity:.0%} sparsity, {task} sub-networks of different languages trained with one seed overlap "
            f"{jaccard:.3f} (Jaccard)" + ("" if other_seed is None else f", with other seeds {other_seed:.3f}")
            + f", against {uniform:.3f} for random masks of one density")
    if matched is not None:
        text += f" and {matched:.3f} for random masks of each mask's per-matrix densities"
    if ratio is not None and excess is not None:
        text += (f"; their shared kept weights are {ratio:.3f} times those expected given θ0's magnitudes "
                 f"(excess Jaccard {excess:+.3f})")
    if oneshot is not None:
        text += f"; each ticket overlaps θ0's own one-shot magnitude mask {oneshot:.3f}"
    if same_language is not None:
        text += f"; the same language with another seed overlaps {same_language:.3f}"
    below = [(f"{task} across languages", jaccard, matched if matched is not None else uniform)]
    below = [b for b in below if b[1] < b[2]]
    clauses = [verdict_clause("a", claims.get("a")), verdict_clause("e", claims.get("e"))]
    if same_language is not None:
        clauses.append(verdict_clause("b", claims.get("b")))
    parts = [text + ".", below_baseline_phrase(below), pooled(" ".join(c for c in clauses if c))]
    return " ".join(p for p in parts if p)


def similarity_reading(layer: int, dense: float, random: float, claims: dict[str, dict],
                       dense_biased: float | None = None, random_biased: float | None = None) -> str:
    """The CKA curve's reading: the top layer's numbers and claim (f) as it stands (never a finding of its own)."""
    text = f"At the top layer ({layer}) the dense model's cross-language debiased CKA is {dense:.3f} against " \
           f"{random:.3f} for a random encoder"
    if dense_biased is not None and random_biased is not None:
        text += (f" (plug-in CKA {dense_biased:.3f} against {random_biased:.3f}: the plotted curve carries the "
                 f"plug-in estimator's bias at this number of sentences)")
    below = below_baseline_phrase([("the dense model's debiased CKA", dense, random)] if dense < random else [])
    return " ".join(p for p in (text + ".", below, verdict_clause("f", claims.get("f"))) if p)
