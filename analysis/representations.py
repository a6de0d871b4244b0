"""`lnsub similarity`: per-layer CKA and sentence retrieval across languages (Conneau et al. 2020).

For the dense pretrained encoder, each language's sub-network (θ0 ⊙ its mask at a
level) and a random encoder of the same shape (the lower bound), mean-pooled
representations of parallel sentences are compared between every pair of
languages, layer by layer: CKA and ratio-margin retrieval per unordered pair
(similarity.csv), and nearest-neighbour P@1 per ordered pair averaged by word-order
group (retrieval.csv, retrieval_best.csv), the measure of `analysis.multilinguality`.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from lnsub.analysis.similarity import cka_by_layer, layer_representations, random_encoder_like, retrieval_accuracy
from lnsub.analysis.figures import line_plot, mean_band
from lnsub.analysis.multilinguality import best_layer, retrieval_by_layer, summarise
from lnsub.analysis.results import AnalysisResult
from lnsub.analysis.sweeps import open_sweep
from lnsub.analysis.tables import write_csv
from lnsub.trainables import providers
from lnsub.trainables.storage.local import write_json
from lnsub.trainables.errors import LnsubError
from lnsub.trainables.loading import model_path
from lnsub.trainables.masks import load_masks
from lnsub.trainables.pruning import apply_masks
from lnsub.trainables.spec import CellSpec
from lnsub.trainables.store import CellStore
from lnsub.trainables.tasks import get_task
from lnsub.trainables.tasks.base import LOCAL_SUFFIXES

log = logging.getLogger(__name__)

WMT14 = ("wmt/wmt14", "fr-en", "test")  # hub id, config, split: 3,003 en-fr sentence pairs
WMT14_LANGUAGES = {"en", "fr"}
# retrieval.csv's groups -> the keys of multilinguality.summarise's rows
GROUPS = {"same-order": "same_order", "different-order": "different_order", "all": "all"}


@dataclass
class Parallel:
    """Sentences aligned by position across languages, where they came from, and the languages left out."""

    texts: dict[str, list[str]]  # language -> sentences; row i of every language is one sentence
    source: str
    skipped: dict[str, str] = field(default_factory=dict)  # language -> why it has no parallel sentences


def parallel_sentences(spec: CellSpec, languages: list[str], n: int) -> Parallel:
    """Exact translations, at most n per language, no sentence twice: the testbed's parallel file, WMT14's
    en-fr test set when the languages are exactly en and fr, or else XNLI's validation premises."""
    suppliers = {providers.data_provider(lang) for lang in languages}
    supplier = next(iter(suppliers)) if len(suppliers) == 1 else None
    if supplier is not None and supplier.parallel_file is not None:  # a provider's own exact translations
        path = supplier.parallel_file(spec)
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:n]]
        return Parallel({lang: [r[lang] for r in rows] for lang in languages}, "the data provider's parallel file")
    if set(languages) == WMT14_LANGUAGES:
        pairs = wmt14_pairs(spec.data_dir)
        return Parallel({lang: distinct_rows({k: [p[k] for p in pairs] for k in languages})[lang][:n]
                         for lang in languages}, f"{WMT14[0]} {WMT14[1]} {WMT14[2]}")
    xnli = get_task("xnli")
    skipped = {lang: f"no parallel sentences: {xnli.missing_reason(lang)}" for lang in languages
               if not xnli.has_language(lang)}
    premises = {lang: list(xnli.load(lang, data_dir=spec.data_dir)["validation"]["premise"])
                for lang in languages if lang not in skipped}
    texts = {lang: rows[:n] for lang, rows in distinct_rows(premises).items()}
    return Parallel(texts, f"{xnli.hub_dataset} validation premises", skipped)


def distinct_rows(texts: dict[str, list[str]]) -> dict[str, list[str]]:
    """The rows, in order, less every row whose sentence any language has already had.

    XNLI lists each premise once per hypothesis, three times in a row: retrieval over the raw
    rows would find each translation among three identical candidates (a perfect encoder
    scores about 1/3). The same rows go in every language, so the alignment stands.
    """
    lengths = {lang: len(rows) for lang, rows in texts.items()}
    if len(set(lengths.values())) > 1:
        raise LnsubError(f"parallel sentences must have as many rows in every language, got {lengths}")
    seen: dict[str, set] = {lang: set() for lang in texts}
    keep = []
    for i in range(next(iter(lengths.values()), 0)):
        if not any(texts[lang][i] in seen[lang] for lang in texts):
            keep.append(i)
            for lang in texts:
                seen[lang].add(texts[lang][i])
    return {lang: [rows[i] for i in keep] for lang, rows in texts.items()}


def wmt14_pairs(data_dir: str | None) -> list[dict[str, str]]:
    """WMT14 en-fr test pairs ({"en": ..., "fr": ...}): from DATA_DIR/wmt14/fr-en/test.{jsonl,json,parquet}
    in the hub schema (a `translation` column) when a data dir is given, else from the Hub."""
    import datasets  # heavy: imported when the analysis runs

    hub_id, config, split = WMT14
    if data_dir is not None:
        local = Path(data_dir) / "wmt14" / config
        found = sorted(p for p in local.glob(f"{split}.*") if p.suffix in LOCAL_SUFFIXES)
        if not found:
            raise LnsubError(f"no {split} file for {hub_id} in {local} (expected {split}.jsonl, .json or "
                             f".parquet with a translation column of {{en, fr}} pairs)")
        ds = datasets.load_dataset(LOCAL_SUFFIXES[found[0].suffix], data_files={split: str(found[0])})[split]
    else:
        try:
            ds = datasets.load_dataset(hub_id, config, split=split)
        except Exception as e:
            raise LnsubError(f"cannot load {hub_id} ({config}, {split}): the Hub is unreachable or the dataset "
                             f"is missing ({type(e).__name__}); copy {split}.jsonl in its schema to "
                             f"DIR/wmt14/{config}/ and pass --data-dir DIR") from e
    return list(ds["translation"])


ENCODER_ONLY = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel"}  # an encoder-decoder's encoder, alone


def install(spec: CellSpec, model, path: str) -> None:
    """A provider's model as its provider wants it loaded (the testbed's decoupled control: its twins' own
    specials and position rows); nothing for any other model."""
    provider = providers.model_provider(spec.model)
    if provider is not None and provider.install is not None:
        provider.install(model, path)


def load_encoder(spec: CellSpec, path: str):
    """The model whose states are compared: the base model of an encoder (mBERT), or the encoder of an
    encoder-decoder (mT5: its decoder reads no sentence of its own, only the encoder's states)."""
    import transformers  # heavy: imported when the analysis runs

    config = transformers.AutoConfig.from_pretrained(path)
    if getattr(config, "is_encoder_decoder", False):
        if config.model_type not in ENCODER_ONLY:
            raise LnsubError(f"similarity: no encoder-only class for model type {config.model_type!r}")
        return getattr(transformers, ENCODER_ONLY[config.model_type]).from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path)
    install(spec, model, path)
    return model


def _encoder_with_mask(base, masks: dict[str, torch.Tensor], prefix: str):
    """A copy of the encoder with θ0 ⊙ mask (mask names carry the task model's prefix, e.g. 'bert.'); an
    encoder-decoder's decoder masks have no weight in the encoder and are left out."""
    model = copy.deepcopy(base)
    names = set(dict(model.named_parameters()))
    own = {name.removeprefix(prefix): mask for name, mask in masks.items()}
    if not own.keys() & names:
        raise LnsubError("similarity: no mask matches a weight of the encoder")
    apply_masks(model, {name: mask for name, mask in own.items() if name in names})
    return model


def similarity(name: str, storage: str, tracking_uri: str | None = None, out: str | None = None,
               level: int | None = None, sentences: int = 200) -> AnalysisResult:
    """Write similarity.csv (encoder, layer, language pair: CKA, debiased CKA and retrieval), retrieval.csv and
    retrieval_best.csv (P@1 per word-order group), parallel.json (the sentences' source, each language
    left out with the reason, the word orders) and the curves."""
    import transformers  # heavy: imported when the analysis runs
    from transformers import AutoTokenizer

    transformers.logging.set_verbosity_error()  # the checkpoint's MLM/NSP heads, unused by an encoder, are no news

    sweep = open_sweep(name, storage, tracking_uri, out)
    providers.prepare(sweep.specs[:1])  # the model and the parallel sentences (built once; a no-op after)
    folder = sweep.folder("similarity")
    first = sweep.specs[0]
    parallel = parallel_sentences(first, sorted({s.language for s in sweep.specs}), sentences)
    orders = word_orders(list(parallel.texts))
    _write_note(folder / "parallel.json", parallel, orders)
    path = model_path(first)
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = load_encoder(first, path).eval()
    rows, p1_rows = [], []
    for label, model in _encoders(sweep, base, level, path):  # one at a time: each is a whole encoder's copy
        reps = {lang: layer_representations(model, tokenizer, sents, max_length=64)
                for lang, sents in parallel.texts.items()}
        rows.extend(_compare(label, reps))
        p1_rows.extend(retrieval_rows(label, reps, orders))
        del model, reps
    write_csv(folder / "similarity.csv", rows)
    best = _write_retrieval(folder, p1_rows)
    params = {"level": "last" if level is None else level, "sentences": sentences, "parallel_source": parallel.source}
    if not rows:
        sweep.publish(folder)
        return AnalysisResult("similarity", sweep, folder, params=params, skipped=parallel.skipped)
    _plot(rows, folder / "similarity_cka.png", "cka", "linear CKA (mean over language pairs)")
    _plot(rows, folder / "similarity_retrieval.png", "retrieval", "retrieval accuracy (mean over pairs)")
    top = max(r["layer"] for r in rows)
    top_cka = {f"{key}_top_layer_{label}": float(np.mean([r[key] for r in rows
                                                          if r["encoder"] == label and r["layer"] == top]))
               for label in ("dense", "random") for key in ("cka", "cka_debiased")}
    sweep.publish(folder)
    return AnalysisResult("similarity", sweep, folder, params=params, metrics={**top_cka, **best_metrics(best)},
                          skipped=parallel.skipped)


def word_orders(languages: list[str]) -> dict[str, str] | None:
    """Each language's basic word order (the synthetic twins carry their real twin's), or None when any
    language's is not known (real languages): retrieval is then reported over all pairs only."""
    orders = {lang: (p.word_order(lang) if (p := providers.data_provider(lang)) and p.word_order else None)
              for lang in languages}
    if not languages or None in orders.values():
        return None
    return orders


def retrieval_rows(label: str, reps: dict[str, np.ndarray], orders: dict[str, str] | None) -> list[dict]:
    """One encoder's sentence retrieval P@1 (nearest neighbour by cosine, every ordered pair of languages)
    per layer and group: the mean over the group's pairs, their number, n sentences and chance 1/n.

    Groups are same-order, different-order and all when every word order is known, else all alone;
    a group without pairs (every language of one order) has no row.
    """
    if len(reps) < 2:
        return []
    n = next(iter(reps.values())).shape[1]
    groups = GROUPS if orders else {"all": GROUPS["all"]}
    rows = []
    for r in summarise(retrieval_by_layer(reps), (orders or {}).get, n):
        rows.extend({"encoder": label, "layer": r["layer"], "group": group, "p1": r[key],
                     "pairs": r[f"{key}_pairs"], "n": n, "chance": r["chance"]}
                    for group, key in groups.items() if r[f"{key}_pairs"])
    return rows


def best_layers(rows: list[dict]) -> list[dict]:
    """Per encoder and group of retrieval_rows: the layer with the highest P@1 (the lowest on a tie)."""
    out = []
    for encoder, group in dict.fromkeys((r["encoder"], r["group"]) for r in rows):
        top = best_layer([r for r in rows if r["encoder"] == encoder and r["group"] == group], key="p1")
        out.append({"encoder": encoder, "group": group, "best_layer": top["layer"], "p1": top["p1"],
                    "pairs": top["pairs"], "n": top["n"], "chance": top["chance"]})
    return out


def metric_key(*parts: str) -> str:
    """An MLflow metric name from labels such as 'ner:syn-en@20%' (MLflow allows letters, digits, _ - . / only)."""
    return "/".join(re.sub(r"[^\w.\-]+", "_", p.replace("%", "pct")) for p in parts)


def best_metrics(best: list[dict]) -> dict[str, float]:
    """retrieval_p1_best/<encoder>/<group> and retrieval_best_layer/<encoder>/<group>, logged to MLflow."""
    out = {}
    for b in best:
        out[metric_key("retrieval_p1_best", b["encoder"], b["group"])] = b["p1"]
        out[metric_key("retrieval_best_layer", b["encoder"], b["group"])] = b["best_layer"]
    return out


def _write_retrieval(folder: Path, rows: list[dict]) -> list[dict]:
    """retrieval.csv (every layer) and retrieval_best.csv (the best layer); returns the best rows."""
    best = best_layers(rows)
    write_csv(folder / "retrieval.csv", rows)
    write_csv(folder / "retrieval_best.csv", best)
    return best


def _write_note(path: Path, parallel: Parallel, orders: dict[str, str] | None) -> None:
    """parallel.json, and a log line for each language without parallel sentences (left out, not a crash)."""
    for lang, reason in parallel.skipped.items():
        log.warning("similarity: language %s skipped: %s", lang, reason)
    if len(parallel.texts) < 2:
        log.warning("similarity: fewer than two languages have parallel sentences: nothing to compare")
    groups = list(GROUPS) if orders else ["all"]
    write_json(path, {"source": parallel.source, "sentences": len(next(iter(parallel.texts.values()), [])),
                      "languages": list(parallel.texts), "skipped": parallel.skipped, "word_order": orders,
                      "retrieval_groups": groups,
                      "retrieval_note": "P@1 per word-order group (the twins' basic word order)" if orders else
                      "word order is not known for real languages: retrieval.csv has the group 'all' only"})


def _encoders(sweep, base, level: int | None, path: str) -> Iterator[tuple[str, object]]:
    """The dense encoder, a random one of its shape, and θ0 ⊙ mask of each finished cell of the first seed,
    built one at a time (at mBERT's size each copy is 0.7 GB)."""
    first = sweep.specs[0]
    yield "dense", base
    random = random_encoder_like(base, seed=0)
    install(first, random, path)  # a decoupled control's random twin reads its inputs as the control does
    yield "random", random
    for spec in sweep.specs:
        store = CellStore(sweep.storage, spec)
        k = spec.levels if level is None else level
        if spec.seed == first.seed and store.level_done(k):
            yield f"{spec.task}:{spec.language}@{spec.sparsities[k]:.0%}", _encoder_with_mask(
                base, load_masks(store.level_dir(k)), base.base_model_prefix + ".")


def _compare(label: str, reps: dict[str, np.ndarray]) -> list[dict]:
    """CKA (plug-in and debiased) and ratio-margin retrieval of one encoder, for every pair of languages and layer."""
    rows = []
    for a, b in combinations(sorted(reps), 2):
        debiased = cka_by_layer(reps[a], reps[b], debiased=True)
        for layer, cka in enumerate(cka_by_layer(reps[a], reps[b])):
            rows.append({"encoder": label, "layer": layer, "language_a": a, "language_b": b, "cka": cka,
                         "cka_debiased": debiased[layer],
                         "retrieval": retrieval_accuracy(reps[a][layer], reps[b][layer], k=5)})
    return rows


def _plot(rows: list[dict], path: Path, key: str, ylabel: str) -> None:
    series, bands = {}, {}
    for label in dict.fromkeys(r["encoder"] for r in rows):
        layers = sorted({r["layer"] for r in rows if r["encoder"] == label})
        means, low, high, pairs = mean_band([[r[key] for r in rows if r["encoder"] == label and r["layer"] == k]
                                             for k in layers])
        style = {"dense": dict(lw=2.5, color="black"), "random": dict(lw=2, ls="--", color="grey")}.get(
            label, dict(lw=1, alpha=0.7))
        series[label] = (layers, means, style)
        if pairs > 1 and label in ("dense", "random"):  # the sub-networks' bands would bury the figure
            bands[label] = (low, high)
    line_plot(series, "layer (0 = embeddings)", ylabel, "", path, bands=bands,
              note="bands: ±1 std over language pairs (dense and random; one encoder of each kind, no seeds)")
