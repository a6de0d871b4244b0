"""Is the testbed's tiny BERT multilingual? Sentence retrieval and word translation P@1 per layer,
for the pretrained model and its random-init control (same architecture, fresh weights).

Usage: python bench/multilinguality.py [--set field=value ...] [--languages a,b,c] [--json out.json]
    e.g. --set layers=8 --set decoupled=true     (fields of TinyBertConfig; pretrains once, cached)
    --languages syn-en,syn-ur,syn-ar also prints the best layer's sentence retrieval P@1 averaged over the
    ordered pairs of those twins (the smoke grid's), the figure the smoke model is held to.
Sentences: the testbed's held-out parallel file (data/parallel/validation.jsonl).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time

import torch

from lnsub.analysis.multilinguality import best_layer, sentence_retrieval, word_translation
from lnsub.analysis.similarity import random_encoder_like
from lnsub.trainables.testbed import grammar
from lnsub.trainables.testbed.generate import ensure_testbed
from lnsub.trainables.testbed.languages import TWINS
from lnsub.trainables.testbed.tinybert import TinyBertConfig, ensure_tiny_model, language_tokenizers, pretrain_report


def config_from(sets: list[str]) -> TinyBertConfig:
    base = TinyBertConfig()
    types = {f.name: type(getattr(base, f.name)) for f in dataclasses.fields(base)}
    values = {}
    for item in sets:
        key, value = item.split("=", 1)
        kind = types[key]
        values[key] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
    return dataclasses.replace(base, **values)


def evaluate(model, tokenizers, config: TinyBertConfig) -> dict:
    order = lambda lang: TWINS[lang].order  # noqa: E731
    path = ensure_testbed(config.testbed) / "data" / "parallel" / "validation.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    texts = {lang: [r[lang] for r in rows] for lang in config.testbed.languages}
    lex = {lang: grammar.build_lexicon(TWINS[lang], config.testbed.seed, config.testbed.anchor_fraction)
           for lang in config.testbed.languages}
    concepts = [c for c, kind in grammar.CONCEPTS.items() if kind == "word"]
    words = {lang: [lex[lang][c] for c in concepts] for lang in lex}
    return {"sentences": sentence_retrieval(model, tokenizers, texts, order),
            "words": word_translation(model, tokenizers, words, order)}


def pairs_best(result: dict, languages: list[str]) -> tuple[float, int]:
    """(P@1, layer): the layer whose sentence retrieval P@1, averaged over the ordered pairs of `languages`, is best."""
    pairs = [v for k, v in result["sentences"]["pairs"].items()
             if k.split(">")[0] in languages and k.split(">")[1] in languages]
    means = [sum(p[layer] for p in pairs) / len(pairs) for layer in range(len(pairs[0]))]
    best = max(range(len(means)), key=means.__getitem__)
    return means[best], best


def table(name: str, result: dict) -> str:
    lines = [f"{name}: sentence retrieval P@1 (n={result['sentences']['n']}), word translation P@1 "
             f"(n={result['words']['n']})",
             "layer  same-order  diff-order  chance | words same  words diff  chance"]
    for s, w in zip(result["sentences"]["layers"], result["words"]["layers"]):
        lines.append(f"{s['layer']:>5}  {s['same_order']:>10.3f}  {s['different_order']:>10.3f}  {s['chance']:.3f} |"
                     f" {w['same_order']:>10.3f}  {w['different_order']:>10.3f}  {w['chance']:.3f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--json")
    parser.add_argument("--anchor-fraction", type=float, default=0.0)  # shared anchor words: DIRECT signal
    parser.add_argument("--languages", default="", help="comma-separated twins: best-layer P@1 over their pairs")
    parser.add_argument("--threads", type=int, default=1)  # 2 threads on 2 shared cores ran 15x slower
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = config_from(args.set)
    if args.anchor_fraction:
        config = dataclasses.replace(config, testbed=dataclasses.replace(config.testbed,
                                                                         anchor_fraction=args.anchor_fraction))
    start = time.perf_counter()
    path = ensure_tiny_model(config)
    report = pretrain_report(path)
    from transformers import AutoModel

    model = AutoModel.from_pretrained(path)
    tokenizers = language_tokenizers(path)
    out = {"config": report["config"], "id": report["id"], "pretrain_seconds": report["seconds"],
           "train_seconds": report.get("train_seconds"), "final_loss": report["final_loss"],
           "loss_curve": report.get("loss_curve"), "parameters": report["parameters"],
           "masked_accuracy": {k: round(v["accuracy"], 3) for k, v in report["per_language"].items()},
           "model": evaluate(model, tokenizers, config),
           "random": evaluate(random_encoder_like(model), tokenizers, config)}
    print(f"{config.id}: {report['parameters']:,} parameters, pretraining {report['seconds']} s "
          f"(this call {time.perf_counter() - start:.0f} s), final loss {report['final_loss']:.3f}")
    print("masked accuracy:", out["masked_accuracy"])
    for name in ("model", "random"):
        print(table(name, out[name]))
        s = out[name]["sentences"]["layers"]
        c = out[name]["sentences"]["centred_layers"]
        print("  language-centred sentence retrieval, per layer (same / diff): "
              + ", ".join(f"{r['same_order']:.2f}/{r['different_order']:.2f}" for r in c))
        print(f"  best same-order {best_layer(s)['same_order']:.3f} (layer {best_layer(s)['layer']}), best "
              f"diff-order {best_layer(s, 'different_order')['different_order']:.3f}")
        if args.languages:
            p1, layer = pairs_best(out[name], args.languages.split(","))
            out[name]["pairs_best"] = {"languages": args.languages.split(","), "p1": p1, "layer": layer}
            print(f"  best layer over the pairs of {args.languages}: P@1 {p1:.3f} (layer {layer})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
