"""`lnsub similarity`: per-layer CKA and sentence retrieval across languages (Conneau et al. 2020).

For the dense pretrained encoder, each language's sub-network (θ0 ⊙ its mask at a
level) and a random encoder of the same shape (the lower bound), mean-pooled
representations of parallel sentences are compared between every pair of
languages, layer by layer.
"""

from __future__ import annotations

import copy
import json
import logging
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from lnsub.analysis.similarity import cka_by_layer, layer_representations, random_encoder_like, retrieval_accuracy
from lnsub.analysis.figures import line_plot
from lnsub.analysis.tables import AnalysisResult, open_sweep, write_csv
from lnsub.trainables.loading import model_path
from lnsub.trainables.masks import load_masks
from lnsub.trainables.pruning import apply_masks
from lnsub.trainables.spec import CellSpec
from lnsub.trainables.store import CellStore
from lnsub.trainables.tasks import get_task
from lnsub.trainables.testbed.generate import ensure_testbed
from lnsub.trainables.testbed.languages import is_synthetic

log = logging.getLogger(__name__)


def parallel_sentences(spec: CellSpec, languages: list[str], n: int) -> dict[str, list[str]]:
    """Exact translations: the testbed's parallel file, or XNLI's validation premises (parallel by design)."""
    if all(is_synthetic(lang) for lang in languages):
        path = ensure_testbed(spec.testbed_config().testbed) / "data" / "parallel" / "validation.jsonl"
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:n]]
        return {lang: [r[lang] for r in rows] for lang in languages}
    xnli = get_task("xnli")
    return {lang: list(xnli.load(lang, data_dir=spec.data_dir)["validation"]["premise"][:n]) for lang in languages}


def _encoder_with_mask(base, masks: dict[str, torch.Tensor], prefix: str):
    """A copy of the encoder with θ0 ⊙ mask (mask names carry the task model's prefix, e.g. 'bert.')."""
    model = copy.deepcopy(base)
    apply_masks(model, {name.removeprefix(prefix): mask for name, mask in masks.items()})
    return model


def similarity(name: str, storage: str, tracking_uri: str | None = None, out: str | None = None,
               level: int | None = None, sentences: int = 200) -> AnalysisResult:
    """Write similarity.csv (encoder, layer, language pair: CKA and retrieval) and the curves."""
    from transformers import AutoModel, AutoTokenizer  # heavy: imported when the analysis runs

    sweep = open_sweep(name, storage, tracking_uri, out)
    root, specs = sweep.root, sweep.specs
    folder = sweep.folder("similarity")
    languages = sorted({s.language for s in specs})
    first = specs[0]
    path = model_path(first)
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = AutoModel.from_pretrained(path).eval()
    texts = parallel_sentences(first, languages, sentences)
    encoders = {"dense": base, "random": random_encoder_like(base, seed=0)}
    for spec in specs:
        store = CellStore(root, spec)
        k = spec.levels if level is None else level
        if spec.seed == first.seed and store.level_done(k):
            encoders[f"{spec.task}:{spec.language}@{spec.sparsities[k]:.0%}"] = _encoder_with_mask(
                base, load_masks(store.level_dir(k)), base.base_model_prefix + ".")
    rows = []
    for label, model in encoders.items():
        reps = {lang: layer_representations(model, tokenizer, texts[lang], max_length=64) for lang in languages}
        for a, b in combinations(languages, 2):
            ckas = cka_by_layer(reps[a], reps[b])
            for layer, cka in enumerate(ckas):
                rows.append({"encoder": label, "layer": layer, "language_a": a, "language_b": b, "cka": cka,
                             "retrieval": retrieval_accuracy(reps[a][layer], reps[b][layer], k=5)})
    write_csv(folder / "similarity.csv", rows)
    _plot(rows, folder / "similarity_cka.png", "cka", "linear CKA (mean over language pairs)")
    _plot(rows, folder / "similarity_retrieval.png", "retrieval", "retrieval accuracy (mean over pairs)")
    top = max(r["layer"] for r in rows)
    top_cka = {label: float(np.mean([r["cka"] for r in rows if r["encoder"] == label and r["layer"] == top]))
               for label in ("dense", "random")}
    return AnalysisResult("similarity", sweep, folder,
                          params={"level": "last" if level is None else level, "sentences": sentences},
                          metrics={f"cka_top_layer_{k}": v for k, v in top_cka.items()})


def _plot(rows: list[dict], path: Path, key: str, ylabel: str) -> None:
    series = {}
    for label in dict.fromkeys(r["encoder"] for r in rows):
        layers = sorted({r["layer"] for r in rows if r["encoder"] == label})
        means = [np.mean([r[key] for r in rows if r["encoder"] == label and r["layer"] == k]) for k in layers]
        style = {"dense": dict(lw=2.5, color="black"), "random": dict(lw=2, ls="--", color="grey")}.get(
            label, dict(lw=1, alpha=0.7))
        series[label] = (layers, means, style)
    line_plot(series, "layer (0 = embeddings)", ylabel, "", path)
