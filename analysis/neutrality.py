"""Overlap beyond θ0: how many kept weights two masks share beyond what the pretrained magnitudes explain.

IMP keeps large weights, and θ0's large weights are the same for every language, so two tickets
overlap far above random masks even when their languages share nothing. The question the paper
asks ("language-neutral sub-networks") is whether they share more than θ0's magnitudes make them.

The null: the two masks are independent given θ0. Within each prunable matrix the weights fall
into strata by the rank of |θ0| (quantile bins, `bins` per matrix); under the null the weights
mask a keeps in a stratum are placed at random among the stratum's weights, whatever mask b
keeps. For a stratum of n weights of which a keeps k_a and b keeps k_b (hypergeometric):

    E|a ∩ b| = Σ_strata k_a·k_b / n  (= Σ n·p_a·p_b, p = the share of the stratum each mask keeps)
    Var|a ∩ b| = Σ_strata k_a·k_b·(n − k_a)·(n − k_b) / (n²·(n − 1))

ratio = |a ∩ b| / E|a ∩ b| (> 1: more shared than θ0 explains) and excess Jaccard = the observed
Jaccard − the expected one, E|a ∩ b| / (|a| + |b| − E|a ∩ b|) (|a| and |b| are fixed under the
null; the Jaccard is convex in |a ∩ b|, so its exact expectation is larger by about
Var·(|a| + |b|) / |a ∪ b|³, below 1e-5 at the testbed's and mBERT's sizes).

The stricter null (`given`): the masks are independent given θ0 and given each cell's level-0
trained weights, as the cells' stored one-shot masks of those weights (`oneshot_trained`, at the
same sparsity) summarise them: the strata are split again by membership in the first cell's and
in the second cell's one-shot mask (four sub-strata per bin). What survives it is shared
structure that the dense fine-tuning of level 0 does not already show.

Binning. Bin edges fall on whole 64-bit words of the rank order (the counts are popcounts), so a
matrix of n weights has min(bins, n // 64) bins (at least one). DEFAULT_BINS = 128. Too few bins leave
θ0's effect inside each bin: on planted masks with no shared drift at mBERT's size the ratio is 1.079
with 4 bins a matrix, 1.0066 with 16, 1.0020 with 32, 1.0006 with 64 and 1.0002 with 128 (a bias that
falls about as the square of the bin width, and that no number of seeds averages away); as bins
shrink towards single weights the null absorbs the masks themselves (one weight a bin: expected =
observed), but it stays unbiased without an effect, and at 128 bins a bin of mBERT holds 4,608 weights
or more. docs/method.md has the table; tests/analysis/test_neutrality.py checks the stability.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lnsub.analysis.overlap import PackedMask, group_of

DEFAULT_BINS = 128
WORD = 64  # bits in a word: bin edges fall on whole words


@dataclass(frozen=True)
class ExcessOverlap:
    """Two masks' shared kept weights against the null's expectation, over `n` weights."""

    n: int
    kept_a: int
    kept_b: int
    observed: int  # |a ∩ b|
    expected: float  # E|a ∩ b| under the null
    variance: float  # Var|a ∩ b| under the null

    @property
    def ratio(self) -> float:
        return self.observed / self.expected if self.expected > 0 else float("nan")

    @property
    def jaccard(self) -> float:
        union = self.kept_a + self.kept_b - self.observed
        return self.observed / union if union > 0 else 1.0

    @property
    def expected_jaccard(self) -> float:
        union = self.kept_a + self.kept_b - self.expected
        return self.expected / union if union > 0 else 1.0

    @property
    def excess_jaccard(self) -> float:
        return self.jaccard - self.expected_jaccard

    @property
    def z(self) -> float:
        """(observed − expected) / the null's standard deviation: how far from the null for this one pair."""
        return (self.observed - self.expected) / np.sqrt(self.variance) if self.variance > 0 else float("nan")

    def row(self, prefix: str = "") -> dict:
        """Every field and derived figure, for a CSV row."""
        values = {"weights": self.n, "observed": self.observed, "expected": self.expected, "ratio": self.ratio,
                  "expected_jaccard": self.expected_jaccard, "excess_jaccard": self.excess_jaccard, "z": self.z}
        return {f"{prefix}{k}": v for k, v in values.items()}

    def __add__(self, other: "ExcessOverlap") -> "ExcessOverlap":
        return ExcessOverlap(self.n + other.n, self.kept_a + other.kept_a, self.kept_b + other.kept_b,
                             self.observed + other.observed, self.expected + other.expected,
                             self.variance + other.variance)


def hypergeometric(n, k_a, k_b) -> tuple[np.ndarray, np.ndarray]:
    """Per stratum: E and Var of |a ∩ b| when a's k_a kept weights fall at random among the n (b's fixed)."""
    n, k_a, k_b = (np.asarray(x, dtype=np.float64) for x in (n, k_a, k_b))
    safe = np.maximum(n, 1.0)
    mean = np.where(n > 0, k_a * k_b / safe, 0.0)
    var = np.where(n > 1, k_a * k_b * (n - k_a) * (n - k_b) / (safe ** 2 * np.maximum(n - 1, 1.0)), 0.0)
    return mean, var


def _weights(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor (bf16 has no numpy type)
        x = x.detach().cpu().float().numpy()
    return np.asarray(x)


def _mask(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=bool)


def bin_edges(n: int, bins: int) -> np.ndarray:
    """Edges [0, ..., n] of quantile bins over n ranked weights, on whole 64-bit words: min(bins, n // 64) bins."""
    words = -(-n // WORD)
    count = max(1, min(bins, n // WORD))
    edges = np.round(np.arange(count + 1) * words / count).astype(np.int64) * WORD
    return np.minimum(edges, n)


def rank_bins(magnitude: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Each weight's bin: bin j holds the weights of rank edges[j] to edges[j+1] − 1 in ascending |θ0|, ties in
    order of position: each weight's bin from the edges' values, ties at an edge resolved by position."""
    inner = edges[1:-1]
    if inner.size == 0:
        return np.zeros(magnitude.size, dtype=np.int64)
    at = np.sort(magnitude)[inner]  # the value of rank e, for each inner edge e (as fast as partitioning at 127)
    ids = np.searchsorted(at, magnitude, side="right")  # inner edges whose value is at or below the weight's
    hit = np.flatnonzero((ids > 0) & (magnitude == at[np.maximum(ids - 1, 0)]))  # weights equal to an edge's value
    values, counts = np.unique(magnitude[hit], return_counts=True)
    for value in values[counts > 1]:  # a value several weights share: their ranks run in order of position
        tied = hit[magnitude[hit] == value]
        below = int(np.count_nonzero(magnitude < value))
        ids[tied] = np.searchsorted(inner, below + np.arange(tied.size), side="right")
    return ids


class MagnitudeStrata:
    """The strata of the null: per prunable matrix, bins of |θ0| rank; masks are re-laid bin after bin as 64-bit
    words, so a stratum's count of kept weights is a popcount over whole words."""

    def __init__(self, theta0: Mapping[str, Any], bins: int = DEFAULT_BINS):
        if bins < 1:
            raise ValueError(f"bins must be at least 1, not {bins}")
        self.names, self.bins = list(theta0), bins
        self.order: dict[str, np.ndarray] = {}  # the weights' positions, bin after bin
        self.offsets: list[int] = []  # first word of each matrix
        starts, sizes, matrix, word = [], [], [], 0
        for i, name in enumerate(self.names):
            magnitude = np.abs(_weights(theta0[name])).ravel()
            edges = bin_edges(magnitude.size, bins)
            ids = rank_bins(magnitude, edges).astype(np.uint16 if len(edges) <= 1 << 16 else np.int64)
            self.order[name] = np.argsort(ids, kind="stable")  # a radix sort of small integers
            starts += [word + lo // WORD for lo in edges[:-1]]
            sizes += list(np.diff(edges))
            matrix += [i] * (len(edges) - 1)
            self.offsets.append(word)
            word += -(-magnitude.size // WORD)
        self.words = word
        self.starts = np.asarray(starts, dtype=np.int64)  # first word of each stratum
        self.sizes = np.asarray(sizes, dtype=np.int64)  # weights in each stratum
        self.matrix = np.asarray(matrix, dtype=np.int64)  # the matrix each stratum belongs to
        self._and = np.empty(self.words, dtype=np.uint64)
        self._pop = np.empty(self.words, dtype=np.uint8)

    def rank(self, mask: Mapping[str, Any] | PackedMask) -> np.ndarray:
        """A mask's bits bin after bin, one uint64 array over every matrix (each matrix padded to a whole word)."""
        if isinstance(mask, PackedMask):
            mask = unpack(mask)
        if set(mask) != set(self.names):
            raise ValueError(f"the mask's parameters differ from θ0's: {sorted(set(mask) ^ set(self.names))[:3]}")
        out = np.zeros(self.words, dtype=np.uint64)
        as_bytes = out.view(np.uint8)
        for name, start in zip(self.names, self.offsets):
            flat = _mask(mask[name]).ravel()
            if flat.size != self.order[name].size:
                raise ValueError(f"{name}: the mask has {flat.size} weights, θ0 {self.order[name].size}")
            bits = np.packbits(flat[self.order[name]], bitorder="little")
            as_bytes[start * 8:start * 8 + bits.size] = bits
        return out

    def counts(self, x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """Per stratum: how many weights ranked mask x keeps (with y: x and y both keep)."""
        if y is not None:
            x = np.bitwise_and(x, y, out=self._and)
        return np.add.reduceat(np.bitwise_count(x, out=self._pop), self.starts, dtype=np.int64)

    def matrix_groups(self, by: str) -> tuple[list[str], np.ndarray]:
        """(group names, the group index of each matrix; -1 for a matrix in no group) under a grouping."""
        of_matrix = [group_of(name, by) for name in self.names]
        names = list(dict.fromkeys(g for g in of_matrix if g is not None))
        return names, np.asarray([names.index(g) if g is not None else -1 for g in of_matrix], dtype=np.int64)


def unpack(mask: PackedMask) -> dict[str, np.ndarray]:
    """{name: bool array} of a packed mask (the stored layout)."""
    sizes = np.asarray(mask.shapes, dtype=np.int64).prod(axis=1)
    flat = np.unpackbits(mask.bits, count=int(sizes.sum())).astype(bool)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    return {n: flat[offsets[i]:offsets[i + 1]].reshape(tuple(int(d) for d in mask.shapes[i]))
            for i, n in enumerate(mask.names)}


@dataclass
class RankedCell:
    """One cell's mask re-laid by strata and its kept count per stratum; for the stricter null also its one-shot
    mask of the level-0 trained weights (`trained`), that mask's count per stratum, the mask AND that one-shot
    mask (`within`) and its count."""

    mask: np.ndarray
    kept: np.ndarray
    trained: np.ndarray | None = None
    trained_kept: np.ndarray | None = None
    within: np.ndarray | None = None
    kept_in_trained: np.ndarray | None = None


def ranked_cell(strata: MagnitudeStrata, mask, trained=None) -> RankedCell:
    words = strata.rank(mask)
    cell = RankedCell(words, strata.counts(words))
    if trained is not None:
        cell.trained = strata.rank(trained)
        cell.trained_kept = strata.counts(cell.trained)
        cell.within = np.bitwise_and(words, cell.trained)
        cell.kept_in_trained = strata.counts(cell.within)
    return cell


def stratum_null(strata: MagnitudeStrata, a: RankedCell, b: RankedCell, given: bool = False,
                 observed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per stratum: (observed |a ∩ b|, E, Var) under the null; given=True also conditions on both one-shot
    masks of the trained weights (four sub-strata per stratum: in both, in a's only, in b's only, in neither)."""
    observed = strata.counts(a.mask, b.mask) if observed is None else observed
    if not given:
        return (observed, *hypergeometric(strata.sizes, a.kept, b.kept))
    if a.trained is None or b.trained is None:
        raise ValueError("the stricter null needs both cells' one-shot masks of the trained weights")
    n_both = strata.counts(a.trained, b.trained)
    a_both, a_in_b = strata.counts(a.within, b.trained), strata.counts(a.mask, b.trained)
    b_both, b_in_a = strata.counts(b.within, a.trained), strata.counts(b.mask, a.trained)
    sub = [  # (n, k_a, k_b) of the four sub-strata
        (n_both, a_both, b_both),
        (a.trained_kept - n_both, a.kept_in_trained - a_both, b_in_a - b_both),
        (b.trained_kept - n_both, a_in_b - a_both, b.kept_in_trained - b_both),
        (strata.sizes - a.trained_kept - b.trained_kept + n_both, a.kept - a.kept_in_trained - a_in_b + a_both,
         b.kept - b_in_a - b.kept_in_trained + b_both)]
    expected, variance = np.zeros(len(strata.sizes)), np.zeros(len(strata.sizes))
    for n, k_a, k_b in sub:
        mean, var = hypergeometric(n, k_a, k_b)
        expected += mean
        variance += var
    return observed, expected, variance


def _sum_by_group(index: np.ndarray, count: int, *values) -> list[np.ndarray]:
    keep = index >= 0
    return [np.bincount(index[keep], weights=np.asarray(x, dtype=np.float64)[keep], minlength=count) for x in values]


def _by_group(names: list[str], n, k_a, k_b, observed, expected, variance) -> dict[str, ExcessOverlap]:
    return {g: ExcessOverlap(int(n[i]), int(k_a[i]), int(k_b[i]), int(observed[i]), float(expected[i]),
                             float(variance[i])) for i, g in enumerate(names)}


def aggregate(strata: MagnitudeStrata, a: RankedCell, b: RankedCell, per_stratum, by: str) -> dict[str, ExcessOverlap]:
    """Sum per-stratum (observed, E, Var) and kept counts over each group of a grouping."""
    names, of_matrix = strata.matrix_groups(by)
    sums = _sum_by_group(of_matrix[strata.matrix], len(names), strata.sizes, a.kept, b.kept, *per_stratum)
    return _by_group(names, *sums)


def matched_random(strata: MagnitudeStrata, a: RankedCell, b: RankedCell, by: str,
                   observed: np.ndarray | None = None) -> dict[str, ExcessOverlap]:
    """The same two masks against independent random masks with each one's own per-matrix densities (the
    strata are whole matrices): E|a ∩ b| = Σ_matrices k_a·k_b / n; `expected_jaccard` is that baseline."""
    observed = strata.counts(a.mask, b.mask) if observed is None else observed
    count = len(strata.names)
    n, k_a, k_b, observed = (np.bincount(strata.matrix, weights=x, minlength=count)
                             for x in (strata.sizes, a.kept, b.kept, observed))
    expected, variance = hypergeometric(n, k_a, k_b)
    names, of_matrix = strata.matrix_groups(by)
    return _by_group(names, *_sum_by_group(of_matrix, len(names), n, k_a, k_b, observed, expected, variance))


def excess_overlap_by(theta0: Mapping[str, Any], mask_a, mask_b, by: str = "total", *, bins: int = DEFAULT_BINS,
                      given: tuple | None = None) -> dict[str, ExcessOverlap]:
    """{group: ExcessOverlap} under a grouping of overlap.GROUPINGS ("total" -> "all", "layer", "component").

    mask_a, mask_b: {name: bool array or tensor} (True = kept) or PackedMask; theta0: the pretrained weights
    of the same prunable matrices; given: (trained_a, trained_b), each cell's one-shot mask of its level-0
    trained weights, for the stricter null.
    """
    strata = MagnitudeStrata(theta0, bins)
    trained = given if given is not None else (None, None)
    a, b = ranked_cell(strata, mask_a, trained[0]), ranked_cell(strata, mask_b, trained[1])
    return aggregate(strata, a, b, stratum_null(strata, a, b, given is not None), by)


def excess_overlap(theta0: Mapping[str, Any], mask_a, mask_b, *, bins: int = DEFAULT_BINS,
                   given: tuple | None = None) -> ExcessOverlap:
    """How much two masks share beyond θ0's magnitudes, over every prunable weight (module docstring)."""
    return excess_overlap_by(theta0, mask_a, mask_b, "total", bins=bins, given=given)["all"]
