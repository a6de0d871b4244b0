"""`lnsub analyze`: cross-language overlap of a sweep's masks, with its baselines, and winning tickets.

Reads cells by id from storage (never Ray results), one level at a time, and
writes tidy CSVs and figures to <analysis folder>/overlap, where the analysis
folder is --out (default <storage>/sweeps/<name>/analysis). Every pair of cells, its
kind, baselines and overlap beyond θ0 are analysis/pairs.py's (it loads the pretrained
model once per task and seed, for θ0).
"""

from __future__ import annotations

import logging
import statistics
from collections import defaultdict
from itertools import combinations
from pathlib import Path

import numpy as np

from lnsub.analysis.figures import heatmap_grid, line_plot, mean_band, new_figure, save_png
from lnsub.analysis.overlap import (GROUPINGS, cluster_order, group_slices, heatmap_png, jaccard_matrix,
                                    random_jaccard, read_packed, winning_ticket)
from lnsub.analysis.pairs import CROSS_CROSS, CROSS_SAME, pair_tables
from lnsub.analysis.results import AnalysisResult
from lnsub.analysis.sweeps import open_sweep
from lnsub.analysis.tickets import THETA0, theta0_score
from lnsub.analysis.tables import write_csv
from lnsub.trainables import providers
from lnsub.trainables.spec import CellSpec
from lnsub.trainables.metrics import LEVEL, SCORE, SPARSITY
from lnsub.trainables.storage import Storage
from lnsub.trainables.store import ONESHOT_PRETRAINED, CellStore
from lnsub.trainables.tasks import get_task

log = logging.getLogger(__name__)
TICKET_TOLERANCE = 0.01  # with one seed: within 1% of the dense score counts as "within one std"


def cells_by_task_seed(specs: list[CellSpec]) -> dict[tuple[str, int], dict[str, CellSpec]]:
    """(task, seed) -> {language: its cell}."""
    groups: dict[tuple[str, int], dict[str, CellSpec]] = defaultdict(dict)
    for spec in specs:
        groups[(spec.task, spec.seed)][spec.language] = spec
    return groups


def _by_cell(specs: list[CellSpec]) -> dict[tuple[str, str], list[CellSpec]]:
    """(task, language) -> its cells, one per seed."""
    groups: dict[tuple[str, str], list[CellSpec]] = defaultdict(list)
    for spec in specs:
        groups[(spec.task, spec.language)].append(spec)
    return groups


def overlap_tables(root: Storage, specs: list[CellSpec], out: Path) -> tuple[list[dict], list[dict]]:
    """Jaccard rows (every pair, grouping, level) and baseline rows; heatmaps of the totals."""
    rows, baselines = [], []
    for (task, seed), cells in sorted(cells_by_task_seed(specs).items()):
        levels = max(s.levels for s in cells.values())
        for level in range(1, levels + 1):  # level 0 is the all-ones mask: nothing to compare
            stores = {lang: CellStore(root, s) for lang, s in sorted(cells.items())}
            ready = {lang: st for lang, st in stores.items() if st.level_done(level)}
            if len(ready) < 2:
                continue
            masks = {lang: read_packed(st.level_dir(level)) for lang, st in ready.items()}
            sparsity = next(iter(ready.values())).spec.sparsities[level]
            density = 1 - sparsity
            ref = next(iter(masks.values()))
            kinds = {group: by for by in GROUPINGS for group in group_slices(ref, by)}
            matrices = jaccard_matrix(masks, by=GROUPINGS)
            for group, (labels, matrix) in matrices.items():
                kind = kinds[group]
                for i, a in enumerate(labels):
                    for j, b in enumerate(labels):
                        if i < j:
                            rows.append({"task": task, "seed": seed, "level": level, "sparsity": sparsity,
                                         "grouping": kind, "group": group, "language_a": a,
                                         "language_b": b, "jaccard": float(matrix[i, j])})
                if group == "all":
                    order = cluster_order(matrix, labels)
                    index = [labels.index(x) for x in order]
                    heatmap_png(matrix[index][:, index], order, f"{task}: mask overlap at {sparsity:.0%} sparsity "
                                f"(seed {seed})", out / f"overlap_{task}_s{seed}_level{level}.png",
                                baseline=random_jaccard(density))
                    layers = {g.removeprefix("layer_").replace("_layer_", " "): m[index][:, index]
                              for g, (_, m) in matrices.items() if kinds[g] == "layer"}
                    if layers:
                        heatmap_grid({f"layer {k}": m for k, m in layers.items()}, order,
                                     f"{task}: mask overlap per layer at {sparsity:.0%} sparsity (seed {seed})",
                                     out / f"overlap_layers_{task}_s{seed}_level{level}.png",
                                     baseline=random_jaccard(density))
            # each mask against θ0's one-shot mask: how close the ticket stays to the pretrained magnitudes
            for lang, st in ready.items():
                if st.has_baseline(ONESHOT_PRETRAINED, sparsity):
                    oneshot = st.baseline_mask_path(ONESHOT_PRETRAINED, sparsity)
                    _, m = jaccard_matrix({"ticket": masks[lang], "oneshot": read_packed(oneshot)}, by="total")["all"]
                    baselines.append({"task": task, "seed": seed, "level": level, "sparsity": sparsity,
                                      "language": lang, "random_closed_form": random_jaccard(density),
                                      "oneshot_pretrained": float(m[0, 1])})
    return rows, baselines


def _ticket(levels: list[dict], dense: list[float], greater: bool) -> dict:
    """winning_ticket with this module's rule: one std over seeds, or 1% of the dense score with one seed."""
    tolerance = TICKET_TOLERANCE * abs(dense[0]) if len(dense) < 2 else None
    return winning_ticket(levels, dense, greater, tolerance)


def _curve(scores: list[list[float]], sparsities: list[float]) -> list[dict]:
    """Per level, the mean score over seeds (scores[seed][level])."""
    return [{LEVEL: k, SPARSITY: sparsities[k], SCORE: statistics.fmean(s[k] for s in scores)}
            for k in range(len(sparsities))]


def theta0_ticket(root: Storage, seeds: list[CellSpec], common: int, greater: bool) -> dict:
    """The ticket read from θ0 scores (tickets.py), or, when a level's score is missing, which ones are."""
    scores = [[theta0_score(root, s, k) for k in range(common)] for s in seeds]
    missing = sorted({k for row in scores for k, v in enumerate(row) if v is None})
    if missing:
        return {"theta0_missing": " ".join(map(str, missing)), "dense_score": None, "ticket_level": None,
                "ticket_sparsity": None, "ticket_score": None, "threshold": None}
    ticket = _ticket(_curve(scores, seeds[0].sparsities[:common]), [s[0] for s in scores], greater)
    return {"theta0_missing": "", "dense_score": statistics.fmean(s[0] for s in scores),
            "ticket_level": ticket["level"], "ticket_sparsity": ticket["sparsity"], "ticket_score": ticket["score"],
            "threshold": ticket["threshold"]}


def winning_tickets(root: Storage, specs: list[CellSpec]) -> list[dict]:
    """Per (task, language): the sparsest level within one std over seeds (or 1%) of the dense score, read from
    each level's mask trained from θ0 with a fresh head (tickets.py); the IMP round's head-carried scores give
    the round_* columns beside it. A level whose θ0 score is missing leaves the θ0 ticket empty and is named in
    theta0_missing: the table never falls back to the round scores."""
    out = []
    for (task, language), seeds in sorted(_by_cell(specs).items()):
        metrics = [CellStore(root, s).all_metrics() for s in seeds]
        common = min(len(m) for m in metrics)
        if common == 0:
            continue
        greater = get_task(task).greater_is_better
        rounds = _ticket(_curve([[m[k][SCORE] for k in range(common)] for m in metrics], seeds[0].sparsities[:common]),
                         [m[0][SCORE] for m in metrics], greater)
        row = {"task": task, "language": language, "seeds": len(seeds), "score_source": THETA0,
               **theta0_ticket(root, seeds, common, greater)}
        row.update({"round_dense_score": statistics.fmean(m[0][SCORE] for m in metrics),
                    "round_ticket_level": rounds["level"], "round_ticket_sparsity": rounds["sparsity"],
                    "round_ticket_score": rounds["score"], "round_threshold": rounds["threshold"]})
        out.append(row)
    return out


def seed_overlap(root: Storage, specs: list[CellSpec]) -> list[dict]:
    """Same language, different seeds: the total Jaccard of every pair of seeds' masks, per level."""
    rows = []
    for (task, language), seeds in sorted(_by_cell(specs).items()):
        if len(seeds) < 2:
            continue
        for level in range(1, max(s.levels for s in seeds) + 1):
            stores = {s.seed: CellStore(root, s) for s in seeds}
            ready = {seed: st for seed, st in sorted(stores.items()) if st.level_done(level)}
            if len(ready) < 2:
                continue
            labels, matrix = jaccard_matrix({str(seed): read_packed(st.level_dir(level))
                                             for seed, st in ready.items()}, by="total")["all"]
            sparsity = next(iter(ready.values())).spec.sparsities[level]
            for (i, a), (j, b) in combinations(enumerate(labels), 2):
                rows.append({"task": task, "language": language, "level": level, "sparsity": sparsity,
                             "seed_a": int(a), "seed_b": int(b), "jaccard": float(matrix[i, j]),
                             "random_closed_form": random_jaccard(1 - sparsity)})
    return rows


def _seed_means(items: list[dict], xs: list[float], key: str, seed_of=lambda r: r["seed"]) -> list[list[float]]:
    """Per x: the mean of `key` within each seed (over language pairs or languages), one value per seed."""
    out = []
    for x in xs:
        at = [r for r in items if r["sparsity"] == x]
        out.append([float(np.mean([r[key] for r in at if seed_of(r) == s])) for s in sorted({seed_of(r) for r in at})])
    return out


def _overlap_curve(series: dict, bands: dict, label: str, items: list[dict], key: str, style: dict,
                   seed_of=None) -> int:
    """Add one mean-over-seeds line and its ±1 std band over seeds; returns how many seeds it has at fewest."""
    xs = sorted({r["sparsity"] for r in items})
    mean, low, high, seeds = mean_band(_seed_means(items, xs, key, seed_of or (lambda r: r["seed"])))
    series[label] = (xs, mean, style)
    if seeds > 1:
        bands[label] = (low, high)
    return seeds


def overlap_curves(rows: list[dict], baselines: list[dict], seeds: list[dict], folder: Path,
                   pairs: list[dict] = (), excess: list[dict] = ()) -> list[Path]:
    """Per task: mean cross-language Jaccard against sparsity (bands: ±1 std over seeds) beside its baselines;
    and by layer/component at the deepest level, each bar against its own random baseline."""
    paths = []
    for task in sorted({r["task"] for r in rows}):
        total = [r for r in rows if r["task"] == task and r["grouping"] == "total"]
        xs = sorted({r["sparsity"] for r in total})
        series, bands = {}, {}
        n = _overlap_curve(series, bands, "across languages (mean over pairs)", total, "jaccard",
                           dict(lw=2.5, color="C0"))
        same_seed = [r for r in seeds if r["task"] == task]
        if same_seed:  # its spread is over the languages (each language's pairs of seeds)
            _overlap_curve(series, bands, "same language, other seed", same_seed, "jaccard", dict(color="C2"),
                   seed_of=lambda r: r["language"])
        base = [b for b in baselines if b["task"] == task]
        if base:
            _overlap_curve(series, bands, "ticket vs θ0 one-shot mask", base, "oneshot_pretrained",
                           dict(color="C1", ls="-."))
        series["random masks, d/(2-d)"] = (xs, [random_jaccard(1 - x) for x in xs], dict(color="grey", ls="--"))
        cross = [p for p in pairs if p["task"] == task and p["kind"] in (CROSS_CROSS, CROSS_SAME)]
        if cross:
            _overlap_curve(series, bands, "random masks, each mask's per-matrix densities", cross, "random_matched",
                   dict(color="black", ls=":"), seed_of=lambda r: r["seed_a"])
        note = ("bands: ±1 std over seeds (same language: over languages)" if n > 1
                else "one seed: no band over seeds")
        paths.append(line_plot(series, "sparsity", "Jaccard of kept weights", f"{task}: mask overlap",
                               folder / f"overlap_curve_{task}.png", percent_x=True, bands=bands, note=note))
        paths.append(_group_bars(group_figures(rows, excess, task, max(xs)), random_jaccard(1 - max(xs)),
                                 f"{task}: overlap by layer and component at {max(xs):.0%} sparsity",
                                 folder / f"overlap_groups_{task}.png"))
    return paths


def group_figures(rows: list[dict], excess: list[dict], task: str, sparsity: float) -> dict:
    """{grouping: [(group, mean Jaccard, std over seeds or None, the group's matched random baseline or None)]}
    of the cross-language pairs of one task at one level."""
    out = {}
    for kind in ("layer", "component", "stack"):
        at = [r for r in rows if r["task"] == task and r["grouping"] == kind and r["sparsity"] == sparsity]
        names = list(dict.fromkeys(r["group"] for r in at))
        if not names:  # an encoder-only model has no stacks
            continue
        matched = {e["group"]: e["random_matched"] for e in excess if e["task"] == task and e["grouping"] == kind
                   and e["sparsity"] == sparsity and e["kind"] in (CROSS_CROSS, CROSS_SAME) and e["random_matched"] != ""}
        bars = []
        for g in names:
            [mean], [low], _, seeds = mean_band(_seed_means([r for r in at if r["group"] == g], [sparsity], "jaccard"))
            bars.append((g, mean, mean - low if seeds > 1 else None, matched.get(g)))
        out[kind] = bars
    return out


def below_baseline(bars: dict, uniform: float) -> list[tuple[str, float, float]]:
    """(group, Jaccard, baseline) of every bar under its random baseline: its matched one, else d/(2-d)."""
    return [(g, mean, base if base is not None else uniform) for kind in bars.values()
            for g, mean, _, base in kind if mean < (base if base is not None else uniform)]


def _group_bars(groups: dict, baseline: float, title: str, path: Path) -> Path:
    fig = new_figure(9, 4.2)
    flagged = {g for g, _, _ in below_baseline(groups, baseline)}
    colours = {"layer": "C0", "component": "C2", "stack": "C4"}  # red marks a bar below its baseline
    for k, (kind, bars) in enumerate(groups.items()):
        ax = fig.add_subplot(1, len(groups), k + 1)
        x = range(len(bars))
        spread = [b[2] for b in bars] if any(b[2] is not None for b in bars) else None
        ax.bar(x, [b[1] for b in bars], yerr=spread and [e or 0 for e in spread], capsize=3, color=colours[kind],
               edgecolor=["red" if b[0] in flagged else colours[kind] for b in bars], linewidth=2)
        ax.axhline(baseline, color="grey", ls="--", label="random d/(2-d)")
        if any(b[3] is not None for b in bars):
            ax.scatter(x, [b[3] if b[3] is not None else np.nan for b in bars], marker="_", s=300, color="black",
                       zorder=3, label="random, matched densities")
        for i, b in enumerate(bars):
            if b[0] in flagged:
                ax.text(i, b[1] + 0.02, "below\nrandom", ha="center", va="bottom", fontsize=6, color="red")
        ax.set_xticks(list(x), [b[0].removeprefix("layer_") for b in bars], rotation=45, fontsize=8)
        ax.set_ylim(0, 1.08)
        ax.set_xlabel(kind)
        ax.set_ylabel("mean Jaccard across languages")
        ax.legend(fontsize=7)
    fig.suptitle(title + "\nerror bars: ±1 std over seeds (none with one seed); "
                 + ("red: below its random baseline" if flagged else "no bar below its random baseline"), fontsize=10)
    return save_png(fig, path)


def analyze(name: str, storage: str, tracking_uri: str | None = None, out: str | None = None) -> AnalysisResult:
    """Write the overlap tables and figures to <analysis folder>/overlap."""
    sweep = open_sweep(name, storage, tracking_uri, out)
    providers.prepare(sweep.specs)  # θ0 is read from the model (built once; a no-op after)
    folder = sweep.folder("overlap")
    rows, baselines = overlap_tables(sweep.storage, sweep.specs, folder)
    seeds = seed_overlap(sweep.storage, sweep.specs)
    tickets = winning_tickets(sweep.storage, sweep.specs)
    pairs, excess = pair_tables(sweep.storage, sweep.specs)
    write_csv(folder / "overlap.csv", rows)
    write_csv(folder / "overlap_baselines.csv", baselines)
    write_csv(folder / "seed_overlap.csv", seeds)
    write_csv(folder / "winning_tickets.csv", tickets)
    write_csv(folder / "pair_overlap.csv", pairs)
    write_csv(folder / "excess_overlap.csv", excess)
    overlap_curves(rows, baselines, seeds, folder, pairs, excess)
    totals = [r["jaccard"] for r in rows if r["grouping"] == "total"]
    cross = [p["ratio"] for p in pairs if p["kind"] == CROSS_CROSS] or [p["ratio"] for p in pairs if p["kind"] == CROSS_SAME]
    sweep.publish(folder)
    return AnalysisResult("overlap", sweep, folder, metrics={
        "pairs": len(totals), "mean_total_jaccard": float(np.mean(totals)) if totals else 0.0,
        "mean_cross_language_ratio_beyond_theta0": float(np.mean(cross)) if cross else 0.0})
