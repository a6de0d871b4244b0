"""The tiny multilingual BERT: loads like mBERT, learned every twin, cached by its config hash."""

from __future__ import annotations

import json
from itertools import combinations

import pytest
import torch

from lnsub.trainables.loading import load_model
from lnsub.trainables.spec import make_spec
from lnsub.trainables.tasks import get_task
from lnsub.trainables.testbed.languages import TWINS
from lnsub.trainables.testbed.tinybert import (TinyBertConfig, ensure_tiny_model, language_tokenizers,
                                               load_layout, mask_batch, pretrain_report, pretraining_sentences,
                                               translation_rows)
from lnsub.trainables.testbed.pretraining import masked_positions_loss


def test_the_masked_positions_loss_is_the_models_own_loss_and_gradients():
    """Pretraining runs the head on masked positions only; HF's BertForMaskedLM loss (all positions) is the reference"""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                                       attention_probs_dropout_prob=0.0))
    ids = torch.randint(5, 97, (6, 11))
    attention = torch.ones_like(ids)
    attention[2, 7:] = 0
    labels = ids.masked_fill(torch.rand(ids.shape) > 0.3, -100)
    batch = {"input_ids": ids, "attention_mask": attention, "position_ids": torch.arange(11).expand(6, 11),
             "labels": labels}
    grads = []
    for loss_of in (lambda m, b: m(**b).loss, masked_positions_loss):
        loss = loss_of(model, batch)
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
        model.zero_grad()
    (reference, expected), (loss, got) = grads
    assert 0 < (labels != -100).sum() < labels.numel() and torch.isfinite(reference)
    torch.testing.assert_close(loss, reference)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=name)


def test_pretraining_beats_the_unigram_baseline_in_every_language(tiny_model):
    report = pretrain_report(tiny_model)
    assert 100_000 < report["parameters"] < 1_000_000  # "a few hundred thousand"
    assert set(report["per_language"]) == set(TWINS)
    for lang, r in report["per_language"].items():
        # 500 held-out sentences per twin; tokens are whole words now, so ~15% of ~3,300 words
        assert r["masked_tokens"] > 400, lang
        # Code-switched 60% of the time, the model names the masked word's concept but often in another
        # twin's words (the SVO twins look alike to it; docs/testbed.md): the bar is on the concept.
        assert r["concept_accuracy"] > r["concept_unigram_baseline"] + 0.1, (lang, r)
        assert r["concept_accuracy"] >= r["accuracy"]


def test_concept_accuracy_counts_a_translation_as_right():
    from collections import Counter

    from lnsub.trainables.testbed.tinybert import masked_accuracy

    sentence = [1, 5, 6, 7, 8, 9, 2]  # [CLS], twin A's words for concepts c0..c4, [SEP]
    concept_of = {t: f"c{(t - 5) % 5}" for t in range(5, 15)}  # tokens 10..14: twin B's words for c0..c4

    class Translator(torch.nn.Module):  # at every position, twin B's word for the sentence's true word there
        def forward(self, input_ids, **_):
            answer = torch.tensor([t + 5 if 5 <= t < 10 else t for t in sentence])
            return type("Out", (), {"logits": torch.nn.functional.one_hot(answer, 20).float().expand(
                input_ids.shape[0], -1, -1)})()

    layout = {"decoupled": False,
              "languages": {"A": {"tokens": [5, 10], "specials": {"cls": 1, "sep": 2, "mask": 3}, "position_offset": 0}}}
    out = masked_accuracy(Translator(), [(0, sentence)] * 40, layout, ["A"], 0, Counter({5: 3, 6: 1}), concept_of)
    assert out["masked_tokens"] > 0 and out["accuracy"] == 0.0 and out["concept_accuracy"] == 1.0


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


# ---- the decoupled control: no position row, special token or replacement shared between twins ----

SMALL_LANGS = ("syn-en", "syn-fr", "syn-ar")


def small_config(**kw):
    from lnsub.trainables.testbed.generate import TestbedConfig

    return TinyBertConfig(testbed=TestbedConfig(languages=SMALL_LANGS, mlm_docs=(5, 2), ner_examples=(5, 2),
                                                xnli_examples=(5, 2), parallel_sentences=5),
                          layers=1, hidden_size=16, heads=2, intermediate_size=32, vocab_per_language=60,
                          sentences_per_language=200, steps=2, batch_size=8, **kw)


@pytest.fixture(scope="module")
def small_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {d: ensure_tiny_model(small_config(decoupled=d), root) for d in (False, True)}


def used_rows(model_dir, text_by_lang):
    """Per twin: the position rows and special ids its inputs use."""
    toks = language_tokenizers(model_dir)
    out = {}
    for lang, text in text_by_lang.items():
        enc = toks[lang]([text], return_tensors="pt")
        width = enc["input_ids"].shape[1]
        positions = enc.get("position_ids", torch.arange(width)[None])
        ids = enc["input_ids"][0].tolist()
        out[lang] = (set(positions[0].tolist()), {ids[0], ids[-1]})
    return out


def test_decoupled_twins_share_no_position_row_and_no_special(small_models, tmp_path):
    from transformers import BertForMaskedLM

    texts = {lang: pretraining_sentences(small_config(), lang, "validation")[0] for lang in SMALL_LANGS}
    shared, decoupled = used_rows(small_models[False], texts), used_rows(small_models[True], texts)
    for a, b in combinations(SMALL_LANGS, 2):
        assert shared[a][1] == shared[b][1] and shared[a][0] & shared[b][0]  # the multilingual model shares
        assert not decoupled[a][0] & decoupled[b][0], (a, b)
        assert not decoupled[a][1] & decoupled[b][1], (a, b)
    model = BertForMaskedLM.from_pretrained(small_models[True])  # loads as a plain BERT
    layout = load_layout(small_models[True])
    assert model.config.max_position_embeddings == len(SMALL_LANGS) * layout["max_positions"]
    offsets = sorted(e["position_offset"] for e in layout["languages"].values())
    assert offsets == [i * layout["max_positions"] for i in range(len(SMALL_LANGS))]


def test_replacements_come_from_the_joint_or_the_own_vocabulary(small_models):
    layout = load_layout(small_models[True])
    ranges = {lang: e["tokens"] for lang, e in layout["languages"].items()}
    assert all(a[1] <= b[0] for a, b in zip(ranges.values(), list(ranges.values())[1:]))  # disjoint, in order
    width = 400
    lo, hi = ranges["syn-fr"]
    ids = torch.full((1, width), lo)  # every token a syn-fr token
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "position_ids": torch.zeros_like(ids),
             "lang": torch.tensor([1])}
    langs = list(SMALL_LANGS)
    for joint in (False, True):
        gen = torch.Generator().manual_seed(0)
        out = mask_batch(batch, layout, langs, joint=joint, generator=gen)
        mask_ids = {e["specials"]["mask"] for e in layout["languages"].values()}
        changed = [t for t in out["input_ids"][0].tolist() if t != lo and t not in mask_ids]
        assert changed
        inside = [lo <= t < hi for t in changed]
        assert all(inside) if not joint else not all(inside)
        assert all(ranges["syn-en"][0] <= t < ranges["syn-ar"][1] for t in changed)


def test_any_caller_runs_the_decoupled_control_on_its_twins_own_rows(small_models):
    """Fine-tuning, transfer and similarity call the model with the plain tokenizer: the layout hook must turn
    that into exactly what LanguageTokenizer feeds (own specials, own position block); a no-op when shared."""
    from transformers import AutoModel, AutoTokenizer

    texts = {lang: pretraining_sentences(small_config(), lang, "validation")[:2] for lang in SMALL_LANGS}
    for decoupled, folder in small_models.items():
        tokenizer, toks = AutoTokenizer.from_pretrained(folder), language_tokenizers(folder)
        reference = AutoModel.from_pretrained(folder).eval()
        spec = make_spec("ner", "syn-en", model="testbed-decoupled" if decoupled else "testbed", steps=4)
        # the path every cell loads through: the task's model, then its provider's adjustment
        hooked = load_model(spec, get_task("ner"), str(folder)).base_model.eval()
        for lang, sentences in texts.items():
            plain = tokenizer(sentences, return_tensors="pt", padding=True)
            own = toks[lang](sentences, return_tensors="pt", padding=True)
            with torch.no_grad():
                want = reference(**own).last_hidden_state
                got = hooked(**plain).last_hidden_state
                unhooked = reference(**plain).last_hidden_state
                again = hooked(**own).last_hidden_state  # LanguageTokenizer's inputs pass through unchanged
            assert torch.equal(got, want) and torch.equal(again, want), (decoupled, lang)
            # the check can fail: without the hook, the decoupled control reads other rows (syn-en's block
            # and the shared specials), except syn-en's own position block, which is the first one
            assert torch.equal(unhooked, want) == (not decoupled), (decoupled, lang)


def test_translation_rows_pair_a_sentence_with_its_own_translation():
    import random

    encoded = {lang: [[100 * k + i, 100 * k + i] for i in range(30)] for k, lang in enumerate(SMALL_LANGS, 1)}
    rows = translation_rows(encoded, {"cls": 2, "sep": 3}, 200, random.Random(0))
    seen = set()
    for lang_index, ids in rows:
        assert ids[0] == 2 and ids[3] == 3 and ids[-1] == 3 and len(ids) == 7
        a, b = ids[1] // 100 - 1, ids[4] // 100 - 1
        assert a == lang_index and a != b and ids[1] % 100 == ids[4] % 100  # sentence i beside sentence i
        seen.add((a, b))
    assert len(seen) == 6  # every ordered pair of the three twins occurs
