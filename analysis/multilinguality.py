"""How multilingual an encoder is: sentence retrieval P@1 per layer, and word translation P@1.

Sentence retrieval (Dufter & Schütze 2020; Libovický et al. 2020): each language's held-out
parallel sentences are mean-pooled at every layer (`layer_representations`), and for an
ordered pair (a, b) sentence i of a retrieves the sentence of b with the highest cosine;
P@1 is the share of i that retrieve their own translation. Chance is 1/n for n sentences.
Pairs are grouped by whether the two languages share a basic word order, the one
typological difference the synthetic twins have (with adjective position).

Word translation is the same nearest-neighbour test on single words, each encoded alone
as a one-word sentence, over the concepts both languages write as one token sequence.
"""

from __future__ import annotations

from itertools import permutations
from typing import Callable, Sequence

import numpy as np

from lnsub.analysis.similarity import _as_matrix, _unit_rows, layer_representations


def nearest_neighbour_p1(X, Y) -> float:
    """Share of rows i of X whose highest-cosine row of Y is Y[i] (ties: the first index wins)."""
    x, y = _as_matrix(X, "X"), _as_matrix(Y, "Y")
    if x.shape != y.shape:
        raise ValueError(f"X and Y must be parallel with one dimension, got {x.shape} and {y.shape}")
    best = (_unit_rows(x) @ _unit_rows(y).T).argmax(axis=1)
    return float(np.mean(best == np.arange(x.shape[0])))


def retrieval_by_layer(reps: dict[str, np.ndarray], center: bool = False) -> dict[tuple[str, str], list[float]]:
    """P@1 of every ordered pair of languages at every layer; reps[lang] is [layers + 1, n, dim].

    center: subtract each language's mean vector per layer first (Libovický et al. 2020's
    language centring), which removes what merely identifies the language.
    """
    if center:
        reps = {lang: r - r.mean(axis=1, keepdims=True) for lang, r in reps.items()}
    return {(a, b): [nearest_neighbour_p1(xa, xb) for xa, xb in zip(reps[a], reps[b])]
            for a, b in permutations(reps, 2)}


def summarise(by_pair: dict[tuple[str, str], list[float]], order: Callable[[str], str], n: int) -> list[dict]:
    """Per layer: mean P@1 over same-order pairs, over different-order pairs and over all pairs, with chance 1/n."""
    layers = len(next(iter(by_pair.values())))
    groups = {"same_order": [p for p in by_pair if order(p[0]) == order(p[1])],
              "different_order": [p for p in by_pair if order(p[0]) != order(p[1])],
              "all": list(by_pair)}
    rows = []
    for layer in range(layers):
        row = {"layer": layer, "chance": 1.0 / n}
        for name, pairs in groups.items():
            row[name] = float(np.mean([by_pair[p][layer] for p in pairs])) if pairs else float("nan")
            row[f"{name}_pairs"] = len(pairs)
        rows.append(row)
    return rows


def best_layer(rows: list[dict], key: str = "same_order") -> dict:
    """The row whose `key` is highest (embeddings count as layer 0)."""
    return max(rows, key=lambda r: r[key])


def encode_languages(model, tokenizers: dict, texts: dict[str, Sequence[str]], max_length: int = 64,
                     batch_size: int = 64) -> dict[str, np.ndarray]:
    """Mean-pooled representations per layer for each language's texts, each with its own tokenizer."""
    return {lang: layer_representations(model, tokenizers[lang], list(texts[lang]), batch_size=batch_size,
                                        max_length=max_length) for lang in texts}


def sentence_retrieval(model, tokenizers: dict, texts: dict[str, Sequence[str]], order: Callable[[str], str]) -> dict:
    """The per-layer summary and the per-pair table for parallel `texts` (row i a translation in every language)."""
    n = {len(v) for v in texts.values()}
    if len(n) != 1:
        raise ValueError(f"parallel texts need as many rows in every language, got {sorted(n)}")
    reps = encode_languages(model, tokenizers, texts)
    by_pair, centred = retrieval_by_layer(reps), retrieval_by_layer(reps, center=True)
    n = n.pop()
    return {"n": n, "layers": summarise(by_pair, order, n), "centred_layers": summarise(centred, order, n),
            "pairs": {f"{a}>{b}": v for (a, b), v in by_pair.items()}}


def word_translation(model, tokenizers: dict, words: dict[str, Sequence[str]], order: Callable[[str], str]) -> dict:
    """Word translation P@1 per layer: words[lang][i] is concept i in every language."""
    return sentence_retrieval(model, tokenizers, words, order)
