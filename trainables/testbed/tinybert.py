"""A tiny multilingual BERT, pretrained by MLM on the union of the synthetic twins.

It is saved with `save_pretrained` (model and WordPiece tokenizer together), so
it loads through the very `from_pretrained` path that mBERT does. The folder is
named by a hash of its configuration: a second call finds it and does nothing.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lnsub.trainables.atomic import atomic_dir, is_done, read_json
from lnsub.trainables.ids import canonical, stable_id
from lnsub.trainables.tasks.mlm import group_texts, premask
from lnsub.trainables.testbed.generate import TestbedConfig, cache_root, ensure_testbed

SCHEMA = 1
PRETRAIN_REPORT = "pretrain.json"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TinyBertConfig:
    testbed: TestbedConfig = field(default_factory=TestbedConfig)
    vocab_size: int = 1000  # small enough that names split into several WordPieces
    hidden_size: int = 64
    layers: int = 4
    heads: int = 4
    intermediate_size: int = 128
    block_size: int = 64  # pretraining sequence length; also the position table's size x2
    steps: int = 500
    batch_size: int = 64
    lr: float = 3e-3
    dropout: float = 0.0  # the synthetic corpus is large for this model; dropout only slows it on CPU
    seed: int = 0

    @property
    def id(self) -> str:
        return stable_id(self, SCHEMA, prefix="tinybert-")


def train_tokenizer(texts: list[str], vocab_size: int):
    """A cased WordPiece tokenizer, built the way BERT's is, wrapped for `save_pretrained`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.decoder = decoders.WordPiece()
    return BertTokenizerFast(tokenizer_object=tok, do_lower_case=False, unk_token="[UNK]", pad_token="[PAD]",
                             cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def _texts(testbed: Path, language: str, split: str) -> list[str]:
    path = testbed / "data" / "mlm" / language / f"{split}.jsonl"
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


def _blocks(tokenizer, texts: list[str], block_size: int):
    from datasets import Dataset  # heavy: only pretraining the tiny model needs it

    return group_texts(Dataset.from_dict({"text": texts}), tokenizer, block_size)


def masked_accuracy(model, tokenizer, texts: list[str], block_size: int, train_texts: list[str]) -> dict:
    """Top-1 accuracy on masked validation tokens, against the unigram baseline.

    The unigram baseline always predicts the language's most frequent training
    token; its accuracy is that token's share of the masked targets.
    """
    valid = premask(_blocks(tokenizer, texts, block_size), tokenizer)
    counts = Counter(t for ids in tokenizer(train_texts, add_special_tokens=False)["input_ids"] for t in ids)
    top_token = counts.most_common(1)[0][0]
    ids = torch.tensor(valid["input_ids"])
    labels = torch.tensor(valid["labels"])
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(input_ids=ids[i:i + 64]).logits for i in range(0, len(ids), 64)])
    model.train()
    keep = labels != -100
    n = keep.sum().item()
    return {"masked_tokens": n,
            "accuracy": ((logits.argmax(-1) == labels) & keep).sum().item() / n,
            "unigram_baseline": ((labels == top_token) & keep).sum().item() / n}


def pretrain(config: TinyBertConfig, out: Path) -> dict:
    """Train the tokenizer and the model; save both to `out`; return the report."""
    from transformers import BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling, set_seed

    start = time.perf_counter()
    testbed = ensure_testbed(config.testbed)
    languages = config.testbed.languages
    train_texts = {lang: _texts(testbed, lang, "train") for lang in languages}
    tokenizer = train_tokenizer([t for lang in languages for t in train_texts[lang]], config.vocab_size)
    set_seed(config.seed)
    model = BertForMaskedLM(BertConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size, num_hidden_layers=config.layers,
        num_attention_heads=config.heads, intermediate_size=config.intermediate_size,
        max_position_embeddings=2 * config.block_size, type_vocab_size=2,
        hidden_dropout_prob=config.dropout, attention_probs_dropout_prob=config.dropout))
    from datasets import concatenate_datasets

    train = concatenate_datasets([_blocks(tokenizer, train_texts[lang], config.block_size) for lang in languages])
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    loader = torch.utils.data.DataLoader(train.with_format("torch"), batch_size=config.batch_size,
                                         shuffle=True, collate_fn=collator, drop_last=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    warmup = config.steps // 20
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * s / config.steps))))
    step, losses = 0, []
    model.train()
    while step < config.steps:
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            step += 1
            if step % 100 == 0:
                log.info("tiny BERT pretraining: step %d/%d, loss %.3f", step, config.steps,
                         sum(losses[-100:]) / 100)
            if step >= config.steps:
                break
    per_language = {lang: masked_accuracy(model, tokenizer, _texts(testbed, lang, "validation"),
                                          config.block_size, train_texts[lang]) for lang in languages}
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    report = {"config": canonical(config), "id": config.id, "parameters": sum(p.numel() for p in model.parameters()),
              "seconds": round(time.perf_counter() - start, 1), "final_loss": sum(losses[-100:]) / len(losses[-100:]),
              "per_language": per_language}
    (out / PRETRAIN_REPORT).write_text(json.dumps(report, indent=2))
    return report


def ensure_tiny_model(config: TinyBertConfig = TinyBertConfig(), root: Path | None = None) -> Path:
    """The tiny model's folder, pretraining it the first time (about 2 minutes on 2 cores)."""
    final = (root or cache_root()) / config.id
    if is_done(final):
        return final
    log.info("pretraining the tiny multilingual BERT %s (once; cached in %s)", config.id, final)
    with atomic_dir(final) as tmp:
        pretrain(config, tmp)
    return final


def pretrain_report(model_dir: Path) -> dict:
    return read_json(Path(model_dir) / PRETRAIN_REPORT)
