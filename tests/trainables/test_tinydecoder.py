"""The testbed's tiny Llama-style decoder: its shape, its data, its decoupled control, and (slow) the pretrained model."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from lnsub.trainables import lm_scoring, pruning
from lnsub.trainables.testbed import grammar
from lnsub.trainables.testbed.languages import TWINS
from lnsub.trainables.testbed.tinydecoder import (TinyDecoderConfig, build_model, decoupled, encode,
                                                  ensure_tiny_decoder, language_specials, make_tokenizer,
                                                  pretrain_report)
from lnsub.trainables.testbed.tinybert import pretraining_sentences


def test_the_tiny_decoder_counts_by_the_closed_form():
    c = TinyDecoderConfig()
    with torch.device("meta"):
        model = build_model(c, 3369)
    head_dim = c.hidden_size // c.heads
    block = 2 * c.hidden_size ** 2 + 2 * c.hidden_size * c.kv_heads * head_dim + 3 * c.hidden_size * c.intermediate_size
    params = pruning.prunable_parameters(model)
    assert pruning.prunable_count(params) == c.layers * block == 181_248
    assert {p.component for p in params} == {"q", "k", "v", "o", "gate", "up", "down"}
    assert model.config.tie_word_embeddings and model.config.hidden_act == "silu"
    assert c.intermediate_size % 4 == 0 and c.hidden_size % 4 == 0  # 2:4 applies to every matrix


def test_decoupled_control_shares_no_token_and_never_code_switches():
    config = TinyDecoderConfig(sentences_per_language=200)
    control = decoupled(config)
    assert control.id != config.id and control.decoupled and not config.decoupled
    shared_tok, shared = make_tokenizer(config)
    own_tok, own = make_tokenizer(control)
    assert {(e["bos"], e["eos"]) for e in shared["languages"].values()} == {
        (shared_tok.bos_token_id, shared_tok.eos_token_id)}
    pairs = [(e["bos"], e["eos"]) for e in own["languages"].values()]
    assert len({t for pair in pairs for t in pair}) == 2 * len(TWINS)  # every twin its own beginning and end
    lexicons = {lang: set(grammar.build_lexicon(TWINS[lang], 0).values()) for lang in TWINS}
    for cfg, switched in ((config, True), (control, False)):
        words = [w for s in pretraining_sentences(cfg.data(), "syn-fr") for w in s.split()]
        foreign = sum(w not in lexicons["syn-fr"] for w in words) / len(words)
        assert (foreign > 0.4) if switched else foreign == 0  # code_switch 0.6 of words, or none
    rows = encode(own_tok, own, "syn-de", ["x"], 128)
    assert rows[0][0] == own["languages"]["syn-de"]["bos"] and rows[0][-1] == own["languages"]["syn-de"]["eos"]


def test_every_lexicon_word_is_one_token():
    tokenizer, layout = make_tokenizer(TinyDecoderConfig())
    for lang in ("syn-en", "syn-zh", "syn-sw"):
        words = sorted(set(grammar.build_lexicon(TWINS[lang], 0).values()))
        ids = tokenizer(words, add_special_tokens=False)["input_ids"]
        lo, hi = layout["languages"][lang]["tokens"]
        assert all(len(i) == 1 and lo <= i[0] < hi for i in ids)


@pytest.mark.slow
@pytest.mark.parametrize("control", [False, True], ids=["multilingual", "decoupled"])
def test_pretrained_tiny_decoder_loads_and_beats_the_unigram_baseline(control):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = decoupled(TinyDecoderConfig()) if control else TinyDecoderConfig()
    folder = ensure_tiny_decoder(config)
    assert ensure_tiny_decoder(config) == folder  # found, not rebuilt
    report = pretrain_report(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert report["prunable"] == pruning.prunable_count(pruning.prunable_parameters(model))
    for lang, entry in report["per_language"].items():
        assert entry["perplexity"] < entry["unigram_perplexity"], lang
    lang = "syn-ur"  # the saved model scores as the model did before saving
    bos, eos = language_specials(folder, lang)
    again = lm_scoring.perplexity(model, tokenizer, pretraining_sentences(config.data(), lang, "validation"),
                                  bos=bos, eos=eos, max_length=config.max_positions)
    assert math.isclose(again["perplexity"], report["per_language"][lang]["perplexity"], rel_tol=1e-4)
    assert dataclasses.asdict(config)["steps"] == report["config"]["steps"]
