"""Validate the instrument by dose–response: the claims' statistics against how multilingual the model is.

Usage: python bench/dose_response.py [--storage DIR] [--replicates 2000] [--no-docs] [--rungs MODEL ...]
    --rungs: only these models of the ladder (a partial ladder: the table says which ran)

The ladder: the decoupled control (`testbed-decoupled`) and the tiny BERT at code-switching 0, 0.2, 0.4 and
0.6 (0.6 is `testbed`; the others are registered here as provider models `testbed-cs<x>`), each pretrained
1500 steps (the smoke grid's model; the science grids' 6000 would take most of the hour on their own). The
dose is each model's best-layer sentence-retrieval P@1 between twins of the same word order (the testbed's
held-out parallel sentences, bench/multilinguality.py's measure). On each model, IMP discovery of MLM on three
twins (syn-en, syn-ur, syn-ar: one per word order) x 2 seeds, 3 levels of 16% (to 48%), and MLM transfer at 48%
for seed 0 (every twin's ticket and a random mask onto every twin). Cut to fit the hour on a shared machine:
XNLI and NER (an XNLI cell took 4x an MLM cell; NER's testbed data is being remade), the third seed, the levels
past 48%, transfer of seed 1 and the one-shot θ0 transfer row.

Statistics, each at 48% (the claims' primary level) and oriented so that more language neutrality is higher:
  excess    cross-language, cross-seed pairs' excess Jaccard beyond θ0 (analysis/neutrality.py; claim e)
  crossing  cross-language minus same-language Jaccard over 2x2 blocks of languages x seeds (claim b negated)
  transfer  the random mask's relative MLM transfer cost minus other languages' tickets' (claim d)
Each against the dose: Spearman's rho and a bootstrap interval (analysis/dose_response.py). Writes
docs/dose_response.png, docs/dose_response.json and the "Dose–response" section of docs/testbed.md.
Cells and transfer jobs are idempotent in the storage: a rerun resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lnsub.analysis.claims import block_term, transfer_costs
from lnsub.analysis.dose_response import DoseResponse, Observations, dose_response
from lnsub.analysis.figures import new_figure, save_png
from lnsub.analysis.multilinguality import best_layer, sentence_retrieval
from lnsub.analysis.pairs import CROSS_CROSS, SAME_CROSS, pair_tables
from lnsub.analysis.transfer_matrix import plan_jobs, transfer_tables
from lnsub.trainables import providers
from lnsub.trainables.imp import run_cell
from lnsub.trainables.spec import make_spec
from lnsub.trainables.testbed.generate import cache_root, ensure_testbed
from lnsub.trainables.testbed.languages import TWINS
from lnsub.trainables.testbed.provider import bert_config, testbed_config
from lnsub.trainables.testbed.tinybert import ensure_tiny_model, install_layout, language_tokenizers
from lnsub.trainables.transfer_job import run_transfer_job

DOCS = Path(__file__).resolve().parents[1] / "docs"
LANGUAGES = ["syn-en", "syn-ur", "syn-ar"]
SEEDS = [0, 1]
LEVEL = 3  # 48% sparsity: the level nearest the paper's 50%
COMMON = {"levels": LEVEL, "prune_fraction": 0.16, "testbed_pretrain_steps": 1500}
TASKS = {"mlm": {"steps": 20, "lr": 1.0e-3, "batch_size": 32, "max_length": 64, "train_size": 2000, "valid_size": 200}}
TRANSFER_TASK, TRANSFER_SEEDS = "mlm", [0]
LADDER = [("decoupled", "testbed-decoupled", None), ("code-switch 0", "testbed-cs0.0", 0.0),
          ("code-switch 0.2", "testbed-cs0.2", 0.2), ("code-switch 0.4", "testbed-cs0.4", 0.4),
          ("code-switch 0.6", "testbed", None)]
STATISTICS = {"excess": "excess Jaccard beyond θ0, cross-language cross-seed pairs (claim e)",
              "crossing": "cross-language minus same-language Jaccard, other seeds (claim b, negated)",
              "transfer": "random mask's MLM transfer cost minus other languages' tickets' (claim d)"}
START, END = "<!-- dose-response: written by bench/dose_response.py -->", "<!-- dose-response: end -->"
log = logging.getLogger("dose_response")


def register_ladder() -> None:
    """The code-switching rungs as provider models: the testbed's tiny BERT with another `code_switch`."""
    for _, name, share in LADDER:
        if share is None:
            continue
        config = lambda spec, share=share: dataclasses.replace(bert_config(spec), code_switch=share)  # noqa: E731

        def prepare(spec, config=config) -> None:
            ensure_testbed(testbed_config(spec))
            ensure_tiny_model(config(spec))

        providers.register_model(providers.ModelProvider(
            names=(name,), revision=lambda spec, config=config: config(spec).id, prepare=prepare,
            path=lambda spec, config=config: str(cache_root() / config(spec).id), install=install_layout, small=True))


def retrieval(spec) -> dict:
    """Best-layer sentence-retrieval P@1 of the model a spec names (same and different word order)."""
    from transformers import AutoModel

    path = providers.model_provider(spec.model).path(spec)
    model = AutoModel.from_pretrained(path).eval()
    config = testbed_config(spec)
    rows = [json.loads(line) for line in (ensure_testbed(config) / "data" / "parallel" / "validation.jsonl")
            .read_text(encoding="utf-8").splitlines()]
    texts = {lang: [r[lang] for r in rows] for lang in config.languages}
    layers = sentence_retrieval(model, language_tokenizers(Path(path)), texts, lambda l: TWINS[l].order)["layers"]
    return {"same_order": best_layer(layers)["same_order"],
            "different_order": best_layer(layers, "different_order")["different_order"], "n": len(rows)}


def observations(pairs: list[dict], scores: list[dict]) -> dict[str, Observations]:
    at = [r for r in pairs if int(r["level"]) == LEVEL]
    excess = [float(r["excess_jaccard"]) for r in at if r["kind"] == CROSS_CROSS]
    blocks = [v for task in TASKS for t in block_term([r for r in at if r["task"] == task], SAME_CROSS)
              for v in t.values]
    costs = transfer_costs(scores).get(TRANSFER_TASK, {})
    return {"excess": Observations.of((1.0, excess)),
            "crossing": Observations.of((-1.0, blocks)),
            "transfer": Observations.of((1.0, [c for c, _ in costs.get("random", [])]),
                                        (-1.0, [c for c, _ in costs.get("languages", [])]))}


def run_model(label: str, model: str, storage: Path) -> dict:
    """Discovery, overlap, transfer and retrieval of one rung; its statistics' observations and timings."""
    started = time.perf_counter()
    specs = [make_spec(task, lang, model=model, seed=seed, **COMMON, **settings)
             for task, settings in TASKS.items() for lang in LANGUAGES for seed in SEEDS]
    providers.prepare(specs)
    t_model = time.perf_counter() - started
    dose = retrieval(specs[0])
    for spec in specs:
        run_cell(spec, storage)
    t_cells = time.perf_counter() - started - t_model
    pairs, _ = pair_tables(storage, specs)
    jobs = [j for j in plan_jobs(specs, LEVEL, [TRANSFER_TASK]) if j.kind != "oneshot" and j.target.seed in TRANSFER_SEEDS]
    for job in jobs:
        run_transfer_job(job, storage)
    scores = transfer_tables(storage, jobs)["scores"]
    at = [r for r in pairs if int(r["level"]) == LEVEL]
    summary = {kind: float(np.mean([r["jaccard"] for r in at if r["kind"] == kind])) for kind in (CROSS_CROSS, SAME_CROSS)}
    seconds = time.perf_counter() - started
    log.info("%s: P@1 %.3f, %.0f s (model %.0f s, cells %.0f s)", label, dose["same_order"], seconds, t_model, t_cells)
    return {"label": label, "model": model, "model_revision": specs[0].model_revision, "retrieval": dose,
            "jaccard": summary, "observations": observations(pairs, scores), "seconds": seconds,
            "model_seconds": t_model, "cells": len(specs), "transfer_jobs": len(jobs)}


def figure(results: dict[str, DoseResponse], rungs: list[dict], path: Path) -> Path:
    fig = new_figure(4.0 * len(results), 3.6)
    for k, (name, r) in enumerate(results.items()):
        ax = fig.add_subplot(1, len(results), k + 1)
        ax.plot(r.doses, r.values, "o-", color=f"C{k}")
        for x, y, rung in zip(r.doses, r.values, rungs):
            ax.annotate(rung["label"].replace("code-switch ", "cs "), (x, y), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        ax.axhline(0.0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("retrieval P@1 (best layer, same word order)")
        ax.set_title(f"{name}: rho {r.rho:+.2f} [{r.low:+.2f}, {r.high:+.2f}]", fontsize=9)
    fig.suptitle("Dose–response: each claim's statistic at 48% sparsity against the model's multilinguality",
                 fontsize=10)
    return save_png(fig, path)


def markdown(results: dict[str, DoseResponse], rungs: list[dict], wall: float, replicates: int) -> str:
    head = "| model | revision | retrieval P@1 same / diff order | cross-lang J | same-lang J | " + \
        " | ".join(results) + " |"
    lines = [head, "|" + " --- |" * (5 + len(results))]
    for i, rung in enumerate(rungs):
        d, j = rung["retrieval"], rung["jaccard"]
        lines.append(f"| {rung['label']} | {rung['model_revision']} | {d['same_order']:.3f} / {d['different_order']:.3f}"
                     f" | {j[CROSS_CROSS]:.3f} | {j[SAME_CROSS]:.3f} | "
                     + " | ".join(f"{r.values[i]:+.4f}" for r in results.values()) + " |")
    lines += ["", "| statistic | Spearman rho with P@1 | 95% bootstrap interval | reading |", "| --- | --- | --- | --- |"]
    for name, r in results.items():
        lines.append(f"| {name}: {STATISTICS[name]} | {r.rho:+.2f} | [{r.low:+.2f}, {r.high:+.2f}] "
                     f"({r.replicates} of {replicates} replicates defined) | {r.reading} |")
    rising = [n for n, r in results.items() if r.reading == "rises"]
    flat = [n for n, r in results.items() if r.reading != "rises"]
    lines += ["", f"Rungs run: {len(rungs)} of the ladder's {len(LADDER)} ({', '.join(r['label'] for r in rungs)}).",
              "", f"Rise with multilinguality (interval above 0): {', '.join(rising) or 'none'}. "
              f"Do not: {', '.join(flat) or 'none'}.", "",
              f"Wall time of `bench/dose_response.py`: {wall / 60:.1f} min (per model: "
              + ", ".join(f"{r['label']} {r['seconds'] / 60:.1f} min, of which pretraining {r['model_seconds']:.0f} s"
                          for r in rungs) + "); one thread.", "", "![dose-response](dose_response.png)"]
    return "\n".join(lines)


def write_docs(text: str) -> None:
    path = DOCS / "testbed.md"
    doc = path.read_text(encoding="utf-8")
    block = f"{START}\n{text}\n{END}"
    if START in doc:
        doc = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, doc, flags=re.S)
    else:
        doc = doc.rstrip("\n") + f"\n\n## Dose–response\n\n{block}\n"
    path.write_text(doc, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--storage", default=None)
    parser.add_argument("--replicates", type=int, default=2000)
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--rungs", nargs="+", choices=[m for _, m, _ in LADDER], default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)  # 2 threads on 2 shared cores ran far slower (bench/multilinguality.py)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("lnsub", "accelerate", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    storage = Path(args.storage or tempfile.mkdtemp(prefix="dose-"))
    started = time.perf_counter()
    register_ladder()
    # the most multilingual rung first: the smoke grid's model is usually built already
    ladder = [rung for rung in LADDER if args.rungs is None or rung[1] in args.rungs]
    rungs = [run_model(label, model, storage) for label, model, _ in reversed(ladder)][::-1]
    doses = [r["retrieval"]["same_order"] for r in rungs]
    results = {name: dose_response(name, doses, [r["observations"][name] for r in rungs], args.replicates)
               for name in STATISTICS}
    wall = time.perf_counter() - started
    text = markdown(results, rungs, wall, args.replicates)
    print(text)
    out = DOCS if not args.no_docs else storage
    figure(results, rungs, out / "dose_response.png")
    (out / "dose_response.json").write_text(json.dumps({
        "wall_seconds": wall, "storage": str(storage),
        "rungs": [{k: v for k, v in r.items() if k != "observations"} for r in rungs],
        "results": {n: dataclasses.asdict(r) for n, r in results.items()}}, indent=1))
    if not args.no_docs:
        write_docs(text)


if __name__ == "__main__":
    main()
