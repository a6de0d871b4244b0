"""The paper's claims, each checked against a sweep's analysis files.

Pure functions: they take the rows of the CSVs the other analyses wrote (`ClaimInputs`) and return
one row per claim, with the paper's figure (wording from docs/method.md, never a number typed in here
for the testbed), the testbed's figure, the figure it is compared against, the effect with its
standard error, and a verdict. Nothing here reads storage or models.

Effects and verdicts (analysis/verdicts.py). Each claim is an effect m, oriented so that m > 0
supports it, estimated as a mean over observations that involve cells (a cell: one language trained
with one seed on one task). Its standard error is the delete-one-cell jackknife; the verdict is a
one-sided t test: holds at 4% in the claim's direction, does not hold at 0.5% in the opposite
direction (significantly the other way), cannot tell otherwise. With one seed the cells are the
languages, and the row says so.

One pre-registered primary unit per claim: the level nearest the paper's 50% sparsity, where its
tickets are (per task; a tie goes to the sparser level), pooled over tasks (the mean of the tasks'
effects, each task's cells its own). The claim's verdict is that unit's. Every task and level is
also reported on its own (claim_details.csv, the claim's profile), Holm-corrected as one family per
claim, so a profile verdict says "holds" only when it survives the correction.

The rules per claim:
  (a) m = mean over cross-language pairs of (Jaccard − the matched random baseline), the expected Jaccard
      of random masks with each mask's own per-matrix densities (d / (2 − d) is shown beside it; global
      magnitude pruning gives each matrix its own density, and the matched baseline is the higher one).
      Cross-language pairs are of other seeds; with one seed, of the same seed (the row says so).
  (b) m = mean over 2×2 blocks of cells (two languages × two seeds) of the block's two same-language
      Jaccards minus its two cross-language cross-seed Jaccards (halved): the same language with another
      seed against other languages with another seed, like for like, each cell's own tendency to overlap
      cancelling within a block. Needs two seeds. The note gives the within-seed confound on the same
      blocks: cross-language pairs of the same seed against those of other seeds.
  (c) one unit: the median over cells of the sparsest winning ticket, read from each level's mask trained from
      θ0 with a fresh head (analysis/tickets.py; the IMP round's head-carried median is shown beside it, and a
      cell without its θ0 scores makes the claim cannot tell, naming the command that runs them). Holds when
      it lies within one pruning step of 50% and the grid goes at least one step beyond 50% (else a ticket at
      the grid's end could be sparser still); does not hold when it lies more than one step from 50% and is not the
      grid's last level; otherwise cannot tell.
  (d) per task and transfer level, the relative cost of a transfer, (a(s,t) − a(t,t)) / a(t,t), sign
      flipped where lower is better, so > 0 is a loss; two effects: the random mask's cost minus other
      languages' tickets' cost, and the same for θ0's one-shot mask. Holds when both hold at the primary
      unit (the transfer level nearest 50%) and at least half the cross-language transfers of every task
      there succeed (within one std of a(t,t), transfer_matrix.csv): the "small drop". Does not hold when
      either effect does not hold, or fewer than half succeed.
  (e) m = mean over cross-language pairs of the excess Jaccard beyond θ0 (neutrality.py: the observed
      Jaccard minus the one expected were the two masks independent given θ0's magnitudes); the ratio
      observed / expected intersection and the stricter null's excess (given also each cell's level-0
      trained weights) are shown beside it. Pairs as in (a).
  (f) one unit: the top layer of similarity.csv; m = mean over language pairs of the debiased linear CKA
      of the dense model minus that of the random encoder; the cells are the languages (one encoder of
      each kind, no seeds); the biased CKA is shown beside it.
A claim whose analysis has not run cannot tell, and says which command makes it.

Control. Each claim's effect at its primary unit is compared between the model and its control (two
independent sweeps: standard errors in quadrature, Welch–Satterthwaite degrees of freedom); the claim
is measurably weaker on the control when the difference holds by the same rule. When no claim is,
the table says that the instrument cannot tell the multilingual model from its control.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from lnsub.analysis.pairs import CROSS_CROSS, CROSS_SAME, SAME_CROSS
from lnsub.analysis.tables import read_csv, write_csv
from lnsub.analysis.verdicts import (FAILS, HOLDS, UNSURE, Estimate, Term, difference, jackknife, profile_verdicts,
                                     term, verdict)
from lnsub.trainables.tasks import get_task

EPS = 1e-9

# The paper's figures, in docs/method.md's words ("The paper's claims"); tests check they are there verbatim.
PAPER = {
    "a": ("Sub-networks of different languages overlap far above random masks.",
          "far above random masks, d / (2 − d) (1/3 at 50% sparsity)"),
    "b": ("The same language with another seed overlaps most.",
          "92–99% same-language different-seed overlap"),
    "c": ("The sparsest winning tickets sit near 50% sparsity.", "50% for almost every cell"),
    "d": ("Transfer between languages costs only a small relative drop, and beats the random and one-shot masks.",
          "limited performance degradation, above the random and one-shot masks"),
    "e": ("Overlap across languages goes beyond what θ0's magnitudes alone explain.",
          "more than each mask's overlap with the one-shot magnitude mask of θ0"),
    "f": ("Representations of the multilingual model align across languages more than a random encoder's "
          "(Conneau et al.).", "above the random encoder, the lower bound"),
}


@dataclass
class ClaimInputs:
    """The analysis rows the claims read; an analysis that has not run leaves its rows empty."""

    name: str  # the sweep's name, for the commands that make what is missing
    sparsities: list[float]  # every level's sparsity in the grid, level 0 (dense) first
    pairs: list[dict] = field(default_factory=list)  # pair_overlap.csv
    tickets: list[dict] = field(default_factory=list)
    transfer_scores: dict[int, list[dict]] = field(default_factory=dict)  # level -> transfer_scores rows
    transfer_matrix: dict[int, list[dict]] = field(default_factory=dict)  # level -> transfer_matrix rows
    similarity: list[dict] = field(default_factory=list)


def load_inputs(analysis: Path, name: str, sparsities: list[float]) -> ClaimInputs:
    """The rows of every analysis CSV under an analysis folder (empty where one has not run)."""
    transfer = analysis / "transfer"
    levels = sorted(int(m.group(1)) for p in transfer.glob("transfer_scores_level*.csv")
                    if (m := re.fullmatch(r"transfer_scores_level(\d+)\.csv", p.name)))
    return ClaimInputs(
        name, list(sparsities), pairs=read_csv(analysis / "overlap" / "pair_overlap.csv"),
        tickets=read_csv(analysis / "overlap" / "winning_tickets.csv"),
        transfer_scores={k: read_csv(transfer / f"transfer_scores_level{k}.csv") for k in levels},
        transfer_matrix={k: read_csv(transfer / f"transfer_matrix_level{k}.csv") for k in levels},
        similarity=read_csv(analysis / "similarity" / "similarity.csv"))


# --- units, observations and estimates ------------------------------------------------------------

Cell = tuple  # (task, language, seed)


def _pct(x: float) -> str:
    return f"{x:.0%}"


def primary_level(levels: dict[int, float]) -> int:
    """The level nearest 50% sparsity ({level: sparsity}); a tie goes to the sparser level."""
    return min(levels, key=lambda k: (round(abs(levels[k] - 0.5), 9), -levels[k]))


def pair_cells(r: dict) -> tuple[Cell, Cell]:
    return (r["task"], r["language_a"], int(r["seed_a"])), (r["task"], r["language_b"], int(r["seed_b"]))


def by_task_level(pairs: list[dict]) -> dict[tuple[str, int], list[dict]]:
    out: dict = defaultdict(list)
    for r in pairs:
        out[(r["task"], int(r["level"]))].append(r)
    return dict(sorted(out.items()))


def pair_term(rows: list[dict], kind: str, value) -> list[Term]:
    """One stratum: the mean of value(row) over pairs of a kind; each pair involves its two cells."""
    mine = [r for r in rows if r["kind"] == kind]
    if not mine:
        return []
    involved = [pair_cells(r) for r in mine]
    return [term(1.0, [value(r) for r in mine], involved, sorted({c for p in involved for c in p}))]


def block_term(rows: list[dict], numerator: str) -> list[Term]:
    """One stratum: the mean over 2×2 blocks (languages l, m × seeds s, r) of the block's two pairs of a kind
    minus its two cross-language cross-seed pairs, halved. numerator: SAME_CROSS (l,s–l,r and m,s–m,r) or
    CROSS_SAME (l,s–m,s and l,r–m,r). Each cell's own tendency to overlap appears on both sides and cancels."""
    jac = {frozenset(pair_cells(r)): float(r["jaccard"]) for r in rows}
    cells = {c for r in rows for c in pair_cells(r)}
    langs, seeds = sorted({c[1] for c in cells}), sorted({c[2] for c in cells})
    task = next(iter(cells))[0] if cells else ""
    values, involved = [], []
    for l, m in combinations(langs, 2):
        for s, r in combinations(seeds, 2):
            a, b, c, d = (task, l, s), (task, l, r), (task, m, s), (task, m, r)
            top = [(a, b), (c, d)] if numerator == SAME_CROSS else [(a, c), (b, d)]
            keys = [frozenset(p) for p in top + [(a, d), (c, b)]]
            if all(k in jac for k in keys):
                values.append((jac[keys[0]] + jac[keys[1]] - jac[keys[2]] - jac[keys[3]]) / 2)
                involved.append((a, b, c, d))
    if not values:
        return []
    return [term(1.0, values, involved, sorted({x for block in involved for x in block}))]


@dataclass
class Unit:
    """One task and level of a claim (task "all": the primary unit, pooled over tasks)."""

    task: str
    level: int
    sparsity: float
    estimate: Estimate | None
    testbed: str = ""
    comparison: str = ""
    primary: bool = False
    result: str = UNSURE

    def row(self, claim: str) -> dict:
        e = self.estimate
        return {"claim": claim, "task": self.task, "level": self.level, "sparsity": self.sparsity,
                "primary": self.primary, "testbed": self.testbed, "comparison": self.comparison,
                "margin": None if e is None else e.value, "se": None if e is None else e.se,
                "df": None if e is None else e.df, "p_holds": None if e is None else e.p_holds,
                "p_fails": None if e is None else e.p_fails, "verdict": self.result}


def with_profile(primary: list[Unit], profile: list[Unit]) -> list[Unit]:
    """The primary unit(s) with their own verdicts, then the profile with Holm-corrected verdicts."""
    for u in primary:
        u.primary, u.result = True, verdict(u.estimate)
    for u, v in zip(profile, profile_verdicts([u.estimate for u in profile])):
        u.result = v
    return primary + profile


def claim_row(claim: str, testbed: str, comparison: str, result: str, effect: Estimate | None, note: str = "",
              command: str = "") -> dict:
    """One row of claims.csv (command: what makes the missing analysis, when it has not run)."""
    statement, paper = PAPER[claim]
    e = effect
    return {"claim": claim, "statement": statement, "paper": paper, "testbed": testbed, "comparison": comparison,
            "effect_text": "" if e is None else e.text(), "verdict": result, "note": note,
            "effect": None if e is None else e.value, "effect_se": None if e is None else e.se,
            "effect_df": None if e is None else e.df, "p": None if e is None else e.p_holds, "command": command}


def not_computed(claim: str, command: str) -> tuple[dict, list[dict]]:
    return claim_row(claim, "not computed", "", UNSURE, None, f"not computed yet: run {command}", command), []


# --- overlap claims: (a), (b), (e) -----------------------------------------------------------------

ONE_SEED = ("one seed: pairs of languages of that seed, the cells being the languages; the two cells of a pair "
            "share their data order, head initialisation and random stream, so part of the overlap may be the "
            "seed's rather than the language's (with several seeds, pairs of other seeds measure it)")


def cross_kind(pairs: list[dict]) -> tuple[str, str]:
    """The cross-language pairs a claim reads, and the note that says which: other seeds, or (one seed) the same."""
    if any(r["kind"] == CROSS_CROSS for r in pairs):
        return CROSS_CROSS, "pairs: other languages, other seeds"
    return CROSS_SAME, ONE_SEED


def _mean(rows: list[dict], key: str) -> float:
    values = [float(r[key]) for r in rows if r.get(key, "") not in ("", None)]
    return statistics.fmean(values) if values else float("nan")


def overlap_units(inp: ClaimInputs, build, describe) -> tuple[Unit, list[Unit]]:
    """The primary unit (each task's level nearest 50%, pooled) and the profile (every task and level) of an
    overlap claim; build(rows) -> the stratum's terms, describe(rows) -> (testbed, comparison) texts."""
    units = by_task_level(inp.pairs)
    levels: dict = defaultdict(dict)
    for (task, level), rows in units.items():
        levels[task][level] = float(rows[0]["sparsity"])
    primary = {task: primary_level(lv) for task, lv in levels.items()}
    profile = []
    for (task, level), rows in units.items():
        profile.append(Unit(task, level, levels[task][level], jackknife([build(rows)]), *describe(rows)))
    chosen = [units[(task, level)] for task, level in primary.items()]
    pooled = jackknife([build(rows) for rows in chosen])
    sparsity = statistics.fmean(levels[t][k] for t, k in primary.items())
    texts = [f"{t} at {_pct(levels[t][k])}: {describe(units[(t, k)])[0]}" for t, k in primary.items()]
    return Unit("all", -1, sparsity, pooled, "; ".join(texts), describe([r for rows in chosen for r in rows])[1]), profile


def overlap_claim(claim: str, inp: ClaimInputs, build, describe, note: str = "") -> tuple[dict, list[dict]]:
    if not inp.pairs:
        return not_computed(claim, f"lnsub analyze --name {inp.name}")
    primary, profile = overlap_units(inp, build, describe)
    units = with_profile([primary], profile)
    return (claim_row(claim, primary.testbed, primary.comparison, primary.result, primary.estimate, note),
            [u.row(claim) for u in units])


def claim_a(inp: ClaimInputs) -> tuple[dict, list[dict]]:
    """(a) Cross-language overlap above random masks with the same per-matrix densities."""
    kind, which = cross_kind(inp.pairs)

    def describe(rows):
        mine = [r for r in rows if r["kind"] == kind]
        return (f"Jaccard {_mean(mine, 'jaccard'):.3f}",
                f"random masks of the same per-matrix densities {_mean(mine, 'random_matched'):.3f} "
                f"(one density everywhere, d/(2−d): {_mean(mine, 'random_uniform'):.3f})")

    return overlap_claim("a", inp, lambda rows: pair_term(
        rows, kind, lambda r: float(r["jaccard"]) - float(r["random_matched"])), describe, which)


def claim_b(inp: ClaimInputs) -> tuple[dict, list[dict]]:
    """(b) The same language with another seed overlaps more than other languages with another seed."""
    if not inp.pairs:
        return not_computed("b", f"lnsub analyze --name {inp.name}")
    if not any(r["kind"] == SAME_CROSS for r in inp.pairs):
        return claim_row("b", "one seed: no same-language pair", "", UNSURE, None,
                         f"needs two seeds or more: a grid with several seeds, then lnsub analyze --name {inp.name}"), []

    def describe(rows):
        return (f"same language, other seed {_mean([r for r in rows if r['kind'] == SAME_CROSS], 'jaccard'):.3f}",
                f"other languages, other seeds {_mean([r for r in rows if r['kind'] == CROSS_CROSS], 'jaccard'):.3f}")

    confound, _ = overlap_units(inp, lambda rows: block_term(rows, CROSS_SAME), describe)
    c = confound.estimate
    note = ("" if c is None else f"within-seed confound (other languages of the same seed minus of other seeds, "
            f"same blocks): {c.text()}")
    return overlap_claim("b", inp, lambda rows: block_term(rows, SAME_CROSS), describe, note)


def claim_e(inp: ClaimInputs) -> tuple[dict, list[dict]]:
    """(e) Cross-language overlap beyond what θ0's magnitudes explain: excess Jaccard > 0 (ratio > 1)."""
    kind, which = cross_kind(inp.pairs)

    def describe(rows):
        mine = [r for r in rows if r["kind"] == kind]
        strict = _mean(mine, "excess_jaccard_trained")
        return (f"Jaccard {_mean(mine, 'jaccard'):.3f}, ratio to θ0's expectation {_mean(mine, 'ratio'):.3f}",
                f"expected given θ0's magnitudes {_mean(mine, 'expected_jaccard'):.3f}; given also the level-0 "
                f"trained weights: excess {'n/a' if math.isnan(strict) else f'{strict:+.3f}'}")

    return overlap_claim("e", inp, lambda rows: pair_term(rows, kind, lambda r: float(r["excess_jaccard"])), describe,
                         which)


# --- (c): the winning tickets --------------------------------------------------------------------

def _round_median(tickets: list[dict]) -> str:
    """The median ticket of the IMP round scores (head carried over), for the text beside the θ0 one."""
    values = [float(r["round_ticket_sparsity"]) for r in tickets if r.get("round_ticket_sparsity") not in ("", None)]
    return f"; from the IMP round scores (head carried over): median {_pct(statistics.median(values))}" if values else ""


def claim_c(inp: ClaimInputs) -> tuple[dict, list[dict]]:
    """(c) The median sparsest winning ticket within one pruning step of 50% (rule in the module docstring), the
    tickets read from each level's mask trained from θ0 with a fresh head; a cell whose θ0 scores are missing
    makes the claim cannot tell (never a silent fall-back to the IMP round scores)."""
    if not inp.tickets:
        return not_computed("c", f"lnsub analyze --name {inp.name}")
    missing = [r for r in inp.tickets if r.get("ticket_sparsity") in ("", None)]
    if missing:
        command = f"lnsub tickets --name {inp.name}"
        names = ", ".join(f"{r['task']}-{r['language']}" for r in missing[:3]) + (" ..." if len(missing) > 3 else "")
        text = f"θ0 scores missing for {len(missing)} of {len(inp.tickets)} cells ({names}){_round_median(inp.tickets)}"
        return claim_row("c", text, "", UNSURE, None, f"tickets are read from θ0 scores: run {command}, then lnsub "
                         f"analyze --name {inp.name} (lnsub study does both)", command), []
    grid = sorted(inp.sparsities)
    step = min(b - a for a, b in zip(grid, grid[1:]))
    last = grid[-1]
    values = [float(r["ticket_sparsity"]) for r in inp.tickets]
    median, seeds = statistics.median(values), max(int(r["seeds"]) for r in inp.tickets)
    distance = abs(median - 0.5)
    if distance <= step + EPS and last >= 0.5 + step - EPS:
        result = HOLDS
    elif distance > step + EPS and median < last - EPS:
        result = FAILS
    else:
        result = UNSURE
    spread = statistics.stdev(values) if len(values) >= 2 else None  # over cells: a spread, not an SE
    effect = Estimate(step - distance, spread, len(values) - 1 if spread is not None else None, len(values))
    rule = "one std over seeds" if seeds >= 2 else "1% of the dense score (one seed)"
    text = (f"median {_pct(median)} ({_pct(min(values))}–{_pct(max(values))} over {len(values)} cells; "
            f"{seeds} seed(s), tickets within {rule}; scores of each mask trained from θ0"
            f"{_round_median(inp.tickets)})")
    comparison = f"50% ± one step ({_pct(step)}); the grid ends at {_pct(last)}"
    u = Unit("all", grid.index(min(grid, key=lambda x: abs(x - median))), median, effect, text, comparison, True, result)
    note = "" if result != UNSURE else f"the grid ends at {_pct(last)}: a ticket there could be sparser still"
    row = claim_row("c", text, comparison, result, effect, note)
    row["effect_text"] = f"{effect.value:+.3f} (one pruning step minus the median's distance from 50%; a rule, no test)"
    return row, [u.row("c")]


# --- (d): transfer -------------------------------------------------------------------------------

def transfer_costs(scores: list[dict]) -> dict[str, dict[str, list[tuple[float, tuple]]]]:
    """task -> {"languages", "random", "oneshot"} -> [(relative cost, the cells the job involves)]; the cost is
    (a(s,t) − a(t,t)) / a(t,t), signed so that > 0 is a loss; languages: other languages' tickets only (not the
    diagonal, not other tasks' masks); a job involves its target's cell and, for a ticket, its source's."""
    own = {(r["task"], int(r["seed"]), r["target"]): float(r["score"]) for r in scores
           if r["source_kind"] == "ticket" and r["source"] == r["target"]}
    targets = {(task, t) for task, _, t in own}
    out: dict = defaultdict(lambda: defaultdict(list))
    for r in scores:
        task, seed, target = r["task"], int(r["seed"]), r["target"]
        base = own.get((task, seed, target))
        if base is None or not base or r["source"] == target:
            continue
        kind = r["source_kind"] if r["source_kind"] != "ticket" else "languages"
        if kind == "languages" and (task, r["source"]) not in targets:
            continue  # another task's mask (--cross-task): not a language transfer
        delta = (float(r["score"]) - base) / base
        cells = ((task, target, seed),) + (((task, r["source"], seed),) if kind == "languages" else ())
        out[task][kind].append((-delta if get_task(task).greater_is_better else delta, cells))
    return out


def cost_terms(costs: dict[str, list[tuple[float, tuple]]], kind: str) -> list[Term]:
    """One stratum: the mean cost of `kind`'s jobs minus that of other languages' tickets (> 0: tickets lose less)."""
    if kind not in costs or "languages" not in costs:
        return []
    units = sorted({c for k in (kind, "languages") for _, cells in costs[k] for c in cells})
    return [term(sign, [v for v, _ in costs[k]], [cells for _, cells in costs[k]], units)
            for sign, k in ((1.0, kind), (-1.0, "languages"))]


def _successes(matrix: list[dict], task: str) -> tuple[int, int]:
    langs = {r["target"] for r in matrix if r["task"] == task}
    cross = [r for r in matrix if r["task"] == task and r["source"] in langs and r["source"] != r["target"]]
    return sum(r["success"] == "True" for r in cross), len(cross)


def transfer_units(inp: ClaimInputs) -> tuple[list[Unit], list[Unit], list[bool], str]:
    """(the primary units (random, one-shot), the profile, the small-drop test of each task at the primary
    level, the testbed's text there)."""
    costs = {level: transfer_costs(scores) for level, scores in inp.transfer_scores.items()}
    sparsity = {level: float(next(iter(scores))["sparsity"]) for level, scores in inp.transfer_scores.items() if scores}
    first = primary_level(sparsity)
    labels = (("random", "random mask"), ("oneshot", "one-shot θ0 mask"))
    profile, primary, texts, small = [], [], [], []
    for level in sorted(costs):
        for task, c in sorted(costs[level].items()):
            for kind, label in labels:
                if kind in c and "languages" in c:
                    profile.append(Unit(task, level, sparsity[level], jackknife([cost_terms(c, kind)]),
                                        _cost_text(c["languages"]), f"{label} {_cost_text(c[kind])}"))
    for kind, label in labels:
        strata = [cost_terms(c, kind) for c in costs[first].values()]
        mine = [c[kind] for c in costs[first].values() if kind in c]
        primary.append(Unit("all", first, sparsity[first], jackknife(strata),
                            comparison=f"{label} {_cost_text([x for m in mine for x in m])}"))
    for task, c in sorted(costs[first].items()):
        ok, n = _successes(inp.transfer_matrix.get(first, []), task)
        small.append(2 * ok >= n > 0)
        texts.append(f"{task} at {_pct(sparsity[first])}: relative loss {_cost_text(c.get('languages', []))}, "
                     f"{ok}/{n} transfers succeed")
    return primary, profile, small, "; ".join(texts)


def _cost_text(costs: list[tuple[float, tuple]]) -> str:
    return f"{statistics.fmean(v for v, _ in costs):.2%} (mean of {len(costs)})" if costs else "n/a"


def claim_d(inp: ClaimInputs) -> tuple[dict, list[dict]]:
    """(d) Language tickets transfer with a small loss (half succeed at least) and lose less than random and
    one-shot masks, at the primary transfer level (pooled over tasks)."""
    if not inp.transfer_scores or not any(inp.transfer_scores.values()):
        return not_computed("d", f"lnsub transfer --name {inp.name} --level {len(inp.sparsities) - 1}")
    primary, profile, small, text = transfer_units(inp)
    units = with_profile(primary, profile)
    results = [u.result for u in primary]
    result = HOLDS if results and all(v == HOLDS for v in results) else FAILS if FAILS in results else UNSURE
    note = "effect: the weaker of the two comparisons"
    if not all(small):
        result = FAILS  # fewer than half the transfers are within one std of the target's own ticket
        note = ("verdict: fewer than half the transfers are within one std of the target's own ticket (see the "
                "testbed column), whatever the comparisons give; effect: the weaker of the two comparisons")
    for u in primary:
        u.testbed = text
    effects = [u.estimate for u in primary if u.estimate is not None]
    weakest = min(effects, key=lambda e: e.t if e.t is not None else -math.inf) if effects else None
    comparison = "; ".join(f"{u.comparison}: {'n/a' if u.estimate is None else u.estimate.text('.2%')}"
                           for u in primary)
    return claim_row("d", text, comparison, result, weakest, note), \
        [u.row("d") for u in units]


# --- (f): representations --------------------------------------------------------------------------

def claim_f(inp: ClaimInputs) -> tuple[dict, list[dict]]:
    """(f) Top-layer debiased CKA across languages: the dense model above the random encoder."""
    if not inp.similarity:
        return not_computed("f", f"lnsub similarity --name {inp.name}")
    if "cka_debiased" not in inp.similarity[0]:
        return not_computed("f", f"lnsub similarity --name {inp.name}")  # written before the debiased CKA
    top = max(int(r["layer"]) for r in inp.similarity)
    at = {enc: {(r["language_a"], r["language_b"]): r for r in inp.similarity
                if r["encoder"] == enc and int(r["layer"]) == top} for enc in ("dense", "random")}
    pairs = sorted(at["dense"].keys() & at["random"].keys())
    values = [float(at["dense"][p]["cka_debiased"]) - float(at["random"][p]["cka_debiased"]) for p in pairs]
    langs = sorted({x for p in pairs for x in p})
    effect = jackknife([[term(1.0, values, pairs, langs)]]) if pairs else None

    def mean(enc, key):
        return statistics.fmean(float(at[enc][p][key]) for p in pairs) if pairs else float("nan")

    testbed = (f"debiased CKA {mean('dense', 'cka_debiased'):.3f} at layer {top} (biased {mean('dense', 'cka'):.3f}); "
               f"retrieval {mean('dense', 'retrieval'):.3f}")
    comparison = (f"random encoder: debiased CKA {mean('random', 'cka_debiased'):.3f} (biased "
                  f"{mean('random', 'cka'):.3f}); retrieval {mean('random', 'retrieval'):.3f}")
    u = Unit("all", top, float("nan"), effect, testbed, comparison)
    units = with_profile([u], [])
    return claim_row("f", testbed, comparison, u.result, effect,
                     "one encoder of each kind: the cells are the languages, not seeds"), [x.row("f") for x in units]


CLAIMS = (claim_a, claim_b, claim_c, claim_d, claim_e, claim_f)


def claims(inp: ClaimInputs) -> tuple[list[dict], list[dict]]:
    """One row per claim (claims.csv) and the units behind them (claim_details.csv)."""
    rows, details = [], []
    for check in CLAIMS:
        row, units = check(inp)
        rows.append(row)
        details.extend(units)
    return rows, details


def _estimate(row: dict) -> Estimate | None:
    value, se, df = (_number(row.get(k)) for k in ("effect", "effect_se", "effect_df"))
    return None if value is None else Estimate(value, se, df if se is not None else None, 0)


def compare(model: list[dict], control: list[dict]) -> list[dict]:
    """The claims of a model and of its control side by side, with whether each is measurably weaker on the
    control: effect(model) − effect(control) holds by the verdict rule (module docstring)."""
    theirs = {r["claim"]: r for r in control}
    out = []
    for r in model:
        c = theirs.get(r["claim"], {})
        diff = difference(_estimate(r), _estimate(c))
        result = verdict(diff)
        weaker = (UNSURE if diff is None or diff.se is None else "yes" if result == HOLDS
                  else "no (stronger on the control)" if result == FAILS else "no (within spread)")
        out.append({"claim": r["claim"], "statement": r["statement"], "paper": r["paper"],
                    "model": r["testbed"], "model_verdict": r["verdict"], "control": c.get("testbed", "not computed"),
                    "control_verdict": c.get("verdict", UNSURE), "weaker_on_control": weaker,
                    "effect_model": _number(r.get("effect")), "effect_control": _number(c.get("effect")),
                    "difference_se": None if diff is None else diff.se,
                    "p": None if diff is None else diff.p_holds})
    return out


CANNOT_SEPARATE = "the instrument cannot tell the multilingual model from its control"


def separates(side_by_side: list[dict]) -> bool:
    """Whether any claim is measurably weaker on the control."""
    return any(r["weaker_on_control"] == "yes" for r in side_by_side)


def _number(x) -> float | None:
    """A float from a row (CSV text or a number); None for empty or missing."""
    if x is None or x == "":
        return None
    value = float(x)
    return None if math.isnan(value) else value


def write(folder: Path, rows: list[dict], details: list[dict], side_by_side: list[dict] | None = None) -> list[Path]:
    """claims.csv, claim_details.csv and, with a control, claims_vs_control.csv in `folder`."""
    paths = [folder / "claims.csv", folder / "claim_details.csv"]
    write_csv(paths[0], rows)
    write_csv(paths[1], details)
    if side_by_side is not None:
        paths.append(folder / "claims_vs_control.csv")
        write_csv(paths[2], side_by_side)
    return paths
