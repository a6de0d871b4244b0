"""A tiny mT5, pretrained by span corruption (T5's objective) on the union of the synthetic twins.

It is the encoder-decoder counterpart of the tiny BERT (tinybert.py): saved with
`save_pretrained` (MT5ForConditionalGeneration and a Unigram tokenizer, as mT5's
SentencePiece is), in a folder named by a hash of its configuration, so a second
call finds it and does nothing. The paper fine-tunes mT5 on XNLI text-to-text
(tasks/xnli.py, XNLIText2Text): the tokenizer is also fitted on that task's
prompt and label words, so that no prompt token is unknown.

Span corruption: 15% of each block's tokens, in spans of mean length 3, are replaced
in the input by one sentinel per span; the target is each sentinel followed by the
tokens it hides, then end-of-sequence (Raffel et al. 2020, as mT5 was pretrained).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lnsub.trainables.storage.local import atomic_dir, build_lock, is_built, read_json
from lnsub.trainables.ids import canonical, stable_id
from lnsub.trainables.tasks.xnli import XNLI_LABELS, XNLI_PROMPT
from lnsub.trainables.testbed.pretraining import train_step, warmup_cosine
from lnsub.trainables.testbed import grammar
from lnsub.trainables.testbed.generate import TestbedConfig, cache_root, ensure_testbed
from lnsub.trainables.testbed.languages import TWINS

SCHEMA = 2  # 2: a whole-word vocabulary per twin (word_level), 1500 steps
PRETRAIN_REPORT = "pretrain.json"
SPECIALS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2, as mT5's: pad is also the decoder's start token
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TinyMT5Config:
    testbed: TestbedConfig = field(default_factory=TestbedConfig)
    word_level: bool = True  # each twin's lexicon words as whole pieces (as the tiny BERT), letters as fallback
    vocab_size: int = 1000  # without word_level: the Unigram tokenizer's budget, all twins together
    d_model: int = 64
    d_ff: int = 128
    layers: int = 3  # encoder blocks; the decoder has as many (mT5 is symmetric)
    heads: int = 4
    d_kv: int = 16
    sentinels: int = 16
    block_size: int = 64  # tokens a pretraining block is cut to, before corruption
    noise_density: float = 0.15
    mean_span: float = 3.0
    steps: int = 1500
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0

    @property
    def id(self) -> str:
        return stable_id(self, SCHEMA, prefix="tinymt5-")


def sentinel(i: int) -> str:
    return f"<extra_id_{i}>"


def lexicon_pieces(config: TinyMT5Config) -> list[str]:
    """The whole-word vocabulary: every twin's lexicon words and the prompt's words, each as one piece after
    SentencePiece's word boundary; then every letter, alone and after the boundary, as a fallback."""
    tb = config.testbed
    words, letters = [], []
    for lang in tb.languages:
        words += sorted(set(grammar.build_lexicon(TWINS[lang], tb.seed, tb.anchor_fraction).values()))
        letters += TWINS[lang].letters
    words += (XNLI_PROMPT[0] + XNLI_PROMPT[1] + " ".join(XNLI_LABELS)).split()
    letters += sorted({c for w in words for c in w} - set(letters))
    pieces = dict.fromkeys(["\u2581" + w for w in words] + ["\u2581"] + letters + ["\u2581" + c for c in letters])
    return list(pieces)


def train_tokenizer(texts: list[str], vocab_size: int, sentinels: int, pieces: list[str] | None = None):
    """A Unigram tokenizer with SentencePiece's word boundaries (as mT5's), `</s>` appended to every text:
    trained on `texts`, or, given `pieces`, with exactly those (whole words scored far above letters)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIALS) + [sentinel(i) for i in range(sentinels)]
    if pieces is not None:
        scored = [(t, 0.0) for t in specials] + [(t, -1.0 if len(t) > 2 else -20.0) for t in pieces]
        tok = Tokenizer(models.Unigram(scored, unk_id=SPECIALS.index("<unk>")))
    else:
        tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    if pieces is None:
        template = [XNLI_PROMPT[0] + XNLI_PROMPT[1] + " ".join(XNLI_LABELS)] * 1000  # whole pieces for the prompt
        tok.train_from_iterator(texts + template, trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>"))
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", eos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   extra_special_tokens=specials[len(SPECIALS):])


def _segments(rng: np.random.Generator, items: int, parts: int) -> np.ndarray:
    """A random split of `items` into `parts` positive lengths (T5's random_spans_noise_mask)."""
    cuts = np.sort(rng.choice(np.arange(1, items), parts - 1, replace=False)) if parts > 1 else np.zeros(0, int)
    return np.diff(np.concatenate([[0], cuts, [items]]))


def span_corrupt(ids: list[int], rng: np.random.Generator, config: TinyMT5Config,
                 sentinel_ids: list[int], eos: int) -> tuple[list[int], list[int]]:
    """(input, target) of one block: each noise span becomes one sentinel in the input; the target lists
    each sentinel and the tokens it replaced, then end-of-sequence."""
    n = len(ids)
    noise = min(max(1, round(n * config.noise_density)), n - 1)
    spans = max(1, min(round(noise / config.mean_span), len(sentinel_ids), noise, n - noise))
    noise_lengths, keep_lengths = _segments(rng, noise, spans), _segments(rng, n - noise, spans)
    source, target, pos = [], [], 0
    for k, (keep, hide) in enumerate(zip(keep_lengths, noise_lengths)):
        source += ids[pos:pos + keep] + [sentinel_ids[k]]
        target += [sentinel_ids[k]] + ids[pos + keep:pos + keep + hide]
        pos += keep + hide
    return source + [eos], target + [eos]


def _texts(testbed: Path, language: str, split: str) -> list[str]:
    path = testbed / "data" / "mlm" / language / f"{split}.jsonl"
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


def blocks(tokenizer, texts: list[str], block_size: int) -> list[list[int]]:
    """The texts' tokens, one language's documents end to end, cut into blocks of block_size."""
    stream = [t for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] for t in ids]
    return [stream[i:i + block_size] for i in range(0, len(stream) - block_size + 1, block_size)]


def batches(data: list[list[int]], tokenizer, config: TinyMT5Config, rng: np.random.Generator, size: int):
    """Padded span-corrupted batches, a fresh corruption each time a block is drawn (labels padded with -100)."""
    sentinel_ids = tokenizer.convert_tokens_to_ids([sentinel(i) for i in range(config.sentinels)])
    order = rng.permutation(len(data))
    for start in range(0, len(order) - size + 1, size):
        pairs = [span_corrupt(data[i], rng, config, sentinel_ids, tokenizer.eos_token_id)
                 for i in order[start:start + size]]
        yield _pad([p[0] for p in pairs], [p[1] for p in pairs], tokenizer.pad_token_id)


def _pad(sources: list[list[int]], targets: list[list[int]], pad: int) -> dict[str, torch.Tensor]:
    width, height = max(map(len, sources)), max(map(len, targets))
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in sources])
    labels = torch.tensor([t + [-100] * (height - len(t)) for t in targets])
    return {"input_ids": ids, "attention_mask": (ids != pad).long(), "labels": labels}


@torch.no_grad()
def denoising_accuracy(model, tokenizer, data: list[list[int]], config: TinyMT5Config,
                       train_counts: Counter) -> dict:
    """Teacher-forced top-1 accuracy on the hidden tokens of validation blocks (sentinels and end-of-sequence
    left out), against the unigram baseline: always the language's most frequent training token."""
    rng = np.random.default_rng(config.seed + 1)
    specials = set(tokenizer.all_special_ids)
    top = train_counts.most_common(1)[0][0]
    hits = base = n = 0
    model.eval()
    for batch in batches(data, tokenizer, config, rng, min(64, len(data))):
        predicted = model(**batch).logits.argmax(-1)
        labels = batch["labels"]
        scored = (labels != -100) & ~torch.isin(labels, torch.tensor(sorted(specials)))
        hits += int(((predicted == labels) & scored).sum())
        base += int(((labels == top) & scored).sum())
        n += int(scored.sum())
    model.train()
    return {"hidden_tokens": n, "accuracy": hits / max(n, 1), "unigram_baseline": base / max(n, 1)}


def build_model(config: TinyMT5Config, vocab_size: int):
    from transformers import MT5Config, MT5ForConditionalGeneration

    return MT5ForConditionalGeneration(MT5Config(
        vocab_size=vocab_size, d_model=config.d_model, d_ff=config.d_ff, num_layers=config.layers,
        num_decoder_layers=config.layers, num_heads=config.heads, d_kv=config.d_kv, feed_forward_proj="gated-gelu",
        dropout_rate=0.0, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        relative_attention_num_buckets=32, relative_attention_max_distance=128,
        architectures=["MT5ForConditionalGeneration"]))


def _train(model, train: list[list[int]], tokenizer, config: TinyMT5Config) -> list[float]:
    """config.steps AdamW steps of span corruption, warm-up then cosine decay; the losses."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    schedule = warmup_cosine(optimizer, config.steps)
    rng, losses = np.random.default_rng(config.seed), []
    model.train()
    while len(losses) < config.steps:
        for batch in batches(train, tokenizer, config, rng, config.batch_size):
            losses.append(train_step(model, batch, optimizer, schedule))
            if len(losses) % 100 == 0:
                log.info("tiny mT5 pretraining: step %d/%d, loss %.3f", len(losses), config.steps,
                         sum(losses[-100:]) / 100)
            if len(losses) >= config.steps:
                break
    return losses


def pretrain(config: TinyMT5Config, out: Path) -> dict:
    """Train the tokenizer and the model; save both to `out`; return the report."""
    from transformers import set_seed

    start = time.perf_counter()
    testbed = ensure_testbed(config.testbed)
    languages = config.testbed.languages
    texts = {lang: _texts(testbed, lang, "train") for lang in languages}
    tokenizer = train_tokenizer([t for lang in languages for t in texts[lang]], config.vocab_size, config.sentinels,
                                lexicon_pieces(config) if config.word_level else None)
    set_seed(config.seed)
    model = build_model(config, len(tokenizer))
    train = [b for lang in languages for b in blocks(tokenizer, texts[lang], config.block_size)]
    losses = _train(model, train, tokenizer, config)
    per_language = {}
    for lang in languages:
        counts = Counter(t for ids in tokenizer(texts[lang], add_special_tokens=False)["input_ids"] for t in ids)
        valid = blocks(tokenizer, _texts(testbed, lang, "validation"), config.block_size)
        per_language[lang] = denoising_accuracy(model, tokenizer, valid, config, counts)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    report = {"config": canonical(config), "id": config.id, "parameters": sum(p.numel() for p in model.parameters()),
              "seconds": round(time.perf_counter() - start, 1), "steps": len(losses),
              "final_loss": sum(losses[-50:]) / len(losses[-50:]), "per_language": per_language}
    (out / PRETRAIN_REPORT).write_text(json.dumps(report, indent=2))
    return report


def ensure_tiny_mt5(config: TinyMT5Config = TinyMT5Config(), root: Path | None = None) -> Path:
    """The tiny mT5's folder, pretraining it the first time (a couple of minutes on 2 cores)."""
    final = (root or cache_root()) / config.id
    if is_built(final):
        return final
    log.info("pretraining the tiny mT5 %s (once; cached in %s)", config.id, final)
    with build_lock(final):  # a second process (a parallel test worker, a trial) waits for the first
        if not is_built(final):
            with atomic_dir(final) as tmp:
                pretrain(config, tmp)
    return final


def pretrain_report(model_dir: Path) -> dict:
    return read_json(Path(model_dir) / PRETRAIN_REPORT)
