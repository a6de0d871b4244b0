"""A tiny Llama-style decoder, pretrained by causal language modelling on the union of the synthetic twins.

The decoder-only counterpart of the tiny BERT (tinybert.py), for the one-shot pruning methods and the
language-specific neurons of decoder LLMs: the same pretraining sentences (tinybert.pretraining_sentences,
so the same world, parallel event streams and dictionary code-switching knobs), the same word-level
WordPiece vocabulary per twin (tinybert.train_tokenizer), one sentence per sequence framed as
`[CLS] sentence [SEP]`, where [CLS] serves as the beginning and [SEP] as the end of sequence. Saved with
`save_pretrained` (LlamaForCausalLM and its tokenizer) in a folder named by a hash of its configuration:
a second call finds it and does nothing.

The architecture is Llama's (RMSNorm, rotary positions, SwiGLU MLP with gate/up/down, grouped-query
attention), so lnsub prunes it with the Llama family's rule (pruning.py) and reads its neurons as
Llama's (analysis/neurons.py). Input and output embeddings are tied, as in Qwen2.5-0.5B.

`decoupled=True` is the non-multilingual control, as TinyBertConfig.decoupled: no code-switching and
each twin has its own beginning and end tokens ([CLS-<twin>], [SEP-<twin>]), so no token is shared across
twins. Rotary positions have no learned rows, so there is nothing to separate there. Score it with each
twin's own specials (`language_specials`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lnsub.trainables.storage.local import read_json
from lnsub.trainables.ids import canonical, stable_id
from lnsub.trainables.lm_scoring import perplexity, unigram_perplexity
from lnsub.trainables.pruning import prunable_count, prunable_parameters
from lnsub.trainables.testbed.generate import TestbedConfig, cache_root
from lnsub.trainables.testbed.pretraining import train_step, warmup_cosine
from lnsub.trainables.testbed.shipped import ensure_model
from lnsub.trainables.testbed.tinybert import TinyBertConfig, lexicon_vocab, pretraining_sentences, train_tokenizer

SCHEMA = 1
PRETRAIN_REPORT = "pretrain.json"
LAYOUT = "testbed_layout.json"  # languages, their token ranges and each twin's beginning and end tokens
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TinyDecoderConfig:
    testbed: TestbedConfig = field(default_factory=TestbedConfig)
    hidden_size: int = 64
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2  # grouped-query attention, as Llama 3 and Qwen2 have
    intermediate_size: int = 172  # about 8/3 of hidden, Llama's SwiGLU ratio; divisible by 4 for 2:4 pruning
    max_positions: int = 128
    sentences_per_language: int = 6000  # pretraining sentences per twin, generated from the grammar
    parallel: bool = True  # every twin realises the same event stream (comparable corpora)
    decoupled: bool = False  # the control: per-twin beginning and end tokens, no code-switching
    code_switch: float = 0.6  # DIRECT signal: share of words swapped for the same concept's word in another twin
    world: float = 1.0  # pretraining events follow a world (testbed/world.py) with this probability per part
    steps: int = 600  # short enough for tests; the knob for a better-trained model
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0

    @property
    def id(self) -> str:
        return stable_id(self, SCHEMA, prefix="tinydecoder-")

    def data(self, code_switch: float | None = None) -> TinyBertConfig:
        """The tiny BERT's data configuration that yields this decoder's pretraining sentences."""
        return TinyBertConfig(testbed=self.testbed, sentences_per_language=self.sentences_per_language,
                              parallel=self.parallel, decoupled=self.decoupled, world=self.world,
                              code_switch=self.code_switch if code_switch is None else code_switch)


def build_model(config: TinyDecoderConfig, vocab_size: int, specials: dict[str, int] | None = None):
    from transformers import LlamaConfig, LlamaForCausalLM

    specials = specials or {}
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.layers, num_attention_heads=config.heads, num_key_value_heads=config.kv_heads,
        max_position_embeddings=config.max_positions, tie_word_embeddings=True, hidden_act="silu",
        bos_token_id=specials.get("bos"), eos_token_id=specials.get("eos"), pad_token_id=specials.get("pad"),
        architectures=["LlamaForCausalLM"]))


def make_tokenizer(config: TinyDecoderConfig):
    """The word-level tokenizer of the tiny BERT (each twin's lexicon whole, its letters as fallback), with
    [CLS] and [SEP] named as beginning and end of sequence; and the layout."""
    languages = list(config.testbed.languages)
    data = config.data()
    extra = tuple(f"[{k}-{lang}]" for lang in languages for k in ("CLS", "SEP")) if config.decoupled else ()
    vocabs = {lang: lexicon_vocab(data, lang) for lang in languages}
    tokenizer, ranges = train_tokenizer({lang: [] for lang in languages}, 0, extra, vocabs)
    tokenizer.add_special_tokens({"bos_token": "[CLS]", "eos_token": "[SEP]"})
    ids = tokenizer.convert_tokens_to_ids
    layout = {"decoupled": config.decoupled, "languages": {
        lang: {"tokens": list(ranges[lang]),
               "bos": ids(f"[CLS-{lang}]" if config.decoupled else "[CLS]"),
               "eos": ids(f"[SEP-{lang}]" if config.decoupled else "[SEP]")} for lang in languages}}
    return tokenizer, layout


def language_specials(model_dir: Path, language: str) -> tuple[int, int]:
    """(beginning, end) token ids a twin's sequences are framed with: shared, or the twin's own if decoupled."""
    entry = read_json(Path(model_dir) / LAYOUT)["languages"][language]
    return entry["bos"], entry["eos"]


def encode(tokenizer, layout: dict, language: str, texts: list[str], max_positions: int) -> list[list[int]]:
    """`bos sentence eos` token ids of one twin's sentences, cut to fit `max_positions`."""
    entry = layout["languages"][language]
    return [[entry["bos"], *ids[:max_positions - 2], entry["eos"]]
            for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _batch(rows: list[list[int]], pad: int) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        attention[i, :len(r)] = 1
    return {"input_ids": ids, "attention_mask": attention, "labels": ids.masked_fill(attention == 0, -100)}


def _train(model, config: TinyDecoderConfig, rows: list[list[int]], pad: int) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01, eps=1e-6)
    schedule = warmup_cosine(optimizer, config.steps)
    order = random.Random(f"order|{config.seed}")
    losses, start = [], time.perf_counter()
    model.train()
    for step in range(config.steps):
        batch = _batch([rows[order.randrange(len(rows))] for _ in range(config.batch_size)], pad)
        losses.append(train_step(model, batch, optimizer, schedule))
        if (step + 1) % 100 == 0:
            log.info("tiny decoder pretraining: step %d/%d, loss %.3f, %.0f s", step + 1, config.steps,
                     sum(losses[-100:]) / 100, time.perf_counter() - start)
    return losses


def held_out_report(model, tokenizer, layout: dict, config: TinyDecoderConfig) -> dict:
    """Per twin: held-out perplexity (monolingual validation sentences) and the add-one unigram baseline
    fitted on the twin's monolingual training sentences, over the same predicted tokens."""
    out = {}
    for lang in config.testbed.languages:
        held_texts = pretraining_sentences(config.data(), lang, "validation")
        bos, eos = layout["languages"][lang]["bos"], layout["languages"][lang]["eos"]
        scored = perplexity(model, tokenizer, held_texts, bos=bos, eos=eos, max_length=config.max_positions)
        train = encode(tokenizer, layout, lang, pretraining_sentences(config.data(code_switch=0.0), lang),
                       config.max_positions)
        held = encode(tokenizer, layout, lang, held_texts, config.max_positions)
        out[lang] = {"perplexity": scored["perplexity"], "tokens": scored["tokens"],
                     "unigram_perplexity": unigram_perplexity(train, held, len(tokenizer))}
    return out


def pretrain(config: TinyDecoderConfig, out: Path) -> dict:
    """Build the tokenizer, pretrain the decoder, save both (and the layout) to `out`; return the report."""
    from transformers import set_seed

    start = time.perf_counter()
    tokenizer, layout = make_tokenizer(config)
    rows = [r for lang in config.testbed.languages
            for r in encode(tokenizer, layout, lang, pretraining_sentences(config.data(), lang), config.max_positions)]
    set_seed(config.seed)
    shared = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}
    model = build_model(config, len(tokenizer), shared)
    train_start = time.perf_counter()
    losses = _train(model, config, rows, tokenizer.pad_token_id)
    train_seconds = time.perf_counter() - train_start
    per_language = held_out_report(model, tokenizer, layout, config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / LAYOUT).write_text(json.dumps(layout, indent=2))
    report = {"config": canonical(config), "id": config.id, "parameters": sum(p.numel() for p in model.parameters()),
              "prunable": prunable_count(prunable_parameters(model)), "vocab_size": len(tokenizer),
              "sequences": len(rows), "seconds": round(time.perf_counter() - start, 1),
              "train_seconds": round(train_seconds, 1), "final_loss": sum(losses[-50:]) / len(losses[-50:]),
              "loss_curve": [round(sum(losses[i:i + 100]) / len(losses[i:i + 100]), 4)
                             for i in range(0, len(losses), 100)],
              "per_language": per_language}
    (out / PRETRAIN_REPORT).write_text(json.dumps(report, indent=2))
    return report


def ensure_tiny_decoder(config: TinyDecoderConfig = TinyDecoderConfig(), root: Path | None = None) -> Path:
    """The tiny decoder's folder: the shipped copy of its configuration (trainables/testbed/shipped/, checked by
    sha256) when there is one, else pretrained the first time (cached by its configuration's hash)."""
    return ensure_model((root or cache_root()) / config.id, config.id, lambda tmp: pretrain(config, tmp),
                        "tiny decoder")


def pretrain_report(model_dir: Path) -> dict:
    return read_json(Path(model_dir) / PRETRAIN_REPORT)


def decoupled(config: TinyDecoderConfig) -> TinyDecoderConfig:
    """The control of `config`: the same model and data, with no token shared across twins and no code-switching."""
    return dataclasses.replace(config, decoupled=True)
