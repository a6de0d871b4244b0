"""Every pair of a task's cells at a level: its kind, Jaccard, the random baselines and the overlap beyond θ0.

Pair kinds (the cells of a pair never are the same cell):
  cross_language_cross_seed   other language, other seed: the primary comparison
  cross_language_same_seed    other language, same seed (same data order, head initialisation and RNG)
  same_language_cross_seed    the same language with another seed
The within-seed confound is the difference between the first two (claims.py computes it on matched
2×2 blocks of cells).

pair_overlap.csv, one row per pair of cells, over every prunable weight:
  task, level, sparsity, kind, language_a, seed_a, language_b, seed_b
  kept_a, kept_b        kept weights of each mask
  jaccard               |a ∩ b| / |a ∪ b|
  random_uniform        d / (2 − d): random masks of the level's density, one density for every matrix
  random_matched        random masks with each mask's own per-matrix densities (overlap.random_jaccard_matched)
  weights, observed, expected, ratio, expected_jaccard, excess_jaccard, z
                        the overlap beyond θ0 (neutrality.py): |a ∩ b| against its expectation when the masks
                        are independent given θ0's magnitudes; z = (observed − expected) / the null's SD
  *_trained             the same under the stricter null, given also each cell's one-shot mask of its level-0
                        trained weights (empty where a cell stored none). At the first pruned level a cell's mask
                        is that one-shot mask itself, so this null explains it entirely: ratio 1 by construction
excess_overlap.csv, one row per task, level, kind, grouping (total, layer, component; stack for mT5) and
group: pairs (how many), and the mean over those pairs of jaccard, random_matched, ratio, excess_jaccard,
ratio_trained and excess_jaccard_trained.
"""

from __future__ import annotations

import logging
import statistics
from collections import defaultdict
from itertools import combinations
from pathlib import Path

import numpy as np

from lnsub.analysis.neutrality import (DEFAULT_BINS, MagnitudeStrata, RankedCell, aggregate, matched_random,
                                       ranked_cell, stratum_null)
from lnsub.analysis.overlap import GROUPINGS, random_jaccard, read_packed
from lnsub.trainables.loading import model_path, task_for
from lnsub.trainables.pruning import prunable_parameters
from lnsub.trainables.spec import CellSpec
from lnsub.trainables.storage import Storage
from lnsub.trainables.store import ONESHOT_TRAINED, CellStore

log = logging.getLogger(__name__)
CROSS_CROSS, CROSS_SAME, SAME_CROSS = "cross_language_cross_seed", "cross_language_same_seed", "same_language_cross_seed"
PAIR_KINDS = (CROSS_CROSS, CROSS_SAME, SAME_CROSS)
MEANS = ("jaccard", "random_matched", "ratio", "excess_jaccard", "ratio_trained", "excess_jaccard_trained")


def pair_kind(a: CellSpec, b: CellSpec) -> str | None:
    """The kind of a pair of cells of one task; None for a cell with itself."""
    if a.language != b.language:
        return CROSS_CROSS if a.seed != b.seed else CROSS_SAME
    return SAME_CROSS if a.seed != b.seed else None


def pretrained_weights(spec: CellSpec) -> dict[str, np.ndarray]:
    """θ0 of the cell's prunable matrices, drawn as its run drew them (a pooler the checkpoint lacks is drawn
    after set_seed(seed), as trainables.loading.load_task does)."""
    from transformers import set_seed  # heavy: imported when the analysis runs

    path = model_path(spec)
    set_seed(spec.seed)
    model = task_for(spec, path).load_model(path)
    params = dict(model.named_parameters())
    return {p.name: params[p.name].detach().float().cpu().numpy() for p in prunable_parameters(model)}


def theta0_strata(cells: list[CellSpec], bins: int) -> dict[int, MagnitudeStrata]:
    """seed -> the strata of its θ0; seeds whose θ0 is the same share one (every seed, where the checkpoint
    holds every prunable matrix)."""
    out: dict[int, MagnitudeStrata] = {}
    seen: list[tuple[dict, MagnitudeStrata]] = []
    for spec in sorted({c.seed: c for c in cells}.values(), key=lambda c: c.seed):
        theta0 = pretrained_weights(spec)
        same = next((s for w, s in seen if w.keys() == theta0.keys()
                     and all(np.array_equal(w[k], theta0[k]) for k in w)), None)
        if same is None:
            same = MagnitudeStrata(theta0, bins)
            seen.append((theta0, same))
        out[spec.seed] = same
    return out


class LevelCells:
    """A task's finished cells at one level, each mask ranked (once) in the strata it is compared in."""

    def __init__(self, root: Storage, cells: list[CellSpec], level: int, strata: dict[int, MagnitudeStrata]):
        self.level, self.strata, self.root = level, strata, root
        self.cells = {c: CellStore(root, c) for c in cells}
        self.sparsity = cells[0].sparsities[level]
        self.masks = {c: read_packed(st.level_dir(level)) for c, st in self.cells.items()}
        self.trained = {c: read_packed(st.baseline_mask_path(ONESHOT_TRAINED, self.sparsity))
                        for c, st in self.cells.items() if st.has_baseline(ONESHOT_TRAINED, self.sparsity)}
        self._ranked: dict[tuple[int, CellSpec], RankedCell] = {}

    def ranked(self, strata: MagnitudeStrata, cell: CellSpec) -> RankedCell:
        key = (id(strata), cell)
        if key not in self._ranked:
            self._ranked[key] = ranked_cell(strata, self.masks[cell], self.trained.get(cell))
        return self._ranked[key]


def pair_figures(strata: MagnitudeStrata, a: RankedCell, b: RankedCell, by: str) -> dict[str, dict]:
    """{group: figures} of one pair under one grouping: Jaccard, random baselines, excess (both nulls)."""
    observed = strata.counts(a.mask, b.mask)
    base = aggregate(strata, a, b, stratum_null(strata, a, b, observed=observed), by)
    rnd = matched_random(strata, a, b, by, observed=observed)
    strict = None
    if a.trained is not None and b.trained is not None:
        strict = aggregate(strata, a, b, stratum_null(strata, a, b, given=True, observed=observed), by)
    out = {}
    for group, e in base.items():
        row = {"kept_a": e.kept_a, "kept_b": e.kept_b, "jaccard": e.jaccard,
               "random_matched": rnd[group].expected_jaccard, **e.row()}
        t = strict[group].row("") if strict else {}
        row.update({f"{k}_trained": t.get(k, "") for k in ("expected", "ratio", "expected_jaccard", "excess_jaccard",
                                                            "z")})
        out[group] = row
    return out


def level_pairs(level: LevelCells, task: str, groupings) -> tuple[list[dict], list[dict]]:
    """pair_overlap rows (total) and excess_overlap rows (every grouping) of one task at one level."""
    rows, acc = [], defaultdict(list)
    head = {"task": task, "level": level.level, "sparsity": level.sparsity}
    for a, b in combinations(sorted(level.cells, key=lambda c: (c.language, c.seed)), 2):
        kind = pair_kind(a, b)
        if kind is None:
            continue
        strata = level.strata[a.seed]  # a matrix drawn per seed: a's θ0 (b's is an independent draw there)
        ra, rb = level.ranked(strata, a), level.ranked(strata, b)
        for by in groupings:
            for group, fig in pair_figures(strata, ra, rb, by).items():
                acc[(kind, by, group)].append(fig)
                if by == "total":
                    rows.append({**head, "kind": kind, "language_a": a.language, "seed_a": a.seed,
                                 "language_b": b.language, "seed_b": b.seed,
                                 "random_uniform": random_jaccard(1 - level.sparsity), **fig})
    groups = [{**head, "kind": kind, "grouping": by, "group": group, "pairs": len(figs),
               **{k: _mean(figs, k) for k in MEANS}} for (kind, by, group), figs in acc.items()]
    return rows, groups


def _mean(figs: list[dict], key: str):
    values = [f[key] for f in figs if f[key] != ""]
    return statistics.fmean(values) if values else ""


def pair_tables(root: Storage, specs: list[CellSpec], bins: int = DEFAULT_BINS) -> tuple[list[dict], list[dict]]:
    """pair_overlap.csv and excess_overlap.csv rows for every task and level (module docstring)."""
    rows, groups = [], []
    by_task: dict[str, list[CellSpec]] = defaultdict(list)
    for spec in specs:
        by_task[spec.task].append(spec)
    for task, cells in sorted(by_task.items()):
        strata = None
        for level in range(1, max(c.levels for c in cells) + 1):  # level 0 is the all-ones mask
            ready = [c for c in cells if CellStore(root, c).level_done(level)]
            if len(ready) < 2:
                continue
            strata = strata or theta0_strata(cells, bins)
            found = {by for by in GROUPINGS if any(strata[c.seed].matrix_groups(by)[0] for c in ready)}
            r, g = level_pairs(LevelCells(root, ready, level, strata), task, [by for by in GROUPINGS if by in found])
            rows += r
            groups += g
        log.info("overlap beyond θ0: %s done", task)
    return rows, groups
