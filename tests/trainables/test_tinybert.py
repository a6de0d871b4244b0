"""The tiny multilingual BERT: loads like mBERT, learned every twin, cached by its config hash."""

from __future__ import annotations

import json

from lnsub.trainables.testbed.languages import TWINS
from lnsub.trainables.testbed.tinybert import TinyBertConfig, ensure_tiny_model, pretrain_report


def test_pretraining_beats_the_unigram_baseline_in_every_language(tiny_model):
    report = pretrain_report(tiny_model)
    assert 100_000 < report["parameters"] < 1_000_000  # "a few hundred thousand"
    assert set(report["per_language"]) == set(TWINS)
    for lang, r in report["per_language"].items():
        assert r["masked_tokens"] > 500, lang
        assert r["accuracy"] > 2 * r["unigram_baseline"] and r["accuracy"] > r["unigram_baseline"] + 0.04, (lang, r)


def test_loads_through_from_pretrained_with_a_disjoint_vocabulary(tiny_model, testbed_dir):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert tokenizer.is_fast and model.config.model_type == "bert"
    row = json.loads((testbed_dir / "data/parallel/validation.jsonl").read_text().splitlines()[0])
    specials = set(tokenizer.all_special_ids)
    ids = {lang: set(tokenizer(row[lang])["input_ids"]) - specials for lang in TWINS}
    langs = list(ids)
    for i, a in enumerate(langs):
        assert tokenizer.unk_token_id not in ids[a], a
        for b in langs[i + 1:]:
            assert not ids[a] & ids[b], (a, b)


def test_second_call_is_a_cache_hit(tiny_model):
    weights = next(tiny_model.glob("*.safetensors"))
    stamp = weights.stat().st_mtime_ns
    assert ensure_tiny_model(TinyBertConfig()) == tiny_model
    assert weights.stat().st_mtime_ns == stamp
    assert TinyBertConfig(steps=10).id != TinyBertConfig().id
