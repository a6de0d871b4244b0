"""Overlap of lottery-ticket masks across languages: Jaccard of kept weights, on packed bits.

Masks stay packed (one bit per weight, as in mask.npz); intersections are ANDs of
bytes counted with a popcount, so 11 masks of mBERT size need ~120 MB, not gigabytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from lnsub.analysis.figures import baseline_note, new_figure, offdiagonal_range, overlap_panel, save_png
from lnsub.trainables.masks import load_packed
from lnsub.trainables.pruning import locate_name

# stack: encoder vs decoder, for an encoder-decoder (mT5); an encoder-only model has no stack groups
GROUPINGS = ("total", "layer", "component", "stack")
_WORD_BLOCK = 1 << 15  # 64-bit words per AND+popcount step: 256 KB, stays in cache


def _popsum(x: np.ndarray) -> int:
    """Total number of set bits in an unsigned integer array (np.bitwise_count: numpy >= 2)."""
    return int(np.bitwise_count(x).sum(dtype=np.int64))


def component_of(name: str) -> tuple[int | None, str]:
    """(layer, component) of a prunable parameter name; layer is None for the pooler."""
    _, layer, component = locate_name(name)
    return layer, component


def group_of(name: str, by: str) -> str | None:
    """The group a prunable weight belongs to under a grouping, or None if it is in none (BERT's pooler has
    no layer; an encoder-only model has no stacks). Layers of an encoder-decoder are named by their stack."""
    stack, layer, component = locate_name(name)
    if by == "total":
        return "all"
    if by == "component":
        return component
    if by == "stack":
        return stack
    if layer is None:
        return None
    return f"layer_{layer}" if stack is None else f"{stack}_layer_{layer}"


@dataclass
class PackedMask:
    """One mask as stored: parameter names, their 2-D shapes, and np.packbits of all of them (1 = kept)."""

    names: list[str]
    shapes: np.ndarray
    bits: np.ndarray

    @property
    def n_weights(self) -> int:
        return int(np.asarray(self.shapes, dtype=np.int64).prod(axis=1).sum())


def read_packed(folder: str | Path, check: bool = True) -> PackedMask:
    """A level's mask.npz, still packed (checksum verified unless check=False)."""
    names, shapes, bits = load_packed(folder, check=check)
    return PackedMask(names, np.asarray(shapes, dtype=np.int64), bits)


def pack_bool(masks: dict) -> PackedMask:
    """Pack {name: bool ndarray or tensor} exactly as save_masks does."""
    arrays = {n: np.asarray(m.detach().cpu() if hasattr(m, "detach") else m).astype(bool) for n, m in masks.items()}
    shapes = np.asarray([a.shape for a in arrays.values()], dtype=np.int64).reshape(len(arrays), -1)
    flat = np.concatenate([a.ravel() for a in arrays.values()]) if arrays else np.zeros(0, bool)
    return PackedMask(list(arrays), shapes, np.packbits(flat))


def group_slices(mask: PackedMask, by: str) -> dict[str, list[tuple[int, int]]]:
    """Bit ranges [start, end) of each group: "total" -> "all"; "layer" -> "layer_<L>" (mT5: "encoder_layer_<L>",
    "decoder_layer_<L>"); "component" -> query, ... (mT5: self_q, cross_k, wi_0, ...); "stack" -> encoder, decoder."""
    if by not in GROUPINGS:
        raise ValueError(f"by must be one of {GROUPINGS}, not {by!r}")
    sizes = np.asarray(mask.shapes, dtype=np.int64).prod(axis=1)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    groups: dict[str, list[tuple[int, int]]] = {}
    for i, name in enumerate(mask.names):
        key = group_of(name, by)
        if key is None:
            continue  # e.g. the pooler belongs to no layer
        ranges = groups.setdefault(key, [])
        start, end = offsets[i], offsets[i + 1]
        if ranges and ranges[-1][1] == start:  # merge neighbours: fewer, longer runs to count
            ranges[-1] = (ranges[-1][0], end)
        elif end > start:
            ranges.append((start, end))
    return groups


class _Segments:
    """Disjoint bit segments covering some groups' ranges, split into 64-bit words, whole bytes and edge bytes."""

    def __init__(self, groups: dict[str, list[tuple[int, int]]]):
        points = sorted({p for ranges in groups.values() for r in ranges for p in r})
        where = {p: k for k, p in enumerate(points)}
        member = np.zeros((max(len(points) - 1, 0), len(groups)), dtype=np.int64)
        for g, ranges in enumerate(groups.values()):
            for s, e in ranges:
                member[where[s]:where[e], g] = 1
        keep = member.any(axis=1)
        self.member = member[keep]  # segment x group: which groups each segment counts towards
        self.parts = [self._split(s, e) for (s, e), k in zip(zip(points, points[1:]), keep) if k]

    @staticmethod
    def _split(s: int, e: int):
        edges = []  # (byte index, bit mask): bit ranges that start or end inside a byte
        b0, b1 = -(-s // 8), e // 8  # whole bytes [b0, b1)
        if b0 > b1:  # the segment lies inside one byte
            return [], [], [(s // 8, (0xFF >> (s % 8)) & ~(0xFF >> (e % 8)) & 0xFF)]
        if s % 8:
            edges.append((s // 8, 0xFF >> (s % 8)))  # big-endian: bit 0 is the most significant
        if e % 8:
            edges.append((e // 8, ~(0xFF >> (e % 8)) & 0xFF))
        w0, w1 = -(-b0 // 8), b1 // 8
        if w0 >= w1:
            return [], [(b0, b1)], edges
        return [(w0, w1)], [(b0, 8 * w0), (8 * w1, b1)], edges

    def counts(self, a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
        """Set bits of a (or of a AND b) per group."""
        words = [x[: x.size // 8 * 8].view(np.uint64) for x in ((a,) if b is None else (a, b))]
        buf = np.empty(min(_WORD_BLOCK, words[0].size), dtype=np.uint64)
        per_segment = np.zeros(len(self.parts), dtype=np.int64)
        for k, (word_runs, byte_runs, edges) in enumerate(self.parts):
            n = 0
            for w0, w1 in word_runs:
                for c in range(w0, w1, _WORD_BLOCK):
                    c1 = min(c + _WORD_BLOCK, w1)
                    chunk = words[0][c:c1]
                    if b is not None:
                        chunk = np.bitwise_and(chunk, words[1][c:c1], out=buf[: c1 - c])
                    n += _popsum(chunk)
            for b0, b1 in byte_runs:
                if b1 > b0:
                    n += _popsum(a[b0:b1] if b is None else a[b0:b1] & b[b0:b1])
            for i, bitmask in edges:
                n += int(a[i] & bitmask if b is None else a[i] & b[i] & bitmask).bit_count()
            per_segment[k] = n
        return per_segment @ self.member


def popcount_intersection_union(a_bits: np.ndarray, b_bits: np.ndarray, ranges) -> tuple[int, int]:
    """(|a AND b|, |a OR b|) over the bit ranges [start, end) of two packed masks; exact at any bit offset."""
    seg = _Segments({"g": [tuple(map(int, r)) for r in ranges]})
    a_bits, b_bits = np.ascontiguousarray(a_bits, dtype=np.uint8), np.ascontiguousarray(b_bits, dtype=np.uint8)
    ca, cb, inter = (int(seg.counts(a_bits)[0]), int(seg.counts(b_bits)[0]), int(seg.counts(a_bits, b_bits)[0]))
    return inter, ca + cb - inter


def jaccard_matrix(masks: dict[str, PackedMask],
                   by: str | Sequence[str] = "total") -> dict[str, tuple[list[str], np.ndarray]]:
    """{group: (labels, n x n Jaccard of kept weights)}; by is a grouping or several (one pass over the bytes)."""
    labels = list(masks)
    if not labels:
        raise ValueError("no masks given")
    ref = masks[labels[0]]
    for label, m in masks.items():
        if list(m.names) != list(ref.names) or not np.array_equal(m.shapes, ref.shapes):
            raise ValueError(f"mask {label!r} has other parameters or shapes than {labels[0]!r}")
        if m.bits.size != -(-ref.n_weights // 8):
            raise ValueError(f"mask {label!r} has {m.bits.size} bytes for {ref.n_weights} weights")
    groups: dict[str, list[tuple[int, int]]] = {}
    for grouping in ([by] if isinstance(by, str) else by):
        groups.update(group_slices(ref, grouping))
    seg = _Segments(groups)
    bits = [np.ascontiguousarray(masks[l].bits, dtype=np.uint8) for l in labels]
    kept = [seg.counts(x) for x in bits]  # each mask's popcount once
    n = len(labels)
    out = np.ones((len(groups), n, n))
    for i in range(n):
        for j in range(i + 1, n):
            inter = seg.counts(bits[i], bits[j])
            union = kept[i] + kept[j] - inter
            # 0/0 (both masks empty in a group) counts as identical
            out[:, i, j] = out[:, j, i] = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return {g: (labels, out[k]) for k, g in enumerate(groups)}


def random_jaccard(density: float) -> float:
    """Expected Jaccard of two independent random masks of density d: d^2 / (2d - d^2) = d / (2 - d)."""
    return density / (2.0 - density)


def random_jaccard_matched(kept_a, kept_b, sizes) -> float:
    """Expected Jaccard of two independent random masks that keep exactly kept_a[m] and kept_b[m] of the
    sizes[m] weights of each matrix m, as a mask of global magnitude pruning does (its own density per matrix).

    E|A ∩ B| = Σ_m kept_a[m]·kept_b[m] / sizes[m] (hypergeometric); |A| and |B| are fixed, so the Jaccard is
    taken at the expected intersection, E|A ∩ B| / (|A| + |B| − E|A ∩ B|). The Jaccard is convex in |A ∩ B|,
    so the exact expectation is larger, by about Var|A ∩ B|·(|A| + |B|) / |A ∪ B|³ (below 1e-5 from the
    testbed's 300k weights up). With one density d everywhere it is d / (2 − d).
    """
    kept_a, kept_b, sizes = (np.asarray(x, dtype=np.float64) for x in (kept_a, kept_b, sizes))
    inter = float(np.sum(np.where(sizes > 0, kept_a * kept_b / np.maximum(sizes, 1), 0.0)))
    union = float(kept_a.sum() + kept_b.sum()) - inter
    return inter / union if union > 0 else 1.0


def cluster_order(matrix, labels: Sequence[str]) -> list[str]:
    """Labels in average-linkage (UPGMA) order on the similarity matrix, so blocks show on a heatmap."""
    s = np.asarray(matrix, dtype=float)
    s = (s + s.T) / 2
    clusters = [[i] for i in range(len(labels))]
    sim = s.copy()  # between-cluster average similarity, kept by the Lance-Williams update
    np.fill_diagonal(sim, -np.inf)
    while len(clusters) > 1:
        i, j = np.unravel_index(np.argmax(sim), sim.shape)  # first maximum: deterministic
        i, j = min(i, j), max(i, j)
        a, b = clusters[i], clusters[j]
        # orient the two leaf lists so the most similar ends meet
        options = [(a, b), (a, b[::-1]), (a[::-1], b), (a[::-1], b[::-1])]
        left, right = max(options, key=lambda o: s[o[0][-1], o[1][0]])
        na, nb = len(a), len(b)
        sim[i, :] = sim[:, i] = (na * sim[i, :] + nb * sim[j, :]) / (na + nb)
        sim[i, i] = -np.inf
        sim = np.delete(np.delete(sim, j, axis=0), j, axis=1)
        clusters[i] = left + right
        del clusters[j]
    return [labels[k] for k in clusters[0]] if clusters else []


def winning_ticket(levels: list[dict], dense_scores: list[float] | None, greater_is_better: bool,
                   tolerance: float | None) -> dict:
    """The sparsest level whose score is within one seed-std of the dense mean (or `tolerance` with one seed)."""
    if dense_scores is not None and len(dense_scores) >= 2:
        dense, slack = float(np.mean(dense_scores)), float(np.std(dense_scores, ddof=1))  # sample std over seeds
    else:
        if tolerance is None:
            raise ValueError("with one seed, give a tolerance in score units")
        if dense_scores:
            dense = float(dense_scores[0])
        else:
            level0 = [lv for lv in levels if lv["level"] == 0]
            if not level0:
                raise ValueError("no level 0 to compare with")
            dense = float(level0[0]["score"])
        slack = float(tolerance)
    threshold = dense - slack if greater_is_better else dense + slack
    eps = 1e-12 * max(1.0, abs(threshold))  # a score exactly at the threshold counts despite rounding
    ok = [lv for lv in levels
          if (lv["score"] >= threshold - eps if greater_is_better else lv["score"] <= threshold + eps)]
    if not ok:
        raise ValueError(f"no level scores within {slack:g} of the dense {dense:g}")
    best = max(ok, key=lambda lv: (lv["sparsity"], lv["level"]))
    return {"level": best["level"], "sparsity": best["sparsity"], "score": best["score"], "threshold": threshold}


def heatmap_png(matrix, labels: Sequence[str], title: str, path: str | Path, baseline: float | None = None) -> Path:
    """Draw an overlap heatmap, coloured on its off-diagonal range (the diagonal, 1, in grey), with a colour bar
    that marks the random baseline; cells below the baseline outlined in red. Written as a PNG, atomically."""
    m = np.asarray(matrix, dtype=float)
    n = len(labels)
    size = max(4.0, 0.55 * n + 2.5)
    fig = new_figure(size + 1.2, size)
    ax = fig.add_subplot()
    vmin, vmax = offdiagonal_range([m])
    im = overlap_panel(ax, m, labels, vmin, vmax, baseline, annotate=n <= 12)
    bar = fig.colorbar(im, ax=ax, label="Jaccard of kept weights (off-diagonal range)")
    if baseline is not None and vmin <= baseline <= vmax:
        bar.ax.axhline(baseline, color="red", lw=1.5)
    ax.set_title(title + baseline_note(baseline, vmin, vmax, [m]), fontsize=10)
    return save_png(fig, path)
