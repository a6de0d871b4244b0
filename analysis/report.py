"""`lnsub report`: one self-contained HTML page of a sweep's results, each figure with a one-line reading.

It reads what the other analyses wrote (<analysis folder>/overlap, transfer,
similarity) and the cells' metrics from storage; a section whose analysis has not
run says which command makes it. Figures are embedded as PNG data URIs, so the
page is one file that opens anywhere, and it is logged to MLflow too.
"""

from __future__ import annotations

import base64
import html
import re
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from lnsub.analysis import claims as paper_claims
from lnsub.analysis import verdicts
from lnsub.analysis import captions
from lnsub.analysis.analyze import below_baseline, group_figures
from lnsub.analysis.figures import line_plot, mean_band
from lnsub.analysis.oneshot_tables import TABLES as ONESHOT_TABLES
from lnsub.analysis.overlap import random_jaccard
from lnsub.analysis.results import AnalysisResult
from lnsub.analysis.sweeps import Sweep, open_sweep
from lnsub.analysis.tables import read_csv, write_csv
from lnsub.analysis.tickets import ROUND, SOURCE_TEXT, THETA0
from lnsub.trainables.storage.local import write_text
from lnsub.trainables.metrics import LEVEL_SECONDS, SCORE, SPARSITY
from lnsub.trainables.store import CellStore
from lnsub.analysis.sweeps import cell_statuses, status_counts
from lnsub.trainables.tasks import get_task

SECTIONS = (("grid", "The grid and what ran"), ("claims", "The paper's claims"), ("tickets", "Winning tickets"),
            ("overlap", "Overlap of sub-networks across languages"), ("transfer", "Transfer matrices"),
            ("similarity", "Representation similarity"))
ONESHOT_SECTIONS = (("grid", "The grid and what ran"), ("oneshot", "One-shot discovery: scores, overlap, transfer, LAPE"))


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def figure(path: Path, reading: str) -> str:
    return (f'<figure>{_img(path)}<figcaption><b>Reading:</b> {html.escape(reading)}</figcaption></figure>')


def table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def missing(command: str) -> str:
    return f'<p class="missing">Not computed yet: run <code>{html.escape(command)}</code>, then this report again.</p>'


# --- sections ------------------------------------------------------------------------------------

def grid_section(sweep: Sweep) -> str:
    statuses = cell_statuses(sweep.storage, sweep.state)
    counts = status_counts(statuses)
    specs = sweep.specs
    languages = sorted({s.language for s in specs})
    tasks = sorted({s.task for s in specs})
    seeds = sorted({s.seed for s in specs})
    compute = sum(r.get(LEVEL_SECONDS, 0.0) for s in specs for r in CellStore(sweep.storage, s).all_metrics())
    out = [f"<p>Grid <b>{html.escape(sweep.state.grid_name)}</b> on model <code>{html.escape(specs[0].model)}"
           f"</code>: {len(tasks)} task(s) ({', '.join(tasks)}), {len(languages)} language(s), "
           f"seeds {', '.join(map(str, seeds))}, levels 0-{max(s.levels for s in specs)} "
           f"(sparsity up to {max(s.sparsities[-1] for s in specs):.0%}). "
           f"{counts['done']} of {len(statuses)} cells done, {counts['running']} running, "
           f"{counts['failed']} failed, {counts['interrupted']} interrupted, {counts['pending']} pending; {compute / 60:.1f} min of cell compute.</p>"]
    rows = []
    for st in statuses:
        s = st.spec
        schedule = (f"one-shot {s.method} {s.sparsity_pattern}" if s.method != "imp" else
                    f"{s.steps} steps" if s.steps is not None else f"{s.epochs:g} epochs")
        level = "-" if st.last_level is None else f"{st.last_level} of {s.levels}"  # as the CLI's live table
        rows.append([s.id, s.task, s.language, s.seed, st.state, level, schedule,
                     "" if st.score is None else f"{st.metric} {st.score:.4f}"])
    out.append(table(["cell", "task", "language", "seed", "state", "last level", "per round", "last score (metric)"], rows))
    for sk in sweep.state.skipped:
        out.append(f"<p>Skipped {html.escape(sk['task'])}/{html.escape(sk['language'])}: "
                   f"{html.escape(sk['reason'])}</p>")
    return "\n".join(out)


def score_curves(sweep: Sweep) -> dict[str, dict[str, dict[float, list[float]]]]:
    """{task: {language: {sparsity: [score of each seed]}}} from every cell's metrics (the IMP rounds)."""
    out = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for s in sweep.specs:
        for r in CellStore(sweep.storage, s).all_metrics():
            out[s.task][s.language][r[SPARSITY]].append(r[SCORE])
    return out


def theta0_curves(overlap: Path) -> dict[str, dict[str, dict[float, list[float]]]]:
    """The same from `lnsub tickets`' scores: each level's mask trained from θ0 with a fresh head."""
    out = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in read_csv(overlap.parent / "tickets" / "theta0_scores.csv"):
        if r["theta0_score"] != "":
            out[r["task"]][r["language"]][float(r["sparsity"])].append(float(r["theta0_score"]))
    return out


def _mean_series(langs: dict, style: dict, suffix: str = "") -> tuple[dict, dict, list[int]]:
    series, bands, seeds = {}, {}, []
    for i, (lang, points) in enumerate(sorted(langs.items())):
        xs = sorted(points)
        mean, low, high, n = mean_band([points[x] for x in xs])
        series[lang + suffix] = (xs, mean, dict(color=f"C{i}", **style))
        seeds.append(n)
        if n > 1:
            bands[lang + suffix] = (low, high)
    return series, bands, seeds


def score_figure(task: str, langs: dict, theta0: dict, tickets: list[dict], path: Path) -> tuple[Path, dict, dict]:
    """One task's score against sparsity: the IMP rounds (solid) and the masks trained from θ0 (dash-dot), mean
    over seeds per language with a ±1 std band, and each language's dense score (dotted) and ticket threshold
    (dashed) in its colour. Returns the path and the two series."""
    series, bands, seeds = _mean_series(langs, {})
    fresh, fresh_bands, _ = _mean_series(theta0, {"ls": "-."}, " (θ0)")
    colours = {lang: f"C{i}" for i, lang in enumerate(sorted(langs))}
    hlines = []
    for t in (t for t in tickets if t["task"] == task and t["language"] in colours):
        colour = colours[t["language"]]
        if t.get("dense_score", "") != "":
            hlines.append((float(t["dense_score"]), f"{t['language']} dense", dict(color=colour, ls=":")))
        if t.get("threshold", "") != "":
            hlines.append((float(t["threshold"]), f"{t['language']} ticket threshold", dict(color=colour, ls="--")))
    metric = get_task(task).metric
    note = ("bands: ±1 std over seeds; " if min(seeds) > 1 else "one seed: no band over seeds; ") + \
        "solid: IMP round (head carried over), dash-dot: the mask trained from θ0 with a fresh head; " \
        "dotted: dense score, dashed: the winning-ticket threshold"
    line_plot({**series, **fresh}, "sparsity", metric, f"{task}: validation {metric} of each ticket", path,
              ylim=None, percent_x=True, bands={**bands, **fresh_bands}, hlines=hlines, note=note)
    return path, series, fresh


def tickets_section(sweep: Sweep, overlap: Path, figures: Path, claims: dict[str, dict] | None = None) -> str:
    out = []
    rows = read_csv(overlap / "winning_tickets.csv")
    theta0 = theta0_curves(overlap)
    for task, langs in sorted(score_curves(sweep).items()):
        path, series, fresh_series = score_figure(task, langs, theta0.get(task, {}), rows,
                                                  figures / f"scores_{task}.png")
        info = get_task(task)
        metric = info.metric
        changes = [v[1][-1] - v[1][0] for v in series.values()]
        deepest = max(max(v[0]) for v in series.values())
        fresh = [v[1][-1] - v[1][0] for v in fresh_series.values()]
        better = "higher" if info.greater_is_better else "lower"
        reading = (f"From dense to {deepest:.0%} sparsity the IMP round {metric} changes by {np.mean(changes):+.4f} "
                   f"on average over languages" + (f", the {metric} of the same masks trained from θ0 by "
                                                   f"{np.mean(fresh):+.4f}" if fresh else
                                                   " (no θ0 scores yet: lnsub tickets)") + f" ({better} is better).")
        note = captions.head_carryover_note(captions.rising({k: (v[0], v[1]) for k, v in series.items()},
                                                            info.greater_is_better))
        out.append(figure(path, " ".join(p for p in (reading, note) if p)))
    if not rows:
        return "\n".join(out) + missing(f"lnsub analyze --name {sweep.name}")
    return "\n".join(out + ticket_table(sweep, rows, claims))


def ticket_table(sweep: Sweep, rows: list[dict], claims: dict[str, dict] | None = None) -> list[str]:
    """The winning-ticket table, saying which scores it read: θ0's (the IMP round's beside them), or what is missing."""
    langs = sorted({r["language"] for r in rows})
    grid = defaultdict(dict)
    for r in rows:
        theta0 = "θ0 missing" if r.get("ticket_sparsity", "") == "" else f"{float(r['ticket_sparsity']):.0%}"
        beside = "" if r.get("round_ticket_sparsity", "") == "" else f" (round {float(r['round_ticket_sparsity']):.0%})"
        grid[r["task"]][r["language"]] = theta0 + beside
    gaps = [r for r in rows if r.get("ticket_sparsity", "") == ""]
    out = [f"<p>Sparsest winning ticket per cell (the sparsest level within one std over seeds of the dense score, "
           f"or within 1% of it with one seed), as in Table 2 of the paper. <b>Scores: {SOURCE_TEXT[THETA0]}</b>; in "
           f"brackets, the ticket the {SOURCE_TEXT[ROUND]} would give.</p>",
           table(["task", *langs], [[t, *(grid[t].get(lang, "-") for lang in langs)] for t in sorted(grid)])]
    if gaps:
        levels = sorted({x for r in gaps for x in str(r.get("theta0_missing", "")).split()})
        out.append(f"<p class='reading'><b>Reading:</b> {len(gaps)} of {len(rows)} cells have no θ0 score at "
                   f"level(s) {', '.join(levels) or '?'}, so no ticket (the round scores are not used in their "
                   f"place): run <code>lnsub tickets --name {html.escape(sweep.name)}</code>, then <code>lnsub "
                   f"analyze</code>.</p>")
    sparsities = [float(r["ticket_sparsity"]) for r in rows if r.get("ticket_sparsity", "") != ""]
    if sparsities:
        reading = (f"{captions.range_phrase(sparsities, 'Sparsest winning tickets from θ0 scores')}; on mBERT the "
                   f"paper found 50% for almost every cell. {captions.verdict_clause('c', (claims or {}).get('c'))}")
        out.append(f"<p class='reading'><b>Reading:</b> {html.escape(reading)}</p>")
    return out


def _floats(rows: list[dict], *keys: str) -> list[dict]:
    """CSV rows with `keys` as numbers (an empty cell stays '')."""
    return [{**r, **{k: float(r[k]) if r.get(k, "") != "" else "" for k in keys}} for r in rows]


def _mean_of(rows: list[dict], key: str) -> float | None:
    values = [float(r[key]) for r in rows if r.get(key, "") != ""]
    return statistics.fmean(values) if values else None


def overlap_figures(overlap: Path, task: str, rows: list[dict]) -> list[str]:
    """Every level's heatmaps of one task (the total and the per-layer small multiples), deepest first."""
    out = []
    for level in sorted({int(r["level"]) for r in rows if r["task"] == task}, reverse=True):
        at = [r for r in rows if r["task"] == task and r["grouping"] == "total" and int(r["level"]) == level]
        sparsity = float(at[0]["sparsity"])
        rnd = random_jaccard(1 - sparsity)
        ranked = sorted(at, key=lambda r: float(r["jaccard"]))
        lo, hi = ranked[0], ranked[-1]
        flag = captions.below_baseline_phrase([(f"{r['language_a']} & {r['language_b']}", float(r["jaccard"]), rnd)
                                               for r in ranked if float(r["jaccard"]) < rnd])
        for heat in sorted(overlap.glob(f"overlap_{task}_s*_level{level}.png")):
            out.append(figure(heat, f"{sparsity:.0%} sparsity (level {level}): most alike {hi['language_a']} & "
                                    f"{hi['language_b']} ({float(hi['jaccard']):.3f}); least {lo['language_a']} & "
                                    f"{lo['language_b']} ({float(lo['jaccard']):.3f}); random baseline "
                                    f"{rnd:.3f}. Colours span the off-diagonal range; the diagonal (1) is grey."
                                    + (" " + flag if flag else "")))
        layers = [r for r in rows if r["task"] == task and r["grouping"] == "layer" and int(r["level"]) == level]
        below = [(f"{r['group']} {r['language_a']} & {r['language_b']}", float(r["jaccard"]), rnd) for r in layers
                 if float(r["jaccard"]) < rnd]
        for heat in sorted(overlap.glob(f"overlap_layers_{task}_s*_level{level}.png")):
            out.append(figure(heat, f"Per layer at {sparsity:.0%} sparsity: each layer's six matrices together, "
                                    f"one colour scale across the layers. " + (
                                        captions.below_baseline_phrase(below) or
                                        f"No layer's pair is below the random baseline {rnd:.3f}.")))
    return out


def overlap_section(sweep: Sweep, overlap: Path, claims: dict[str, dict]) -> str:
    rows = read_csv(overlap / "overlap.csv")
    if not rows:
        return missing(f"lnsub analyze --name {sweep.name}")
    baselines = read_csv(overlap / "overlap_baselines.csv")
    seeds = read_csv(overlap / "seed_overlap.csv")
    pairs = read_csv(overlap / "pair_overlap.csv")
    excess = _floats(read_csv(overlap / "excess_overlap.csv"), "sparsity", "random_matched")
    out = []
    for task in sorted({r["task"] for r in rows}):
        total = [r for r in rows if r["task"] == task and r["grouping"] == "total"]
        deepest = max(float(r["sparsity"]) for r in total)
        at = lambda items: [r for r in items if r["task"] == task and float(r["sparsity"]) == deepest]  # noqa: E731
        beyond = [r for r in at(pairs) if r["kind"] in ("cross_language_cross_seed", "cross_language_same_seed")]
        reading = captions.overlap_reading(
            task, deepest, _mean_of(at(total), "jaccard"), random_jaccard(1 - deepest), claims,
            matched=_mean_of(beyond, "random_matched"), ratio=_mean_of(beyond, "ratio"),
            excess=_mean_of(beyond, "excess_jaccard"), oneshot=_mean_of(at(baselines), "oneshot_pretrained"),
            same_language=_mean_of(at(seeds), "jaccard"),
            other_seed=_mean_of([r for r in at(pairs) if r["kind"] == "cross_language_cross_seed"], "jaccard"))
        curve = overlap / f"overlap_curve_{task}.png"
        if curve.exists():
            out.append(figure(curve, reading))
        out += overlap_figures(overlap, task, rows)
        groups = overlap / f"overlap_groups_{task}.png"
        if groups.exists():
            bars = group_figures(_floats(rows, "sparsity", "jaccard", "seed"), excess, task, deepest)
            means = {g: m for kind in bars.values() for g, m, _, _ in kind}
            best, worst = max(means, key=means.get), min(means, key=means.get)
            flag = captions.below_baseline_phrase(below_baseline(bars, random_jaccard(1 - deepest)))
            out.append(figure(groups, f"Across languages, overlap is highest in {best} ({means[best]:.3f}) and "
                                      f"lowest in {worst} ({means[worst]:.3f}); the dashed line is random masks of "
                                      f"one density, the black ticks random masks of the group's own densities. "
                                      + (flag or "No group is below its random baseline.")))
    out.append(excess_table(read_csv(overlap / "excess_overlap.csv")))
    return "\n".join(out)


KINDS = {"cross_language_cross_seed": "other language, other seed", "cross_language_same_seed":
         "other language, same seed", "same_language_cross_seed": "same language, other seed"}


def excess_table(rows: list[dict]) -> str:
    """excess_overlap.csv's totals: per task, level and kind of pair, the overlap against both baselines."""
    rows = [r for r in rows if r["grouping"] == "total"]
    if not rows:
        return ""

    def num(r, key, fmt):
        return "-" if r.get(key, "") == "" else format(float(r[key]), fmt)

    body = [[r["task"], f"{float(r['sparsity']):.0%}", KINDS.get(r["kind"], r["kind"]), r["pairs"],
             num(r, "jaccard", ".3f"), num(r, "random_matched", ".3f"), num(r, "ratio", ".3f"),
             num(r, "excess_jaccard", "+.3f"), num(r, "excess_jaccard_trained", "+.3f")] for r in rows]
    return ("<p class='reading'><b>Overlap beyond θ0</b> (mean over the pairs of each kind): the ratio of the shared "
            "kept weights to those expected were the two masks independent given θ0's magnitudes (quantile bins per "
            "matrix), the excess Jaccard over that expectation, and the excess given also each cell's level-0 "
            "trained weights. Per layer and component: excess_overlap.csv.</p>"
            + table(["task", "sparsity", "pairs", "n", "Jaccard", "random (matched densities)", "ratio beyond θ0",
                     "excess Jaccard", "excess given level-0 training"], body))


def transfer_section(sweep: Sweep, folder: Path, claims: dict[str, dict]) -> str:
    levels = sorted({int(m.group(1)) for p in folder.glob("transfer_matrix_level*.csv")
                     if (m := re.search(r"level(\d+)", p.name))})
    example = f"lnsub transfer --name {sweep.name} --level {max(s.levels for s in sweep.specs)}"
    if not levels:
        return missing(example)
    out = []
    for level in levels:
        matrix = read_csv(folder / f"transfer_matrix_level{level}.csv")
        summary = read_csv(folder / f"transfer_summary_level{level}.csv")
        for task in sorted({r["task"] for r in matrix}):
            path = folder / f"transfer_{task}_level{level}.png"
            rows = [r for r in summary if r["task"] == task]
            langs = {r["target"] for r in matrix if r["task"] == task}
            cross = [r for r in matrix if r["task"] == task and r["source"] in langs and r["source"] != r["target"]]
            ok = sum(r["success"] == "True" for r in cross)
            drop = {r["source"]: float(r["mean_relative_drop"]) for r in rows}
            lang_drop = [v for k, v in drop.items() if k in langs]
            task_info = get_task(task)
            rule = cross[0]["rule"] if cross else "one std over seeds"
            reading = (f"{task} ({task_info.metric}, {'higher' if task_info.greater_is_better else 'lower'} is "
                       f"better): {ok}/{len(cross)} cross-language transfers succeed (within {rule} of the "
                       f"target's own ticket); mean relative change {np.mean(lang_drop) if lang_drop else np.nan:+.2%}"
                       f" for language tickets")
            extra = [f"{k} {v:+.2%}" for k, v in drop.items() if k not in langs]
            reading += (", against " + ", ".join(extra)) if extra else ""
            if path.exists():
                out.append(figure(path, reading + ". " + captions.pooled(captions.verdict_clause("d", claims.get("d")))))
            out.append(table(["source", "mean relative drop", "successes"],
                             [[r["source"], f"{float(r['mean_relative_drop']):+.2%}",
                               f"{r['successes']}/{r['targets']}"] for r in rows]))
        out.append(head_reading(read_csv(folder / f"transfer_head_level{level}.csv")))
    return "\n".join(out)


def head_reading(rows: list[dict]) -> str:
    """The head carry-over artefact, made visible: IMP's ticket score (head carried over from level to level)
    against the same mask trained once with a fresh head (the diagonal transfer job)."""
    parts = []
    for task in sorted({r["task"] for r in rows}):
        mine = [r for r in rows if r["task"] == task]
        carried = statistics.fmean(float(r["carried_head"]) for r in mine)
        fresh = statistics.fmean(float(r["fresh_head"]) for r in mine)
        parts.append(f"{task} at {float(mine[0]['sparsity']):.0%}: {carried:.4f} with the carried head, "
                     f"{fresh:.4f} with a fresh one ({carried - fresh:+.4f}, {len(mine)} cells)")
    if not parts:
        return ""
    return ("<p class='reading'><b>Head carry-over:</b> as in the paper, IMP carries each level's task head "
            "into the next, so a level-k ticket's head has trained k+1 times; a rise of the score with sparsity "
            "can be that, not the mask. The same masks trained on the same schedule with a fresh head: "
            + "; ".join(parts) + ".</p>")


def similarity_section(sweep: Sweep, folder: Path, claims: dict[str, dict]) -> str:
    rows = read_csv(folder / "similarity.csv")
    if not rows:
        return missing(f"lnsub similarity --name {sweep.name}")
    top = max(int(r["layer"]) for r in rows)

    def mean(encoder: str, key: str, layer: int) -> float:
        return statistics.fmean(float(r[key]) for r in rows if r["encoder"] == encoder and int(r["layer"]) == layer)

    if "cka_debiased" in rows[0]:
        reading = captions.similarity_reading(top, mean("dense", "cka_debiased", top), mean("random", "cka_debiased", top),
                                              claims, mean("dense", "cka", top), mean("random", "cka", top))
    else:
        reading = (f"At the top layer the dense model's cross-language CKA is {mean('dense', 'cka', top):.3f} against "
                   f"{mean('random', 'cka', top):.3f} for a random encoder. " + captions.verdict_clause("f", claims.get("f")))
    out = [figure(folder / "similarity_cka.png", reading + " Bands: ±1 std over language pairs (one encoder of each "
                                                           "kind, no seeds).")]
    layers = range(top + 1)
    best = max(layers, key=lambda k: mean("dense", "retrieval", k))
    out.append(figure(folder / "similarity_retrieval.png",
                      f"Sentence retrieval (ratio margin, k=5) peaks at layer {best} for the dense model "
                      f"({mean('dense', 'retrieval', best):.3f}); the random encoder reaches "
                      f"{max(mean('random', 'retrieval', k) for k in layers):.3f}. Bands: ±1 std over language pairs."))
    out.append(retrieval_best_table(read_csv(folder / "retrieval_best.csv")))
    return "\n".join(out)


def retrieval_best_table(rows: list[dict]) -> str:
    """retrieval_best.csv: each encoder's best layer for nearest-neighbour P@1, per word-order group."""
    if not rows:
        return ""
    return ("<p class='reading'><b>Sentence retrieval P@1</b> (nearest neighbour by cosine, every ordered pair "
            "of languages, grouped by whether the two share a basic word order) at each encoder's best layer:</p>"
            + table(["encoder", "group", "best layer", "P@1", "chance", "pairs"],
                    [[r["encoder"], r["group"], r["best_layer"], f"{float(r['p1']):.3f}", f"{float(r['chance']):.3f}",
                      r["pairs"]] for r in rows]))


def claim_inputs(sweep: Sweep) -> paper_claims.ClaimInputs:
    deepest = max(sweep.specs, key=lambda s: s.levels)
    return paper_claims.load_inputs(sweep.analysis, sweep.name, deepest.sparsities)


RULES = (f"Verdicts: each claim is an effect (oriented so that > 0 supports it) with its standard error over the "
         f"cells (one language trained with one seed; the delete-one-cell jackknife), read with a one-sided t test: "
         f"holds at {verdicts.ALPHA_HOLDS:.0%} in the claim's direction, does not hold at {verdicts.ALPHA_FAILS:.1%} in "
         f"the opposite one, cannot tell otherwise. The verdict is the pre-registered unit's: the level nearest 50% "
         f"sparsity, pooled over tasks; every task and level is in the profile below, Holm-corrected. With one seed "
         f"the cells are the languages. The rules in full: analysis/claims.py and analysis/verdicts.py.")


def _se(row: dict, key: str = "effect_se") -> str:
    value = row.get(key)
    return "-" if value in (None, "") else f"{float(value):.3f}"


def claims_table(rows: list[dict]) -> str:
    return table(["claim", "statement", "the paper", "the testbed", "compared with", "effect ± SE", "verdict", "note"],
                 [[r["claim"], r["statement"], r["paper"], r["testbed"], r["comparison"], r["effect_text"],
                   r["verdict"], r["note"]] for r in rows])


def side_by_side_table(sweep: Sweep, control: Sweep, side: list[dict]) -> str:
    head = (f"<p><b>No claim is measurably weaker on the control: {paper_claims.CANNOT_SEPARATE}.</b></p>"
            if not paper_claims.separates(side) else "")
    return head + (f"<p>Model: sweep <b>{html.escape(sweep.name)}</b>; control: sweep <b>{html.escape(control.name)}"
                   f"</b>. Measurably weaker: the claim's effect at its primary unit is lower on the control, by the "
                   f"same rule (one-sided t test at {verdicts.ALPHA_HOLDS:.0%}, standard errors in quadrature).</p>"
                   ) + table(
        ["claim", "statement", "the paper", "model", "verdict", "control", "verdict", "effect: model − control",
         "measurably weaker on the control"],
        [[r["claim"], r["statement"], r["paper"], r["model"], r["model_verdict"], r["control"],
          r["control_verdict"], _difference(r), r["weaker_on_control"]] for r in side])


def _difference(r: dict) -> str:
    if r.get("effect_model") in (None, "") or r.get("effect_control") in (None, ""):
        return "-"
    diff = float(r["effect_model"]) - float(r["effect_control"])
    return f"{diff:+.3f} ± {_se(r, 'difference_se')}"


def profile_table(details: list[dict]) -> str:
    """Every task and level of each claim: effect ± SE and the Holm-corrected verdict (the primary unit first)."""
    if not details:
        return ""
    rows = []
    for u in details:
        where = "pooled (primary)" if u["primary"] else u["task"]
        sparsity = "" if u["sparsity"] != u["sparsity"] else f"{float(u['sparsity']):.0%}"  # NaN: no level
        effect = "-" if u["margin"] is None else f"{u['margin']:+.4f} ± {_se(u, 'se')}"
        p = "-" if u["p_holds"] is None else f"{u['p_holds']:.3g}"
        rows.append([u["claim"], where, sparsity, effect, p, u["verdict"]])
    return ("<p>Each claim's profile: every task and level on its own (verdicts Holm-corrected within each "
            "claim), beside the primary unit.</p>"
            + table(["claim", "task", "sparsity", "effect ± SE", "p (claim's direction)", "verdict"], rows))


def claims_section(sweep: Sweep, folder: Path, control: Sweep | None = None) -> tuple[str, list[dict]]:
    """The claims table (claims.csv in the report folder), or, with a control sweep, both side by side."""
    rows, details = paper_claims.claims(claim_inputs(sweep))
    theirs = paper_claims.claims(claim_inputs(control))[0] if control is not None else []
    side = paper_claims.compare(rows, theirs) if control is not None else None
    out = [claims_table(rows) if side is None else side_by_side_table(sweep, control, side)]
    out += [missing(c) for c in dict.fromkeys(r["command"] for r in rows + theirs if r["command"])]
    out += [profile_table(details), f"<p class='reading'>{html.escape(RULES)}</p>"]
    paper_claims.write(folder, rows, details, side)
    return "\n".join(out), rows


def oneshot_section(sweep: Sweep, control: Sweep | None = None) -> str:
    """The one-shot analysis's tables (analysis/oneshot_tables.py), and the control's beside them."""
    out = []
    for label, s in ((sweep.name, sweep), *(((f"control: {control.name}", control),) if control else ())):
        folder = s.analysis / "oneshot"
        if not (folder / "scores.csv").exists():
            out.append(missing(f"lnsub oneshot --name {s.name}"))
            continue
        for title, make in ONESHOT_TABLES:
            header, rows = make(folder)
            out.append(f"<h3>{html.escape(label)}: {html.escape(title)}</h3>{table(header, rows)}")
    return "\n".join(out)


def is_oneshot(sweep: Sweep) -> bool:
    return any(s.method != "imp" for s in sweep.specs)


# --- the page -----------------------------------------------------------------------------------

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} nav a{margin-right:1em} section{border-top:1px solid #ddd;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:1em 0} td,th{border:1px solid #ccc;padding:.2em .5em}
th{background:#f3f3f3} figure{margin:1.5em 0} img{max-width:100%} figcaption,.reading{font-size:.95em;color:#333}
.missing{color:#a33} code{background:#f5f5f5;padding:0 .2em}
"""
# Marks each section once its figures have decoded, so a headless browser can tell what it showed.
SCRIPT = """
window.addEventListener('load', function () {
  document.querySelectorAll('section').forEach(function (s) {
    var imgs = s.querySelectorAll('img');
    var ok = Array.prototype.every.call(imgs, function (i) { return i.complete && i.naturalWidth > 0; });
    s.setAttribute('data-figures', imgs.length);
    s.setAttribute('data-rendered', ok ? 'yes' : 'no');
  });
  document.body.setAttribute('data-ready', 'yes');
});
"""


def report(name: str, storage: str, tracking_uri: str | None = None, out: str | None = None,
           control: str | None = None) -> AnalysisResult:
    """Write <analysis folder>/report/report.html, with claims.csv beside it; `control` names a second sweep in
    the same storage (its default analysis folder) whose claims go side by side with this one's."""
    sweep = open_sweep(name, storage, tracking_uri, out)
    other = open_sweep(control, storage, tracking_uri) if control else None
    folder = sweep.folder("report")
    figures = folder / "figures"
    figures.mkdir(exist_ok=True)
    overlap, transfer, similarity = (sweep.analysis / k for k in ("overlap", "transfer", "similarity"))
    if is_oneshot(sweep):  # no IMP tickets to read claims from: the one-shot tables, beside the control's
        write_csv(folder / "claims.csv", [])
        return _page(name, sweep, folder, {"grid": grid_section(sweep), "oneshot": oneshot_section(sweep, other)},
                     ONESHOT_SECTIONS, control, [])
    claims_body, claim_rows = claims_section(sweep, folder, other)
    verdicts_by_claim = {r["claim"]: r for r in claim_rows}  # the captions word their claims by these verdicts
    bodies = {"grid": grid_section(sweep), "claims": claims_body,
              "tickets": tickets_section(sweep, overlap, figures, verdicts_by_claim),
              "overlap": overlap_section(sweep, overlap, verdicts_by_claim),
              "transfer": transfer_section(sweep, transfer, verdicts_by_claim),
              "similarity": similarity_section(sweep, similarity, verdicts_by_claim)}
    return _page(name, sweep, folder, bodies, SECTIONS, control, claim_rows)


def _page(name: str, sweep: Sweep, folder: Path, bodies: dict, sections_: tuple, control: str | None,
          claim_rows: list[dict]) -> AnalysisResult:
    """The HTML page of the given sections, written and published; the report's result."""
    what = "one-shot discovery per language" if is_oneshot(sweep) else "lottery tickets by IMP with rewinding to θ0"
    nav = " ".join(f'<a href="#{key}">{html.escape(title)}</a>' for key, title in sections_)
    sections = "\n".join(f'<section id="{key}"><h2>{html.escape(title)}</h2>\n{bodies[key]}\n</section>'
                         for key, title in sections_)
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>lnsub report: {html.escape(name)}"
            f"</title><style>{STYLE}</style><script>{SCRIPT}</script></head><body>"
            f"<h1>lnsub report: {html.escape(name)}</h1>"
            f"<p>Language-neutral sub-networks ({what}). Generated "
            f"{time.strftime('%Y-%m-%d %H:%M')} from {html.escape(sweep.storage.location)}.</p><nav>{nav}</nav>"
            f"{sections}</body></html>")
    path = folder / "report.html"
    write_text(path, page)
    sweep.publish(folder)
    return AnalysisResult("report", sweep, folder, params={"control": control} if control else {}, report=path,
                          claims=claim_rows)
