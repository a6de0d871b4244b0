"""`lnsub analyze`: cross-language overlap of a sweep's masks, with its baselines, and winning tickets.

Reads cells by id from storage (never Ray results), one level at a time, and
writes tidy CSVs and heatmaps to --out (default <storage>/sweeps/<name>/analysis).
"""

from __future__ import annotations

import csv
import io
import logging
import statistics
from collections import defaultdict
from pathlib import Path

from analysis.overlap import (GROUPINGS, cluster_order, heatmap_png, jaccard_matrix, random_jaccard,
                              random_jaccard_empirical, read_packed)
from trainables.atomic import write_text
from trainables.spec import CellSpec
from trainables.store import CellStore
from trainables.tasks import get_task

log = logging.getLogger(__name__)
TICKET_TOLERANCE = 0.01  # with one seed: within 1% of the dense score counts as "within one std"


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_text(path, buf.getvalue())


def _by_task_seed(specs: list[CellSpec]) -> dict[tuple[str, int], dict[str, CellSpec]]:
    groups: dict[tuple[str, int], dict[str, CellSpec]] = defaultdict(dict)
    for spec in specs:
        groups[(spec.task, spec.seed)][spec.language] = spec
    return groups


def overlap_tables(root: Path, specs: list[CellSpec], out: Path) -> tuple[list[dict], list[dict]]:
    """Jaccard rows (every pair, grouping, level) and baseline rows; heatmaps of the totals."""
    rows, baselines = [], []
    for (task, seed), cells in sorted(_by_task_seed(specs).items()):
        levels = max(s.levels for s in cells.values())
        for level in range(1, levels + 1):  # level 0 is the all-ones mask: nothing to compare
            stores = {lang: CellStore(root, s) for lang, s in sorted(cells.items())}
            ready = {lang: st for lang, st in stores.items() if st.level_done(level)}
            if len(ready) < 2:
                continue
            masks = {lang: read_packed(st.level_dir(level)) for lang, st in ready.items()}
            sparsity = next(iter(ready.values())).spec.sparsities[level]
            density = 1 - sparsity
            for group, (labels, matrix) in jaccard_matrix(masks, by=GROUPINGS).items():
                kind = "total" if group == "all" else "layer" if group.startswith("layer_") else "component"
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
            # how much of it the pretrained magnitudes alone explain: each mask against θ0's one-shot mask
            n = next(iter(masks.values())).n_weights
            for lang, st in ready.items():
                oneshot = st.baseline_dir("oneshot_pretrained", sparsity)
                if (oneshot / "mask.npz").exists():
                    _, m = jaccard_matrix({"ticket": masks[lang], "oneshot": read_packed(oneshot)}, by="total")["all"]
                    baselines.append({"task": task, "seed": seed, "level": level, "sparsity": sparsity,
                                      "language": lang, "random_closed_form": random_jaccard(density),
                                      "random_empirical": random_jaccard_empirical(n, density, seed=level),
                                      "oneshot_pretrained": float(m[0, 1])})
    return rows, baselines


def winning_tickets(root: Path, specs: list[CellSpec]) -> list[dict]:
    """Per (task, language): the sparsest level within one std over seeds (or 1%) of the dense score."""
    from analysis.overlap import winning_ticket

    by_cell: dict[tuple[str, str], list[CellSpec]] = defaultdict(list)
    for s in specs:
        by_cell[(s.task, s.language)].append(s)
    out = []
    for (task, language), seeds in sorted(by_cell.items()):
        metrics = [CellStore(root, s).all_metrics() for s in seeds]
        common = min(len(m) for m in metrics)
        if common == 0:
            continue
        levels = [{"level": k, "sparsity": metrics[0][k]["sparsity"],
                   "score": statistics.fmean(m[k]["score"] for m in metrics)} for k in range(common)]
        dense = [m[0]["score"] for m in metrics]
        greater = get_task(task).greater_is_better
        tolerance = TICKET_TOLERANCE * abs(dense[0]) if len(dense) < 2 else None
        ticket = winning_ticket(levels, dense, greater, tolerance)
        out.append({"task": task, "language": language, "seeds": len(seeds), "dense_score": statistics.fmean(dense),
                    "ticket_level": ticket["level"], "ticket_sparsity": ticket["sparsity"],
                    "ticket_score": ticket["score"], "threshold": ticket["threshold"]})
    return out


def analyze(name: str, storage: str, tracking_uri: str | None = None, out: str | None = None) -> Path:
    """Write overlap.csv, overlap_baselines.csv, winning_tickets.csv and heatmaps; log them to MLflow."""
    from orchestrator.sweep import check_storage, load_state, state_specs, sweep_dir, tracking_uri_of

    root = check_storage(storage)
    state = load_state(root, name)
    specs = state_specs(state)
    folder = Path(out) if out else sweep_dir(root, name) / "analysis"
    folder.mkdir(parents=True, exist_ok=True)
    rows, baselines = overlap_tables(root, specs, folder)
    _write_csv(folder / "overlap.csv", rows)
    _write_csv(folder / "overlap_baselines.csv", baselines)
    _write_csv(folder / "winning_tickets.csv", winning_tickets(root, specs))
    try:
        _log_to_mlflow(name, root, tracking_uri_of(state, tracking_uri), folder)
    except Exception as e:  # noqa: BLE001 - the files are the result; MLflow is the view
        log.warning("could not log the analysis to MLflow (%s); the files are in %s", str(e).splitlines()[0], folder)
    return folder


def _log_to_mlflow(name: str, root: Path, tracking_uri: str, folder: Path) -> None:
    from orchestrator import tracking

    client = tracking._client(tracking_uri)
    exp_id = tracking._experiment_id(client, name, root, tracking_uri)
    runs = client.search_runs([exp_id], filter_string=f"tags.`{tracking.TAG_ROLE}` = 'analysis:overlap'")
    run = runs[0] if runs else client.create_run(exp_id, run_name=f"{name}-overlap", tags={
        tracking.TAG_SWEEP: name, tracking.TAG_ROLE: "analysis:overlap"})
    client.log_artifacts(run.info.run_id, str(folder), artifact_path="overlap")
