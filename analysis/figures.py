"""Figures of the analyses: headless (a Figure on the Agg canvas, pyplot untouched), written atomically."""

from __future__ import annotations

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


def save_png(fig, path: str | Path, dpi: int = 110) -> Path:
    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def line_plot(series: dict[str, tuple[Sequence[float], Sequence[float], dict]], xlabel: str, ylabel: str,
              title: str, path: str | Path, ylim: tuple[float, float] | None = (0.0, 1.02),
              percent_x: bool = False) -> Path:
    """One line per label: {label: (x, y, matplotlib style)}."""
    fig = new_figure(7, 4.5)
    ax = fig.add_subplot()
    for label, (x, y, style) in series.items():
        ax.plot(list(x), list(y), marker=style.pop("marker", "o"), label=label, **style)
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
    return save_png(fig, path, dpi=100)


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
