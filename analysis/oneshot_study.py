"""`lnsub oneshot`: a one-shot sweep's scores, mask overlap beyond θ0, transfer across languages, and LAPE neurons.

Cells are grouped by discovery (task, method, sparsity pattern, seed); within a group every language has one
cell, and every level of it one mask. Outputs in <analysis folder>/oneshot/:

  scores.csv        per cell and level: the task's metric on the cell's own language (level 0: dense)
  overlap.csv       per group, level and pair of languages: Jaccard of the kept weights, two random masks'
                    d / (2 − d), and the overlap beyond θ0 (analysis/neutrality.py: observed / expected shared
                    weights when the masks are independent given θ0's magnitudes; excess Jaccard; z)
  transfer.csv      per group, level, source and target: the target's score with the source's pruned model
                    (language A's calibration, evaluated on B), with B's own mask (the diagonal), a random mask
                    and θ0's layer-wise magnitude mask at the same sparsity and pattern as rows "random" and
                    "magnitude"; difference = score − the diagonal's, relative = difference / the diagonal's
  transfer_summary.csv  per group, level and source: the mean relative difference over the other targets
  lape_neurons.csv  per model: language-specific neurons per language (LAPE, analysis/neurons.py, on the
                    languages' held-out texts with the dense model), and the language-agnostic count
  lape_masks.csv    per group, level, neuron language A and mask language B: the share of A's specific neurons
                    that B's mask keeps, beside the share of all FFN neurons B's mask keeps (the base rate)
  lape_summary.csv  per group and level: own-mask and other-masks mean shares, base rate, agnostic recall
  summary.md        the tables the report shows (analysis/oneshot_tables.py)
"""

from __future__ import annotations

import contextlib
import logging
import statistics
from collections import defaultdict
from itertools import combinations

import torch

from lnsub.analysis import neurons
from lnsub.analysis.neutrality import DEFAULT_BINS, MagnitudeStrata, aggregate, ranked_cell, stratum_null
from lnsub.analysis.oneshot_tables import markdown
from lnsub.analysis.overlap import jaccard_matrix, random_jaccard, read_packed
from lnsub.analysis.results import AnalysisResult
from lnsub.analysis.sweeps import open_sweep
from lnsub.analysis.tables import write_csv
from lnsub.trainables.storage.local import write_text
from lnsub.trainables import metrics as M
from lnsub.trainables import providers, pruning
from lnsub.trainables.layerwise import Structure, nm_mask, prune_lowest
from lnsub.trainables.oneshot_cell import Scorer, open_scorer, pruned_model
from lnsub.trainables.spec import CellSpec
from lnsub.trainables.storage import Storage
from lnsub.trainables.store import ONESHOT_PRETRAINED, CellStore

log = logging.getLogger(__name__)
RANDOM, MAGNITUDE = "random", "magnitude"
RANDOM_SEED = 20240  # the random rows' masks: one per model, pattern and sparsity


def groups(specs: list[CellSpec]) -> dict[tuple, dict[str, CellSpec]]:
    """(task, method, sparsity pattern, seed) -> {language: its one-shot cell}."""
    out: dict[tuple, dict[str, CellSpec]] = defaultdict(dict)
    for s in specs:
        if s.method != "imp":
            out[(s.task, s.method, s.sparsity_pattern, s.seed)][s.language] = s
    return dict(sorted(out.items()))


def _key(group: tuple) -> dict:
    task, method, pattern, seed = group
    return {"task": task, "method": method, "sparsity_pattern": pattern, "seed": seed}


def score_rows(root: Storage, specs: list[CellSpec]) -> list[dict]:
    rows = []
    for group, cells in groups(specs).items():
        for language, spec in sorted(cells.items()):
            for m in CellStore(root, spec).all_metrics():
                rows.append({**_key(group), "language": language, "level": m[M.LEVEL], "sparsity": m[M.SPARSITY],
                             "metric": m[M.METRIC], "score": m[M.SCORE]})
    return rows


def overlap_rows(root: Storage, specs: list[CellSpec], theta0: dict[str, torch.Tensor]) -> list[dict]:
    """Every pair of languages' masks in a group, per level: Jaccard, random baseline, overlap beyond θ0."""
    rows = []
    strata = MagnitudeStrata(theta0, DEFAULT_BINS)  # θ0's magnitude strata, once for every pair
    for group, cells in groups(specs).items():
        langs = sorted(cells)
        for level in range(1, max(s.levels for s in cells.values()) + 1):
            stores = {lang: CellStore(root, cells[lang]) for lang in langs}
            masks = {lang: st.load_mask(level) for lang, st in stores.items() if st.level_done(level)}
            packed = {lang: read_packed(stores[lang].level_dir(level)) for lang in masks}
            if len(masks) < 2:
                continue
            labels, matrix = jaccard_matrix(packed, by="total")["all"]
            sparsity = cells[langs[0]].sparsities[level]
            ranked = {lang: ranked_cell(strata, m) for lang, m in masks.items()}
            for (i, a), (j, b) in combinations(enumerate(labels), 2):
                null = stratum_null(strata, ranked[a], ranked[b])
                beyond = aggregate(strata, ranked[a], ranked[b], null, "total")["all"]
                rows.append({**_key(group), "level": level, "sparsity": sparsity, "language_a": a, "language_b": b,
                             "jaccard": float(matrix[i, j]), "random": random_jaccard(1 - sparsity),
                             "ratio_beyond_theta0": beyond.ratio, "excess_jaccard": beyond.excess_jaccard,
                             "z": beyond.z})
    return rows


def random_masks(params: list[pruning.Prunable], sparsity: float, pattern: str) -> pruning.Masks:
    """A random mask of the sparsity and pattern, as the one-shot methods' are: exactly round(s · n) of each matrix's
    n weights pruned, or N of every M kept at random."""
    structure = Structure.parse(pattern)
    generator = torch.Generator().manual_seed(RANDOM_SEED)
    out = {}
    for p in params:
        scores = torch.rand(p.shape, generator=generator)
        out[p.name] = nm_mask(scores, structure) if structure.nm else prune_lowest(scores, round(sparsity * scores.numel()))
    return out


def _baseline_models(scorer: Scorer, store: CellStore, spec: CellSpec, level: int) -> dict[str, pruning.Masks]:
    sparsity = spec.sparsities[level]
    return {RANDOM: random_masks(scorer.params, sparsity, spec.sparsity_pattern),
            MAGNITUDE: store.baseline(ONESHOT_PRETRAINED, sparsity)}


def transfer_rows(root: Storage, cells: dict[str, CellSpec], group: tuple, scorer: Scorer,
                  examples: dict[str, list], cache: dict) -> list[dict]:
    """One group's transfer rows: each source's pruned model (and the random and magnitude rows) on each target."""
    rows = []
    langs = sorted(cells)
    for level in range(1, max(s.levels for s in cells.values()) + 1):
        scores: dict[tuple[str, str], float] = {}
        first = cells[langs[0]]
        for source in langs:
            pruned_model(scorer, cells[source], CellStore(root, cells[source]), level)
            for target in langs:
                scores[(source, target)] = scorer.score(cells[target], examples[target])[scorer.task.metric]
        for kind, masks in _baseline_models(scorer, CellStore(root, first), first, level).items():
            key = (kind, first.sparsity_pattern, first.sparsities[level])
            if key not in cache:  # the same rows for every method of a pattern and sparsity
                scorer.restore()
                pruning.apply_masks(scorer.model, masks)
                cache[key] = {t: scorer.score(cells[t], examples[t])[scorer.task.metric] for t in langs}
            scores.update({(kind, t): cache[key][t] for t in langs})
        for (source, target), score in scores.items():
            own = scores[(target, target)]
            rows.append({**_key(group), "level": level, "sparsity": first.sparsities[level], "source": source,
                         "target": target, "score": score, "own_score": own, "difference": score - own,
                         "relative": (score - own) / own if own else None})
    scorer.restore()
    return rows


def transfer_summary(rows: list[dict]) -> list[dict]:
    """Per group, level and source: the mean relative difference over the targets other than itself."""
    by: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        if r["source"] != r["target"] and r["relative"] is not None:
            by[(r["task"], r["method"], r["sparsity_pattern"], r["seed"], r["level"], r["source"])].append(r["relative"])
    return [{"task": k[0], "method": k[1], "sparsity_pattern": k[2], "seed": k[3], "level": k[4], "source": k[5],
             "targets": len(v), "mean_relative_difference": statistics.fmean(v)} for k, v in sorted(by.items())]


def lape(scorer: Scorer, cells: dict[str, CellSpec], examples: dict[str, list]) -> neurons.LanguageNeurons:
    """LAPE's language-specific neurons of the dense model on each language's held-out texts."""
    scorer.restore()
    batches = {}
    for lang, spec in sorted(cells.items()):
        bos, eos = scorer.framing(lang)
        bos = scorer.tokenizer.bos_token_id if bos is None else bos
        eos = scorer.tokenizer.eos_token_id if eos is None else eos
        ids = scorer.tokenizer([str(t) for t in examples[lang]], add_special_tokens=False)["input_ids"]
        rows = [[x for x in (bos, *r, eos) if x is not None][:spec.max_length] for r in ids]
        batches[lang] = [{"input_ids": torch.tensor([r])} for r in rows if r]
    device = next(scorer.model.parameters()).device
    batches = {lang: [{k: v.to(device) for k, v in b.items()} for b in bs] for lang, bs in batches.items()}
    return neurons.language_specific_neurons(neurons.activation_counts(scorer.model, batches))


def lape_rows(root: Storage, cells: dict[str, CellSpec], group: tuple, found: neurons.LanguageNeurons):
    """(rows per neuron language and mask language, summary rows) for one group, per level."""
    rows, summary = [], []
    langs = sorted(cells)
    for level in range(1, max(s.levels for s in cells.values()) + 1):
        met = neurons.neurons_meet_masks(found, {b: CellStore(root, cells[b]).load_mask(level) for b in langs})
        at = {"level": level, "sparsity": cells[langs[0]].sparsities[level]}
        own, other = [], []
        for i, a in enumerate(met.languages):
            for j, b in enumerate(met.mask_languages):
                share = met.kept_share[i][j]
                rows.append({**_key(group), **at, "neurons_of": a, "mask_of": b,
                             "specific": int(found.specific[:, :, i].sum()), "kept_share": share,
                             "base_rate": met.base_rate[j]})
                if share is not None:
                    (own if a == b else other).append(share)
        summary.append({**_key(group), **at, "own_mask_share": statistics.fmean(own) if own else None,
                        "other_masks_share": statistics.fmean(other) if other else None,
                        "base_rate": statistics.fmean(met.base_rate), "agnostic": met.agnostic,
                        "agnostic_kept_by_every_mask": met.agnostic_recall, "every_mask_rate": met.every_mask_rate})
    return rows, summary


def _model_key(spec: CellSpec) -> tuple:
    return spec.model, spec.model_revision, spec.task, spec.seed


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to the cells' CPUs while the analysis scores models (restored after): on a
    shared machine more threads than cores spin against each other (a tiny decoder's scoring ran 6-10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def oneshot(name: str, storage: str, tracking_uri: str | None = None, out: str | None = None) -> AnalysisResult:
    """Write the one-shot sweep's scores, overlap, transfer and LAPE tables to <analysis folder>/oneshot."""
    sweep = open_sweep(name, storage, tracking_uri, out)
    with torch_threads(int(sweep.state.resources.cpus_per_worker)):
        return _oneshot(sweep)


def _oneshot(sweep) -> AnalysisResult:
    providers.prepare(sweep.specs)
    folder = sweep.folder("oneshot")
    tables: dict[str, list[dict]] = defaultdict(list)
    tables["scores"] = score_rows(sweep.storage, sweep.specs)
    scorers: dict[tuple, Scorer] = {}
    found: dict[tuple, neurons.LanguageNeurons] = {}
    cache: dict = {}
    for group, cells in groups(sweep.specs).items():
        first = next(iter(cells.values()))
        if _model_key(first) not in scorers:
            scorers[_model_key(first)] = open_scorer(first)
        scorer = scorers[_model_key(first)]
        examples = {lang: scorer.evaluation_set(s) for lang, s in cells.items()}
        theta0 = {p.name: scorer.theta0[p.name] for p in scorer.params}
        tables["overlap"] += overlap_rows(sweep.storage, list(cells.values()), theta0)
        tables["transfer"] += transfer_rows(sweep.storage, cells, group, scorer, examples, cache)
        if _model_key(first) not in found:
            found[_model_key(first)] = lape(scorer, cells, examples)
            sizes = found[_model_key(first)].sizes()
            tables["lape_neurons"] += [{"model": first.model, "language": lang, "specific": n,
                                        "agnostic": int(found[_model_key(first)].agnostic.sum())}
                                       for lang, n in sizes.items()]
        rows, summary = lape_rows(sweep.storage, cells, group, found[_model_key(first)])
        tables["lape_masks"] += rows
        tables["lape_summary"] += summary
    tables["transfer_summary"] = transfer_summary(tables["transfer"])
    for table in ("scores", "overlap", "transfer", "transfer_summary", "lape_neurons", "lape_masks", "lape_summary"):
        write_csv(folder / f"{table}.csv", tables[table])
    write_text(folder / "summary.md", markdown(folder))
    sweep.publish(folder)
    ratios = [r["ratio_beyond_theta0"] for r in tables["overlap"]]
    return AnalysisResult("oneshot", sweep, folder, metrics={
        "pairs": len(ratios), "mean_ratio_beyond_theta0": statistics.fmean(ratios) if ratios else 0.0})
