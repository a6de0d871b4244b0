"""The one-shot analysis's summary tables, read back from its CSVs (analysis/oneshot_study.py).

Four tables, each a header and rows, for the report page and for summary.md beside the CSVs:
  scores     per language: the dense score, and each discovery's (method, pattern, sparsity) score
  overlap    per discovery: mean pairwise Jaccard, two random masks', the mean ratio beyond θ0, excess Jaccard, z
  transfer   per discovery: the mean relative difference of the other languages' masks on a target, of a random
             mask's and of θ0's magnitude mask's, against the target's own mask
  lape       per discovery: the share of a language's specific neurons its own mask keeps, other languages'
             masks keep, and the base rate; the language-agnostic neurons every mask keeps, against chance
and the LAPE set sizes per language.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from lnsub.analysis.tables import read_csv

RANDOM, MAGNITUDE = "random", "magnitude"


def _f(x: str | None) -> float | None:
    return None if x in (None, "") else float(x)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _fmt(x, digits: int = 3) -> str:
    return "" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _discovery(r: dict) -> str:
    return f"{r['method']} {r['sparsity_pattern']} {float(r['sparsity']):.0%}"


def scores_table(folder: Path) -> tuple[list[str], list[list]]:
    rows = read_csv(folder / "scores.csv")
    columns = list(dict.fromkeys(_discovery(r) for r in rows if int(r["level"]) > 0))
    by: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by[r["language"]]["dense" if int(r["level"]) == 0 else _discovery(r)].append(float(r["score"]))
    metric = rows[0]["metric"] if rows else "score"
    body = [[lang] + [_fmt(_mean(by[lang][c]), 2) for c in ["dense", *columns]] for lang in sorted(by)]
    return [f"language ({metric})", "dense", *columns], body


def overlap_table(folder: Path) -> tuple[list[str], list[list]]:
    by: dict[str, list[dict]] = defaultdict(list)
    for r in read_csv(folder / "overlap.csv"):
        by[_discovery(r)].append(r)
    body = [[d, len(rs), *(_fmt(_mean(_f(r[k]) for r in rs)) for k in ("jaccard", "random", "ratio_beyond_theta0",
                                                                      "excess_jaccard", "z"))]
            for d, rs in by.items()]
    return ["discovery", "pairs", "Jaccard", "random", "ratio beyond θ0", "excess Jaccard", "z"], body


def transfer_table(folder: Path) -> tuple[list[str], list[list]]:
    by: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in read_csv(folder / "transfer.csv"):
        if r["source"] == r["target"]:
            kind = "own"
        else:
            kind = r["source"] if r["source"] in (RANDOM, MAGNITUDE) else "other languages"
        by[_discovery(r)][kind].append(_f(r["relative"]) if kind != "own" else _f(r["score"]))
    body = [[d, _fmt(_mean(k["own"]), 2), *(_fmt(_mean(k[c]), 4) for c in ("other languages", RANDOM, MAGNITUDE))]
            for d, k in by.items()]
    return ["discovery", "own mask (mean score)", "other languages' masks", "random mask", "magnitude θ0"], body


def lape_table(folder: Path) -> tuple[list[str], list[list]]:
    body = [[_discovery(r), *(_fmt(_f(r[k])) for k in ("own_mask_share", "other_masks_share", "base_rate")),
             r["agnostic"], _fmt(_f(r["agnostic_kept_by_every_mask"])), _fmt(_f(r["every_mask_rate"]))]
            for r in read_csv(folder / "lape_summary.csv")]
    return ["discovery", "own mask keeps", "other masks keep", "base rate", "agnostic neurons",
            "agnostic kept by every mask", "every mask keeps (all neurons)"], body


def lape_sizes(folder: Path) -> tuple[list[str], list[list]]:
    rows = read_csv(folder / "lape_neurons.csv")
    return ["model", "language", "specific neurons", "agnostic"], [[r["model"], r["language"], r["specific"],
                                                                    r["agnostic"]] for r in rows]


TABLES = (("Score per language", scores_table), ("Mask overlap across languages", overlap_table),
          ("Transfer: relative difference from the target's own mask", transfer_table),
          ("LAPE: language-specific neurons per language", lape_sizes),
          ("LAPE neurons kept by the masks", lape_table))


def markdown(folder: Path) -> str:
    """Every table as markdown (summary.md)."""
    out = []
    for title, make in TABLES:
        header, body = make(folder)
        out += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        out += ["| " + " | ".join(str(c) for c in row) + " |" for row in body] + [""]
    return "\n".join(out)
