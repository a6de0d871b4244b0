"""One weight matrix pruned from its inputs' statistics: magnitude, Wanda and SparseGPT, unstructured or N:M.

A linear map y = W x has W of shape (out, in); its calibration inputs X (in, tokens) give
    Wanda's statistic     ‖X_j‖₂ for every input feature j (Sun, Liu, Bair & Kolter, ICLR 2024);
    SparseGPT's Hessian   H = X Xᵀ (Frantar & Alistarh, ICML 2023; the factor 2 of the layer-wise
                          squared error changes nothing, damping is relative to H's mean diagonal).

Comparison groups (which weights compete for removal), as in each method's paper and code:
    magnitude   the whole matrix: exactly round(s · out · in) weights of smallest |W|;
    wanda       each output row: exactly round(s · in) weights of smallest |W_ij| · ‖X_j‖₂ per row;
    sparsegpt   the whole matrix, chosen adaptively in column blocks (lazy batches of `block_size`):
                each block removes its share round(s · out · c_end) − round(s · out · c_start) of the
                smallest w² / [U]_jj² (U the upper Cholesky factor of H⁻¹), on the weights as already
                updated by the earlier blocks, so that the matrix has exactly round(s · out · in) zeros;
    N:M         in every group of M consecutive input features of each row, the N of highest score are
                kept (2:4: two of every four), by |W|, by the Wanda score, or by SparseGPT's score.
Ties are broken by position (the lower flat index is pruned first): masks are exact and deterministic.

Masks are bool tensors of W's shape, True = kept. All arithmetic is in float32 (float64 where the
input is), whatever the weight's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lnsub.trainables.errors import LnsubError


@dataclass(frozen=True)
class Structure:
    """Unstructured (n = m = 0) or N:M: n kept in every group of m consecutive input weights of a row."""

    n: int = 0
    m: int = 0

    @classmethod
    def parse(cls, text: str) -> "Structure":
        """'unstructured' or 'N:M' (e.g. '2:4')."""
        if text == "unstructured":
            return cls()
        try:
            n, m = (int(part) for part in text.split(":"))
        except ValueError:
            raise LnsubError(f"pruning structure {text!r} is neither 'unstructured' nor N:M such as '2:4'") from None
        if not 0 < n < m:
            raise LnsubError(f"pruning structure {text!r}: N:M needs 0 < N < M")
        return cls(n, m)

    @property
    def nm(self) -> bool:
        return self.m > 0

    def sparsity(self) -> float:
        return 1 - self.n / self.m


def _work(t: torch.Tensor) -> torch.Tensor:
    """A detached copy of `t` in float32, or float64 where `t` is."""
    return t.detach().to(torch.promote_types(t.dtype, torch.float32))


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k smallest of a 1-D tensor; equal scores: the lower index first."""
    return torch.sort(scores, stable=True).indices[:k]


def prune_lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Mask (True = kept) of `scores`' shape with exactly its k smallest entries removed."""
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    keep[_lowest(scores.flatten(), k)] = False
    return keep.view(scores.shape)


def prune_lowest_per_row(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Mask with exactly the k smallest entries of every row removed (ties: the lower column first)."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k > 0:
        keep.scatter_(1, torch.sort(scores, dim=1, stable=True).indices[:, :k], False)
    return keep


def nm_mask(scores: torch.Tensor, structure: Structure) -> torch.Tensor:
    """Mask keeping the n highest scores in every group of m consecutive columns of each row."""
    rows, cols = scores.shape
    if cols % structure.m:
        raise LnsubError(f"{structure.n}:{structure.m} sparsity needs input features divisible by {structure.m}, "
                         f"not {cols}")
    groups = scores.reshape(rows, cols // structure.m, structure.m)
    drop = torch.sort(groups, dim=2, stable=True).indices[:, :, :structure.m - structure.n]
    keep = torch.ones_like(groups, dtype=torch.bool).scatter_(2, drop, False)
    return keep.reshape(rows, cols)


def _check(sparsity: float) -> None:
    if not 0 <= sparsity < 1:
        raise LnsubError(f"sparsity must be in [0, 1), not {sparsity}")


def magnitude_mask(weight: torch.Tensor, sparsity: float, structure: Structure = Structure()) -> torch.Tensor:
    """Layer-wise magnitude pruning: the smallest |W| of the matrix (or of each N:M group)."""
    scores = _work(weight).abs()
    if structure.nm:
        return nm_mask(scores, structure)
    _check(sparsity)
    return prune_lowest(scores, round(sparsity * scores.numel()))


def wanda_scores(weight: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """|W_ij| · ‖X_j‖₂: the weight's magnitude times its input feature's L2 norm over the calibration tokens."""
    return _work(weight).abs() * _work(input_norms).reshape(1, -1)


def wanda_mask(weight: torch.Tensor, input_norms: torch.Tensor, sparsity: float,
               structure: Structure = Structure()) -> torch.Tensor:
    """Wanda: the smallest scores of each output row (or of each N:M group)."""
    scores = wanda_scores(weight, input_norms)
    if structure.nm:
        return nm_mask(scores, structure)
    _check(sparsity)
    return prune_lowest_per_row(scores, round(sparsity * scores.shape[1]))


def inverse_hessian_factor(hessian: torch.Tensor, damping: float) -> torch.Tensor:
    """U, upper triangular with UᵀU = (H + λI)⁻¹, λ = damping · mean diag(H).

    An input feature that never fired (H_jj = 0) gets H_jj = 1 first, so H is invertible; its weights are
    then pruned at their own cost w², with no update to the others (the reference code also zeroes them,
    which would change the map for inputs where the feature does fire; lnsub leaves them to the mask).
    """
    h = hessian.clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1
    h += damping * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(inverse, upper=True)


def _block_mask(w1: torch.Tensor, u1: torch.Tensor, k: int) -> torch.Tensor:
    """Pruned (True) entries of a column block: the k smallest w² / U_jj² (SparseGPT's OBS saliency)."""
    scores = w1 ** 2 / torch.diagonal(u1).reshape(1, -1) ** 2
    return ~prune_lowest(scores, k)


def sparsegpt(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, structure: Structure = Structure(),
              block_size: int = 128, damping: float = 0.01,
              mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT: prune W column by column, updating the columns not yet visited to compensate (OBS).

    Returns (new weight in W's dtype with the pruned entries exactly zero, mask). With `mask` given the
    selection is skipped and only the reconstruction runs (the weights that mask removes are pruned).
    """
    if not structure.nm and mask is None:
        _check(sparsity)
    if structure.nm and block_size % structure.m:
        raise LnsubError(f"SparseGPT's block size {block_size} must be a multiple of M = {structure.m}")
    w = _work(weight).clone()
    rows, cols = w.shape
    u = inverse_hessian_factor(hessian.to(w.dtype), damping)
    pruned = torch.zeros_like(w, dtype=torch.bool)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1, u1 = w[:, i1:i2].clone(), u[i1:i2, i1:i2]
        if mask is not None:
            p1 = ~mask[:, i1:i2].to(w.device)
        elif structure.nm:
            p1 = torch.zeros_like(w1, dtype=torch.bool)
        else:
            p1 = _block_mask(w1, u1, round(sparsity * rows * i2) - round(sparsity * rows * i1))
        err1 = _sweep_block(w1, u1, p1, structure if mask is None else Structure())
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
        pruned[:, i1:i2] = p1
    w[pruned] = 0
    return w.to(weight.dtype), ~pruned


def _sweep_block(w1: torch.Tensor, u1: torch.Tensor, p1: torch.Tensor, structure: Structure) -> torch.Tensor:
    """Visit the block's columns in order: choose N:M groups as they come, zero the pruned weights and spread
    each column's error over the block's later columns. Updates w1 and p1 in place; returns the scaled errors."""
    err1 = torch.zeros_like(w1)
    d = torch.diagonal(u1)
    for i in range(w1.shape[1]):
        if structure.nm and i % structure.m == 0:
            group = w1[:, i:i + structure.m] ** 2 / d[i:i + structure.m].reshape(1, -1) ** 2
            p1[:, i:i + structure.m] = ~nm_mask(group, structure)
        q = w1[:, i].masked_fill(p1[:, i], 0)
        err = (w1[:, i] - q) / d[i]
        w1[:, i:] -= err.reshape(-1, 1) * u1[i, i:].reshape(1, -1)
        w1[:, i] = q
        err1[:, i] = err
    return err1
