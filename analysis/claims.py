"""The paper's claims, each checked against a sweep's analysis files (issue 11, items 4 and 5).

Pure functions: they take the rows of the CSVs the other analyses wrote (`ClaimInputs`) and
return one row per claim, with the paper's figure (wording from docs/method.md, never a
number typed in here for the testbed), the testbed's figure (mean and spread over seeds),
the figure it is compared against and a verdict. Nothing here reads storage or models.

Spread. A statistic is first computed per seed (e.g. the mean Jaccard over language pairs
of one seed's masks); the testbed's figure is the mean of those, and its spread the sample
standard deviation over seeds, shown as ± std with 4 seeds or more and as min–max with 2–3.
With one seed there is no spread over seeds: the standard deviation over the units the
mean is made of (language pairs, languages, transfer pairs) stands in for it, and the
figure says "one seed". With neither (one seed, one unit) the spread is unknown.

Verdict of one comparison, margin m (oriented so that m > 0 supports the claim) with spread
s (for a difference of two estimates, s = sqrt(s1² + s2²)), Z = 2:
  holds          m >  Z·s      the claim's direction, beyond twice the spread
  does not hold  m <= -Z·s     the opposite direction (or exactly none, with no spread)
  cannot tell    otherwise     within the spread, or the spread is unknown
A claim made of several comparisons (units: task × sparsity level, ...) holds when every unit
holds, does not hold when any unit does not hold, and otherwise cannot tell. A claim whose
analysis has not run cannot tell, and says which command makes it.

The rules per claim:
  (a) units: task × level in overlap.csv; m = mean cross-language Jaccard (total) − d/(2−d).
  (b) units: task × level in seed_overlap.csv; m = same-language other-seed Jaccard − the
      cross-language Jaccard of the same task and level (needs two seeds or more).
  (c) one unit: the median over cells of the sparsest winning ticket. Holds when it lies within
      one pruning step of 50% and the grid goes at least one step beyond 50% (else a ticket
      at the grid's end could be sparser still); does not hold when it lies more than one step
      from 50% and is not the grid's last level (so not cut off by it); otherwise cannot tell.
  (d) units: task × transfer level; per seed, the relative cost of a transfer,
      (a(s,t) − a(t,t)) / a(t,t), sign flipped where lower is better, so > 0 is a loss.
      Holds when language tickets cost less than the random mask's and less than θ0's one-shot
      mask's (two comparisons per unit, rule above), and at least half the cross-language
      transfers succeed by the method's rule (within one std of a(t,t), transfer_matrix.csv):
      the "small drop". Does not hold when either comparison does not hold, or fewer than half
      succeed.
  (e) units: task × level in overlap_baselines.csv; m = cross-language Jaccard − each ticket's
      Jaccard with θ0's one-shot magnitude mask. The verdict is at the deepest level of each
      task (where the tickets are); every level is listed, with the trend, in the details.
  (f) one unit: the top layer of similarity.csv; m = dense CKA − random encoder CKA, spread over
      language pairs (the analysis uses one encoder of each: there are no seeds).

Control (item 5). Each claim's effect is the mean margin over the units its verdict uses,
with the root-mean-square of their spreads. A claim is measurably weaker on the control when
effect(model) − effect(control) > Z·sqrt(s_model² + s_control²); "cannot tell" when either
side has no effect. When no claim is measurably weaker, the table says that the instrument
cannot tell the multilingual model from its control.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from lnsub.analysis.overlap import random_jaccard
from lnsub.analysis.tables import read_csv, write_csv
from lnsub.trainables.tasks import get_task

Z = 2.0  # how many spreads a margin must clear
HOLDS, FAILS, UNSURE = "holds", "does not hold", "cannot tell"
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
    overlap: list[dict] = field(default_factory=list)
    baselines: list[dict] = field(default_factory=list)
    seed_overlap: list[dict] = field(default_factory=list)
    tickets: list[dict] = field(default_factory=list)
    transfer_scores: dict[int, list[dict]] = field(default_factory=dict)  # level -> transfer_scores rows
    transfer_matrix: dict[int, list[dict]] = field(default_factory=dict)  # level -> transfer_matrix rows
    similarity: list[dict] = field(default_factory=list)


@dataclass
class Stat:
    """A statistic's mean over seeds, its spread, and how to say it."""

    mean: float
    spread: float | None
    seeds: int
    text: str


def load_inputs(analysis: Path, name: str, sparsities: list[float]) -> ClaimInputs:
    """The rows of every analysis CSV under an analysis folder (empty where one has not run)."""
    transfer = analysis / "transfer"
    levels = sorted(int(m.group(1)) for p in transfer.glob("transfer_scores_level*.csv")
                    if (m := re.fullmatch(r"transfer_scores_level(\d+)\.csv", p.name)))
    return ClaimInputs(
        name, list(sparsities), overlap=read_csv(analysis / "overlap" / "overlap.csv"),
        baselines=read_csv(analysis / "overlap" / "overlap_baselines.csv"),
        seed_overlap=read_csv(analysis / "overlap" / "seed_overlap.csv"),
        tickets=read_csv(analysis / "overlap" / "winning_tickets.csv"),
        transfer_scores={k: read_csv(transfer / f"transfer_scores_level{k}.csv") for k in levels},
        transfer_matrix={k: read_csv(transfer / f"transfer_matrix_level{k}.csv") for k in levels},
        similarity=read_csv(analysis / "similarity" / "similarity.csv"))


# --- statistics and verdicts ----------------------------------------------------------------------

def summarise(by_seed: dict, units: str, fmt: str = ".3f", over: str = "seeds") -> Stat:
    """{seed: [values]} -> the mean over seeds of each seed's mean, and its spread (module docstring)."""
    means = [statistics.fmean(v) for _, v in sorted(by_seed.items())]
    mean, n = statistics.fmean(means), len(means)
    if n >= 2:
        spread = statistics.stdev(means)
        text = (f"{mean:{fmt}} ± {spread:{fmt}} (std over {n} {over})" if n >= 4 else
                f"{mean:{fmt}} ({min(means):{fmt}}–{max(means):{fmt}} over {n} {over})")
        return Stat(mean, spread, n, text)
    values = next(iter(by_seed.values()))
    if len(values) >= 2:
        spread = statistics.stdev(values)
        return Stat(mean, spread, 1, f"{mean:{fmt}} (one seed; ± {spread:{fmt}} std over {len(values)} {units})")
    return Stat(mean, None, 1, f"{mean:{fmt}} (one seed, one {units.rstrip('s')}: no spread)")


def combined(*spreads: float | None) -> float | None:
    return None if any(s is None for s in spreads) else math.sqrt(sum(s * s for s in spreads))


def verdict(margin: float, spread: float | None) -> str:
    """One comparison: holds beyond Z spreads, does not hold at or beyond -Z spreads, else cannot tell."""
    if spread is None:
        return UNSURE
    if margin > Z * spread + EPS:
        return HOLDS
    if margin <= -Z * spread + EPS:
        return FAILS
    return UNSURE


def combine(verdicts: list[str]) -> str:
    """Every unit holds -> holds; any does not -> does not hold; else (or no unit) cannot tell."""
    if verdicts and all(v == HOLDS for v in verdicts):
        return HOLDS
    return FAILS if FAILS in verdicts else UNSURE


def effect(units: list[dict]) -> tuple[float | None, float | None]:
    """The mean margin over units, and the root-mean-square of their spreads (None where unknown)."""
    if not units:
        return None, None
    spreads = [u["spread"] for u in units]
    rms = None if None in spreads else math.sqrt(statistics.fmean(s * s for s in spreads))
    return statistics.fmean(u["margin"] for u in units), rms


def _pct(x: float) -> str:
    return f"{x:.0%}"


def unit(claim: str, task: str, level: int, sparsity: float, testbed: str, comparison: str, margin: float,
         spread: float | None, result: str | None = None) -> dict:
    """One comparison behind a claim (a row of claim_details.csv)."""
    return {"claim": claim, "task": task, "level": level, "sparsity": sparsity, "testbed": testbed,
            "comparison": comparison, "margin": margin, "spread": spread,
            "verdict": verdict(margin, spread) if result is None else result}


def claim_row(claim: str, testbed: str, comparison: str, result: str, units: list[dict], note: str = "",
              command: str = "") -> dict:
    """One row of claims.csv (command: what makes the missing analysis, when it has not run)."""
    statement, paper = PAPER[claim]
    size, spread = effect(units)
    return {"claim": claim, "statement": statement, "paper": paper, "testbed": testbed, "comparison": comparison,
            "verdict": result, "note": note, "effect": size, "effect_spread": spread, "command": command}


def not_computed(claim: str, command: str) -> tuple[dict, list[dict]]:
    return claim_row(claim, "not computed", "", UNSURE, [], f"not computed yet: run {command}", command), []


def cross_language(overlap: list[dict]) -> dict[tuple[str, int, float], dict[int, list[float]]]:
    """(task, level, sparsity) -> {seed: the total Jaccard of each pair of languages}."""
    out: dict = defaultdict(lambda: defaultdict(list))
    for r in overlap:
        if r["grouping"] == "total":
            out[(r["task"], int(r["level"]), float(r["sparsity"]))][int(r["seed"])].append(float(r["jaccard"]))
    return out


def deepest(units: list[dict]) -> list[dict]:
    """Each task's units at its deepest level."""
    last = {}
    for u in units:
        last[u["task"]] = max(last.get(u["task"], -1), u["level"])
    return [u for u in units if u["level"] == last[u["task"]]]


def headline(units: list[dict]) -> str:
    """The testbed's figure at each task's deepest level (once per task: (d) has two comparisons there)."""
    seen = {}
    for u in deepest(units):
        seen.setdefault(u["task"], f"{u['task']} at {_pct(u['sparsity'])}: {u['testbed']}")
    return "; ".join(seen.values())


# --- the claims ---------------------------------------------------------------------------------

def claim_a(inp: ClaimInputs) -> tuple[dict, list[dict]]:
    """(a) Cross-language overlap far above random masks, d/(2−d), at every task and level."""
    if not inp.overlap:
        return not_computed("a", f"lnsub analyze --name {inp.name}")
    units = []
    for (task, level, sparsity), by_seed in sorted(cross_language(inp.overlap).items()):
        st, rnd = summarise(by_seed, "language pairs"), random_jaccard(1 - sparsity)
        units.append(unit("a", task, level, sparsity, st.text, f"random {rnd:.3f}", st.mean - rnd, st.spread))
    comparison = "; ".join(f"{u['task']}: {u['comparison']}" for u in deepest(units))
    return claim_row("a", headline(units), comparison, combine([u["verdict"] for u in units]), units), units


def claim_b(inp: ClaimInputs) -> tuple[dict, list[dict]]:
    """(b) The same language with another seed overlaps more than other languages do, at every task and level."""
    if not inp.overlap:
        return not_computed("b", f"lnsub analyze --name {inp.name}")
    if not inp.seed_overlap:
        return claim_row("b", "one seed: no same-language pair", "", UNSURE, [],
                         f"needs two seeds or more: a grid with several seeds, then lnsub analyze --name {inp.name}"), []
    same: dict = defaultdict(lambda: defaultdict(list))
    for r in inp.seed_overlap:
        key = (r["task"], int(r["level"]), float(r["sparsity"]))
        same[key][(int(r["seed_a"]), int(r["seed_b"]))].append(float(r["jaccard"]))
    cross, units = cross_language(inp.overlap), []
    for key, by_pair in sorted(same.items()):
        if key not in cross:
            continue
        s, c = summarise(by_pair, "languages", over="seed pairs"), summarise(cross[key], "language pairs")
        units.append(unit("b", *key, s.text, f"other languages {c.text}", s.mean - c.mean, combined(s.spread, c.spread)))
    comparison = "; ".join(f"{u['task']}: {u['comparison']}" for u in deepest(units))
    return claim_row("b", headline(units), comparison, combine([u["verdict"] for u in units]), units), units


def claim_c(inp: ClaimInputs) -> tuple[dict, list[dict]]:
    """(c) The median sparsest winning ticket within one pruning step of 50% (rule in the module docstring)."""
    if not inp.tickets:
        return not_computed("c", f"lnsub analyze --name {inp.name}")
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
    spread = statistics.stdev(values) if len(values) >= 2 else None
    rule = "one std over seeds" if seeds >= 2 else "1% of the dense score (one seed)"
    text = (f"median {_pct(median)} ({_pct(min(values))}–{_pct(max(values))} over {len(values)} cells; "
            f"{seeds} seed(s), tickets within {rule})")
    u = unit("c", "all", grid.index(min(grid, key=lambda x: abs(x - median))), median, text,
             f"50% ± one step ({_pct(step)}); the grid ends at {_pct(last)}", step - distance, spread, result)
    note = "" if result != UNSURE else f"the grid ends at {_pct(last)}: a ticket there could be sparser still"
    return claim_row("c", text, u["comparison"], result, [u], note), [u]


def claim_f(inp: ClaimInputs) -> tuple[dict, list[dict]]:
    """(f) Top-layer CKA across languages: the dense model above the random encoder, beyond the spread over pairs."""
    if not inp.similarity:
        return not_computed("f", f"lnsub similarity --name {inp.name}")
    top = max(int(r["layer"]) for r in inp.similarity)
    at = {enc: [r for r in inp.similarity if r["encoder"] == enc and int(r["layer"]) == top]
          for enc in ("dense", "random")}
    st = {enc: summarise({0: [float(r["cka"]) for r in rows]}, "language pairs") for enc, rows in at.items()}
    ret = {enc: statistics.fmean(float(r["retrieval"]) for r in rows) for enc, rows in at.items()}
    texts = {enc: s.text.replace("one seed; ", "") for enc, s in st.items()}
    u = unit("f", "all", top, float("nan"), f"CKA {texts['dense']} at layer {top}; retrieval {ret['dense']:.3f}",
             f"random encoder CKA {texts['random']}; retrieval {ret['random']:.3f}",
             st["dense"].mean - st["random"].mean, combined(st["dense"].spread, st["random"].spread))
    return claim_row("f", u["testbed"], u["comparison"], u["verdict"], [u],
                     "one encoder of each kind: the spread is over language pairs, not seeds"), [u]


def transfer_costs(scores: list[dict]) -> dict[str, dict[str, dict[int, list[float]]]]:
    """task -> {"languages", "random", "oneshot"} -> {seed: relative costs}: (a(s,t) − a(t,t)) / a(t,t), signed
    so that > 0 is a loss; languages: other languages' tickets only (not the diagonal, not other tasks' masks)."""
    own = {(r["task"], int(r["seed"]), r["target"]): float(r["score"]) for r in scores
           if r["source_kind"] == "ticket" and r["source"] == r["target"]}
    targets = {(task, t) for task, _, t in own}
    out: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in scores:
        task, seed, target = r["task"], int(r["seed"]), r["target"]
        base = own.get((task, seed, target))
        if base is None or not base or r["source"] == target:
            continue
        kind = r["source_kind"] if r["source_kind"] != "ticket" else "languages"
        if kind == "languages" and (task, r["source"]) not in targets:
            continue  # another task's mask (--cross-task): not a language transfer
        delta = (float(r["score"]) - base) / base
        out[task][kind][seed].append(-delta if get_task(task).greater_is_better else delta)
    return out


def claim_d(inp: ClaimInputs) -> tuple[dict, list[dict]]:
    """(d) Language tickets transfer with a small loss (half succeed at least) and lose less than random and
    one-shot masks, at every task and transferred level."""
    if not inp.transfer_scores:
        return not_computed("d", f"lnsub transfer --name {inp.name} --level {len(inp.sparsities) - 1}")
    units, small = [], []
    for level, scores in sorted(inp.transfer_scores.items()):
        matrix = inp.transfer_matrix.get(level, [])
        for task, costs in sorted(transfer_costs(scores).items()):
            if "languages" not in costs:
                continue
            sparsity = float(next(r["sparsity"] for r in scores if r["task"] == task))
            langs = {r["target"] for r in matrix if r["task"] == task}
            cross = [r for r in matrix if r["task"] == task and r["source"] in langs and r["source"] != r["target"]]
            ok = sum(r["success"] == "True" for r in cross)
            small.append(2 * ok >= len(cross) > 0)
            lang = summarise(costs["languages"], "transfer pairs", ".2%")
            text = f"relative loss {lang.text}, {ok}/{len(cross)} transfers succeed"
            for kind, label in (("random", "random mask"), ("oneshot", "one-shot θ0 mask")):
                if kind in costs:
                    other = summarise(costs[kind], "targets", ".2%")
                    units.append(unit("d", task, level, sparsity, text, f"{label} {other.text}",
                                      other.mean - lang.mean, combined(lang.spread, other.spread)))
    result = combine([u["verdict"] for u in units])
    if not all(small):
        result = FAILS  # fewer than half the transfers are within one std of the target's own ticket
    comparison = "; ".join(f"{u['task']} at {_pct(u['sparsity'])}: {u['comparison']}" for u in deepest(units))
    return claim_row("d", headline(units), comparison, result, units), units


def claim_e(inp: ClaimInputs) -> tuple[dict, list[dict]]:
    """(e) Cross-language overlap above each ticket's overlap with θ0's one-shot mask: verdict at each task's
    deepest level, every level in the details and the trend in the row."""
    if not inp.overlap:
        return not_computed("e", f"lnsub analyze --name {inp.name}")
    oneshot: dict = defaultdict(lambda: defaultdict(list))
    for r in inp.baselines:
        oneshot[(r["task"], int(r["level"]), float(r["sparsity"]))][int(r["seed"])].append(float(r["oneshot_pretrained"]))
    cross, units = cross_language(inp.overlap), []
    for key, by_seed in sorted(oneshot.items()):
        if key in cross:
            j, o = summarise(cross[key], "language pairs"), summarise(by_seed, "languages")
            units.append(unit("e", *key, j.text, f"θ0 one-shot {o.text}", j.mean - o.mean, combined(j.spread, o.spread)))
    if not units:
        return claim_row("e", "no θ0 one-shot baseline", "", UNSURE, [],
                         "overlap_baselines.csv has no rows: the cells stored no one-shot θ0 masks"), []
    last = deepest(units)
    trend = []
    for task in sorted({u["task"] for u in units}):
        mine = [u for u in units if u["task"] == task]
        trend.append(f"{task}: margin {mine[0]['margin']:+.3f} at {_pct(mine[0]['sparsity'])} → "
                     f"{mine[-1]['margin']:+.3f} at {_pct(mine[-1]['sparsity'])}")
    comparison = "; ".join(f"{u['task']}: {u['comparison']}" for u in last)
    return claim_row("e", headline(units), comparison, combine([u["verdict"] for u in last]), last,
                     "; ".join(trend)), units


CLAIMS = (claim_a, claim_b, claim_c, claim_d, claim_e, claim_f)


def claims(inp: ClaimInputs) -> tuple[list[dict], list[dict]]:
    """One row per claim (claims.csv) and the comparisons behind them (claim_details.csv)."""
    rows, details = [], []
    for check in CLAIMS:
        row, units = check(inp)
        rows.append(row)
        details.extend(units)
    return rows, details


def compare(model: list[dict], control: list[dict]) -> list[dict]:
    """The claims of a model and of its control side by side, with whether each is measurably weaker on the
    control: effect(model) − effect(control) > Z·sqrt(s_model² + s_control²) (module docstring)."""
    theirs = {r["claim"]: r for r in control}
    out = []
    for r in model:
        c = theirs.get(r["claim"], {})
        e_m, e_c = _number(r.get("effect")), _number(c.get("effect"))
        s = combined(_number(r.get("effect_spread")), _number(c.get("effect_spread")))
        weaker = UNSURE
        if e_m is not None and e_c is not None and s is not None:
            drop = e_m - e_c  # equal effects (the same sweep twice) are within the spread, even a zero one
            weaker = ("yes" if drop > Z * s + EPS else "no (stronger on the control)" if drop < -Z * s - EPS
                      else "no (within spread)")
        out.append({"claim": r["claim"], "statement": r["statement"], "paper": r["paper"],
                    "model": r["testbed"], "model_verdict": r["verdict"], "control": c.get("testbed", "not computed"),
                    "control_verdict": c.get("verdict", UNSURE), "weaker_on_control": weaker,
                    "effect_model": e_m, "effect_control": e_c, "combined_spread": s})
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
