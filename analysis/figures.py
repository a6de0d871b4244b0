"""Figures of the analyses: headless (a Figure on the Agg canvas, pyplot untouched), written atomically."""

from __future__ import annotations

import textwrap

from pathlib import Path
from typing import Sequence

import numpy as np

from lnsub.trainables.storage.local import atomic_path


def new_figure(width: float, height: float):
    # matplotlib is imported when a figure is drawn: it takes a second, and most commands draw none
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str | Path, dpi: int = 110, tight: bool = True) -> Path:
    """Write the figure atomically; `tight=False` keeps a layout the caller already made (a note's margin)."""
    path = Path(path)
    if tight:
        fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def line_plot(series: dict[str, tuple[Sequence[float], Sequence[float], dict]], xlabel: str, ylabel: str,
              title: str, path: str | Path, ylim: tuple[float, float] | None = (0.0, 1.02),
              percent_x: bool = False, bands: dict[str, tuple[Sequence[float], Sequence[float]]] | None = None,
              hlines: Sequence[tuple[float, str, dict]] = (), note: str = "") -> Path:
    """One line per label: {label: (x, y, matplotlib style)}; `bands` {label: (low, high)} shades a spread
    around a line (its x), `hlines` draws (y, label, style) reference lines, `note` goes under the axes."""
    fig = new_figure(7, 4.5 if not note else 4.9)
    ax = fig.add_subplot()
    for label, (x, y, style) in series.items():
        style = dict(style)
        line, = ax.plot(list(x), list(y), marker=style.pop("marker", "o"), label=label, **style)
        if bands and label in bands:
            low, high = bands[label]
            ax.fill_between(list(x), list(low), list(high), color=line.get_color(), alpha=0.18, lw=0)
    for y, label, style in hlines:
        ax.axhline(y, label=label, **{"lw": 1, "ls": "--", **style})
    if percent_x:
        from matplotlib.ticker import PercentFormatter

        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="best")
    if note:  # wrapped to the figure's width: a long note must not run off the page
        lines = textwrap.wrap(note, 120)
        fig.text(0.01, 0.005, "\n".join(lines), fontsize=7, color="#444", ha="left", va="bottom")
        fig.tight_layout(rect=(0, 0.02 + 0.035 * len(lines), 1, 1))
    return save_png(fig, path, dpi=100, tight=not note)


def mean_band(values_by_x: Sequence[Sequence[float]]) -> tuple[list[float], list[float], list[float], int]:
    """Mean and mean ± 1 std (ddof 1) of each x's values; the fewest values any x has (a band needs 2)."""
    means = [float(np.mean(v)) for v in values_by_x]
    stds = [float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in values_by_x]
    fewest = min((len(v) for v in values_by_x), default=0)
    return means, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)], fewest


def offdiagonal_range(matrices: Sequence) -> tuple[float, float]:
    """The finite off-diagonal values' range over square matrices: the colour scale of overlap heatmaps, so
    the diagonal (a mask with itself, 1) does not flatten the differences between languages."""
    values = np.concatenate([np.asarray(m, dtype=float)[~np.eye(len(m), dtype=bool)] for m in matrices])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-3:  # one value: a band around it, so it still has a colour
        lo, hi = lo - 0.005, hi + 0.005
    return lo, hi


def overlap_panel(ax, matrix, labels: Sequence[str], vmin: float, vmax: float, baseline: float | None = None,
                  annotate: bool = True, fontsize: int = 8):
    """One language x language overlap heatmap on `ax`: colours on [vmin, vmax], the diagonal grey (not
    coloured), cells below the random baseline `baseline` outlined in red and marked '↓'."""
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    m = np.asarray(matrix, dtype=float)
    n = len(labels)
    shown = np.where(np.eye(n, dtype=bool), np.nan, m)
    cmap = colormaps["viridis"].with_extremes(bad="#d9d9d9")
    im = ax.imshow(shown, vmin=vmin, vmax=vmax, cmap=cmap)
    ax.set_xticks(range(n), labels, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(n), labels, fontsize=fontsize)
    for i in range(n):
        for j in range(n):
            below = baseline is not None and i != j and m[i, j] < baseline
            if below:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2))
            if annotate:
                text = "1" if i == j else f"{m[i, j]:.3f}" + ("↓" if below else "")
                dark = i != j and (m[i, j] - vmin) < 0.55 * (vmax - vmin)
                ax.text(j, i, text, ha="center", va="center", fontsize=fontsize - 1,
                        color="#777" if i == j else "white" if dark else "black")
    return im


def baseline_note(baseline: float | None, vmin: float, vmax: float, matrices) -> str:
    """A heatmap title's second line: the random baseline, where it sits on the colour scale, what is below it."""
    if baseline is None:
        return ""
    where = ("red line on the colour bar" if vmin <= baseline <= vmax
             else "below the colour range" if baseline < vmin else "above the colour range")
    below = any((np.asarray(m, dtype=float)[~np.eye(len(m), dtype=bool)] < baseline).any() for m in matrices)
    return f"\nrandom-mask baseline {baseline:.3f} ({where}); " + (
        "red boxes: below it" if below else "no pair below it")


def heatmap_grid(panels: dict[str, np.ndarray], labels: Sequence[str], title: str, path: str | Path,
                 baseline: float | None = None, columns: int = 3) -> Path:
    """Small multiples: one overlap heatmap per panel (a layer), all on one colour scale, the panels'
    off-diagonal range; cells below the random baseline outlined in red."""
    vmin, vmax = offdiagonal_range(list(panels.values()))
    columns = min(columns, len(panels))
    rows = -(-len(panels) // columns)
    side = max(2.2, 0.45 * len(labels) + 1.2)
    fig = new_figure(side * columns + 1.2, side * rows + 0.8)
    im = None
    for k, (name, matrix) in enumerate(panels.items()):
        ax = fig.add_subplot(rows, columns, k + 1)
        im = overlap_panel(ax, matrix, labels, vmin, vmax, baseline, annotate=len(labels) <= 6, fontsize=7)
        ax.set_title(name, fontsize=9)
        if k % columns:  # the rows' languages once, on the left
            ax.set_yticklabels([])
    if im is not None:
        bar = fig.colorbar(im, ax=fig.axes, shrink=0.8, label="Jaccard of kept weights (off-diagonal range)")
        if baseline is not None and vmin <= baseline <= vmax:
            bar.ax.axhline(baseline, color="red", lw=1.5)
    fig.suptitle(title + baseline_note(baseline, vmin, vmax, panels.values()), fontsize=10)
    with atomic_path(Path(path)) as tmp:  # no tight_layout: the shared colour bar spans the panels
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return Path(path)


def delta_heatmap(matrix, rows: Sequence[str], cols: Sequence[str], title: str, path: str | Path,
                  success=None, label: str = "a(s,t) - a(t,t)") -> Path:
    """A source x target grid of score differences, centred on 0; successes (within one std) marked '*'."""
    m = np.asarray(matrix, dtype=float)
    fig = new_figure(max(4.5, 0.7 * len(cols) + 3), max(3.5, 0.5 * len(rows) + 2))
    ax = fig.add_subplot()
    limit = float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 1.0
    limit = limit or 1e-3
    im = ax.imshow(m, cmap="RdBu", vmin=-limit, vmax=limit)
    ax.set_xticks(range(len(cols)), cols, rotation=90)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("target")
    ax.set_ylabel("source mask")
    for i in range(len(rows)):
        for j in range(len(cols)):
            if np.isfinite(m[i, j]):
                mark = "*" if success is not None and success[i][j] else ""
                ax.text(j, i, f"{m[i, j]:+.3f}{mark}", ha="center", va="center", fontsize=7,
                        color="white" if abs(m[i, j]) > 0.6 * limit else "black")
    fig.colorbar(im, ax=ax, label=label)
    ax.set_title(title)
    return save_png(fig, path)
