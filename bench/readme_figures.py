"""The README's figures of the smoke study, read from a finished run's analysis files.

Usage: python bench/readme_figures.py [--storage ./readme-runs] [--name smoke]
(scripts/readme_figures.sh runs the study first.) Prints the paragraph "What the smoke study shows" as
the README states it, every number from <storage>/sweeps/<name>/analysis: the dense scores
(winning_tickets.csv), the overlap at the grid's deepest level across languages against both random
baselines and beyond θ0 (excess_overlap.csv), the winning tickets and the claims' verdicts
(report/claims.csv); then the report's path and every figure in it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lnsub.analysis.captions import range_phrase
from lnsub.analysis.tables import read_csv
from lnsub.trainables.tasks import get_task

CROSS = ("cross_language_cross_seed", "cross_language_same_seed")


def dense_scores(tickets: list[dict]) -> str:
    parts = []
    for task in sorted({r["task"] for r in tickets}):
        values = [float(r["dense_score"]) for r in tickets if r["task"] == task]
        parts.append(f"{task} {get_task(task).metric} {min(values):.3g}-{max(values):.3g}")
    return "dense (level 0) " + ", ".join(parts)


def overlap(excess: list[dict]) -> str:
    totals = [r for r in excess if r["grouping"] == "total" and r["kind"] in CROSS]
    deepest = max(float(r["sparsity"]) for r in totals)
    at = {r["task"]: r for r in totals if float(r["sparsity"]) == deepest}  # one kind per task at one seed
    tasks = sorted(at)

    def join(key: str, fmt: str) -> str:
        return ", ".join(format(float(at[t][key]), fmt) for t in tasks)

    return (f"At {deepest:.0%} sparsity the twins' masks overlap {join('jaccard', '.3f')} ({', '.join(tasks)}; "
            f"Jaccard), against {join('random_matched', '.3f')} for random masks with their per-matrix densities, "
            f"and share {join('ratio', '.3f')} times the kept weights θ0's magnitudes explain (excess Jaccard "
            f"{join('excess_jaccard', '+.3f')})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="./readme-runs")
    parser.add_argument("--name", default="smoke")
    args = parser.parse_args()
    analysis = Path(args.storage) / "sweeps" / args.name / "analysis"
    tickets = read_csv(analysis / "overlap" / "winning_tickets.csv")
    excess = read_csv(analysis / "overlap" / "excess_overlap.csv")
    claims = read_csv(analysis / "report" / "claims.csv")
    if not tickets or not excess:
        raise SystemExit(f"no analysis in {analysis}: run scripts/readme_figures.sh (lnsub study) first")
    sparsities = [float(r["ticket_sparsity"]) for r in tickets]
    print(f"What the {args.name} study shows (`scripts/readme_figures.sh`): {dense_scores(tickets)}. "
          f"{overlap(excess)}. {range_phrase(sparsities, 'Sparsest winning tickets')}. Claims: "
          + "; ".join(f"({r['claim']}) {r['verdict']}" for r in claims) + ".")
    report = analysis / "report" / "report.html"
    print(f"\nreport: {report}")
    for png in sorted(analysis.rglob("*.png")):
        print(f"figure: {png.relative_to(analysis)}")


if __name__ == "__main__":
    main()
