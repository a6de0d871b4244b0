"""Representation analyses: linear CKA per layer (Conneau et al., ACL 2020) and
ratio-margin sentence retrieval (Artetxe & Schwenk 2019, as used by Foroutan et al., 2022).

Inputs are mean-pooled hidden states of parallel sentences: row i of one language's
matrix and row i of the other's are translations of each other. A randomly initialised
encoder of the same architecture (`random_encoder_like`) gives the lower bound the
dense model and its sub-networks are read against.
"""

from __future__ import annotations

import copy
from typing import Literal, Sequence

import numpy as np
import torch

CkaMethod = Literal["auto", "features", "gram"]


def _as_matrix(a, name: str) -> np.ndarray:
    """`a` as a float64 2-D array; CKA sums many squares, so float32 loses digits."""
    a = np.asarray(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n, dim], got shape {a.shape}")
    return a


def _centered(a: np.ndarray) -> np.ndarray:
    """Each column minus its mean; CKA is defined on centred features."""
    return a - a.mean(axis=0, keepdims=True)


def _cka_features(x: np.ndarray, y: np.ndarray) -> float:
    """||YᵀX||²_F / (||XᵀX||_F ||YᵀY||_F) on centred X, Y; costs O(n (d1 + d2)²)."""
    num = np.linalg.norm(y.T @ x) ** 2
    den = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(num / den) if den > 0 else float("nan")


def _cka_gram(x: np.ndarray, y: np.ndarray) -> float:
    """The same value through n x n Gram matrices: <K, L> / (||K|| ||L||); costs O(n² (d1 + d2))."""
    k, l = x @ x.T, y @ y.T
    num = np.sum(k * l)  # = ||YᵀX||²_F, since tr(XXᵀYYᵀ) = tr(YᵀX XᵀY)
    den = np.linalg.norm(k) * np.linalg.norm(l)
    return float(num / den) if den > 0 else float("nan")


def _unbiased_hsic(kl: float, rk: np.ndarray, rl: np.ndarray, n: int) -> float:
    """n(n−3)·HSIC₁ of Song et al. (2012) for linear kernels of centred features (1ᵀK = 0): tr(KL) minus the
    diagonal's share. kl = tr(KL), rk, rl = the diagonals of K and L."""
    return kl - n / (n - 2) * float(rk @ rl) + float(rk.sum()) * float(rl.sum()) / ((n - 1) * (n - 2))


def _cka_debiased(x: np.ndarray, y: np.ndarray) -> float:
    """HSIC₁(K, L) / sqrt(HSIC₁(K, K) HSIC₁(L, L)) on centred X, Y, in feature space (Kornblith et al.'s form)."""
    n = x.shape[0]
    rx, ry = np.einsum("ij,ij->i", x, x), np.einsum("ij,ij->i", y, y)
    num = _unbiased_hsic(np.linalg.norm(y.T @ x) ** 2, rx, ry, n)
    kk = _unbiased_hsic(np.linalg.norm(x.T @ x) ** 2, rx, rx, n)
    ll = _unbiased_hsic(np.linalg.norm(y.T @ y) ** 2, ry, ry, n)
    return float(num / np.sqrt(kk * ll)) if kk > 0 and ll > 0 else float("nan")


def linear_cka(X, Y, method: CkaMethod = "auto", debiased: bool = False) -> float:
    """Linear CKA between X [n, d1] and Y [n, d2] (same n sentences, row for row), in [0, 1].

    debiased=True: HSIC's unbiased estimator (Song et al. 2012, as Nguyen et al. 2021 use it for CKA) in
    place of the plug-in one, whose bias keeps the CKA of independent representations well above 0 when
    n is not much larger than the width (0.24 for independent Gaussians at n = 200, d = 64); the debiased
    value is about 0 there, and can be slightly negative. Needs n > 3.
    NaN when either side is constant across sentences (CKA is undefined there).
    """
    x, y = _as_matrix(X, "X"), _as_matrix(Y, "Y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"X and Y must have the same number of rows, got {x.shape[0]} and {y.shape[0]}")
    if x.shape[0] < (4 if debiased else 2):
        raise ValueError(f"CKA needs at least {4 if debiased else 2} sentences")
    x, y = _centered(x), _centered(y)
    if debiased:
        return _cka_debiased(x, y)
    if method == "auto":
        # Pick the cheaper of the two equal forms: few sentences with wide features -> Gram.
        method = "gram" if x.shape[0] < x.shape[1] + y.shape[1] else "features"
    if method == "features":
        return _cka_features(x, y)
    if method == "gram":
        return _cka_gram(x, y)
    raise ValueError(f"unknown method {method!r}; expected 'auto', 'features' or 'gram'")


def cka_by_layer(reps_a, reps_b, debiased: bool = False) -> list[float]:
    """Linear CKA of each layer: reps_* are [num_layers + 1, n, dim] from `layer_representations`."""
    if len(reps_a) != len(reps_b):
        raise ValueError(f"different numbers of layers: {len(reps_a)} and {len(reps_b)}")
    return [linear_cka(a, b, debiased=debiased) for a, b in zip(reps_a, reps_b)]


def mean_pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over the tokens where attention_mask == 1, [CLS] and [SEP] included: [batch, dim].

    Special tokens are kept, as in Conneau et al.'s pooled representations; only padding is dropped.
    """
    mask = attention_mask.to(hidden_states.dtype).unsqueeze(-1)
    total = (hidden_states * mask).sum(dim=1)
    # clamp: an all-padding row yields zeros instead of 0/0.
    return total / mask.sum(dim=1).clamp(min=1.0)


def layer_representations(model, tokenizer, sentences: Sequence[str], batch_size: int = 32,
                          max_length: int = 64) -> np.ndarray:
    """Mean-pooled hidden states of every layer (0 = embeddings): float32 [num_layers + 1, n, dim].

    Sentences longer than max_length tokens are truncated; padding never changes a sentence's vector.
    """
    if not sentences:
        raise ValueError("no sentences")
    sentences = list(sentences)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # dropout off: the same sentence must always map to the same vector
    per_batch = []
    try:
        with torch.no_grad():
            for start in range(0, len(sentences), batch_size):
                enc = tokenizer(sentences[start:start + batch_size], padding=True, truncation=True,
                                max_length=max_length, return_tensors="pt").to(device)
                out = model(**enc, output_hidden_states=True)
                if getattr(out, "hidden_states", None) is None:
                    raise ValueError(f"{type(model).__name__} returned no hidden_states")
                pooled = [mean_pool(h.float(), enc["attention_mask"]) for h in out.hidden_states]
                per_batch.append(torch.stack(pooled).cpu())
    finally:
        model.train(was_training)  # leave the caller's model as we found it
    return torch.cat(per_batch, dim=1).numpy()


def _unit_rows(a: np.ndarray) -> np.ndarray:
    """Rows scaled to L2 norm 1; an all-zero row stays zero rather than becoming NaN."""
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    return a / np.where(norms > 0, norms, 1.0)


def _mean_top_k(cos: np.ndarray, k: int) -> np.ndarray:
    """Mean of the k largest values in each row."""
    k = min(k, cos.shape[1])  # fewer candidates than k: use them all
    return np.partition(cos, cos.shape[1] - k, axis=1)[:, -k:].mean(axis=1)


def ratio_margin_scores(X, Y, k: int = 5) -> np.ndarray:
    """Ratio-margin score of every pair (x_i, y_j): cos(x, y) over the mean of x's and y's k-NN cosines, [n, m].

    Neighbourhoods are clipped to the candidates available when there are fewer than k.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    x, y = _unit_rows(_as_matrix(X, "X")), _unit_rows(_as_matrix(Y, "Y"))
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"X and Y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    cos = x @ y.T
    # Σ cos / 2k over each side's k neighbours is half the mean neighbour cosine.
    knn_x = _mean_top_k(cos, k) / 2  # x's neighbours among Y
    knn_y = _mean_top_k(cos.T, k) / 2  # y's neighbours among X
    # The denominator penalises hubs: a y close to everything has a large k-NN mean.
    return cos / (knn_x[:, None] + knn_y[None, :])


def retrieval_accuracy(X, Y, k: int = 5) -> float:
    """Share of rows i whose best-scoring Y row (ratio margin) is Y[i], its translation."""
    x, y = _as_matrix(X, "X"), _as_matrix(Y, "Y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"X and Y must be parallel (same rows), got {x.shape[0]} and {y.shape[0]}")
    best = ratio_margin_scores(x, y, k).argmax(axis=1)
    return float(np.mean(best == np.arange(x.shape[0])))


def random_encoder_like(model, seed: int = 0):
    """The model's architecture with fresh random weights from its config, the same for the same seed."""
    param = next(model.parameters())
    # fork_rng: seeding here must not shift the caller's global random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = type(model)(copy.deepcopy(model.config))
    return fresh.to(device=param.device, dtype=param.dtype).eval()
