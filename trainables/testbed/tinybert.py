"""A tiny multilingual BERT, pretrained by MLM on the union of the synthetic twins.

It is saved with `save_pretrained` (model and WordPiece tokenizer together), so
it loads through the very `from_pretrained` path that mBERT does. The folder is
named by a hash of its configuration: a second call finds it and does nothing.

Design (docs/testbed.md has the measurements behind it), after Dufter & Schütze
(EMNLP 2020) and K et al. (ICLR 2020):
  * one sentence per sequence, [CLS] sentence [SEP], so position p means the same
    place in a sentence in every twin; position rows and special tokens are shared;
  * each twin gets its own WordPiece budget (its scripts share no character, so the
    merged vocabulary is disjoint per twin, anchors aside);
  * MLM's random replacements are drawn from the joint vocabulary (every twin's words);
  * the twins' pretraining corpora are comparable: each twin realises the same stream of
    latent events (`parallel=True`), shuffled into separate sequences;
  * the pretraining events describe a world (`world=1.0`, testbed/world.py): Zipfian names
    and word-specific associations, so no two words of a slot are exchangeable;
  * dictionary code-switching (`code_switch=0.6`): each word, with that probability, is
    written as the same concept's word of another twin. This injects cross-lingual signal
    DIRECTLY (a bilingual dictionary), as do anchors (TestbedConfig.anchor_fraction, off) and
    translation pairs (`translation_pairs`, off). The decoupled control never code-switches.

`decoupled=True` is the non-multilingual control: each twin has its own block of
position rows, its own [CLS]/[SEP]/[MASK] and draws replacements from its own words
only. Such a model must be fed through `LanguageTokenizer` (which sets position_ids
and the twin's specials); called without position_ids, BERT uses the first twin's block.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lnsub.trainables.storage.local import is_built, read_json
from lnsub.trainables.ids import canonical, stable_id
from lnsub.trainables.testbed import grammar, world
from lnsub.trainables.testbed.pretraining import masked_positions_loss, train_step, warmup_cosine
from lnsub.trainables.testbed.generate import TestbedConfig, cache_root
from lnsub.trainables.testbed.shipped import ensure_model
from lnsub.trainables.testbed.languages import TWINS

# 3: direct-signal knobs (code_switch, translation_pairs); the layout names the shared specials. New fields
#    (world) change every config's hash by themselves, so they need no bump.
# 4: the prediction head runs on the masked positions only (the same loss, other rounding: other weights)
SCHEMA = 4
PRETRAIN_REPORT = "pretrain.json"
LAYOUT = "testbed_layout.json"  # languages, their token ranges, special ids and position blocks
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TinyBertConfig:
    testbed: TestbedConfig = field(default_factory=TestbedConfig)
    word_level: bool = True  # each twin's vocabulary: its lexicon's words whole, plus its letters as fallback
    vocab_per_language: int = 200  # without word_level: WordPiece budget of each twin, its alphabet (and ##) included
    hidden_size: int = 64
    layers: int = 6
    heads: int = 4
    intermediate_size: int = 256
    max_positions: int = 128  # position rows (per twin when decoupled)
    sentences_per_language: int = 12000  # pretraining sentences, generated from the grammar
    parallel: bool = True  # every twin realises the same event stream (comparable corpora)
    joint_replacement: bool = True  # MLM random replacements from every twin's words, else the twin's own
    decoupled: bool = False  # the control: per-twin positions and specials, own-twin replacements
    code_switch: float = 0.6  # DIRECT signal: share of words swapped for the same concept's word in another twin
    translation_pairs: float = 0.0  # DIRECT signal: share of sequences `[CLS] s [SEP] t [SEP]`, t = s in another twin
    world: float = 1.0  # pretraining events follow a world (testbed/world.py) with this probability per part; 0: uniform
    steps: int = 1500  # the smoke grid's; the science grids pretrain 6000 (testbed_pretrain_steps)
    batch_size: int = 64
    lr: float = 2e-3
    dropout: float = 0.0  # the synthetic corpus is large for this model; dropout only slows it on CPU
    seed: int = 0

    @property
    def id(self) -> str:
        return stable_id(self, SCHEMA, prefix="tinybert-")


def pretraining_sentences(config: TinyBertConfig, language: str, split: str = "train") -> list[str]:
    """Sentences of one twin drawn from the grammar; with `parallel`, the same events in every twin."""
    tb = config.testbed
    n = config.sentences_per_language if split == "train" else 500
    stream = "all" if config.parallel else language
    latent = random.Random(f"pretrain|{tb.seed}|{split}|{stream}")
    noise = random.Random(f"pretrain-noise|{tb.seed}|{split}|{language}")
    lex = grammar.build_lexicon(TWINS[language], tb.seed, tb.anchor_fraction)
    twin = TWINS[language]
    if config.world > 0:
        described = world.build_world(tb.seed)
        events = [world.sample_event(latent, described, config.world) for _ in range(n)]
    else:
        events = [grammar.sample_event(latent) for _ in range(n)]
    sentences = [[w for w, _ in grammar.add_noise(grammar.realise(e, twin, lex), lex, tb.noise, noise)]
                 for e in events]
    # held-out sentences stay monolingual: the masked-accuracy report asks whether each twin was learned
    switch = 0.0 if config.decoupled or split != "train" else config.code_switch
    if switch > 0:
        sentences = code_switched(sentences, language, config, switch,
                                  random.Random(f"pretrain-switch|{tb.seed}|{split}|{language}"))
    return [" ".join(words) for words in sentences]


def code_switched(sentences: list[list[str]], language: str, config: TinyBertConfig, share: float,
                  rng: random.Random) -> list[list[str]]:
    """Dictionary code-switching: each word, with probability `share`, becomes the word of the same
    concept in another twin drawn at random. This injects cross-lingual signal directly (a bilingual
    dictionary); the ablation in docs/testbed.md measures how much of the model's alignment it buys.
    """
    tb = config.testbed
    lexicons = {lang: grammar.build_lexicon(TWINS[lang], tb.seed, tb.anchor_fraction) for lang in tb.languages}
    concept_of = {w: c for c, w in lexicons[language].items()}
    others = [lang for lang in tb.languages if lang != language]
    return [[lexicons[rng.choice(others)][concept_of[w]] if others and rng.random() < share else w
             for w in words] for words in sentences]


def _twin_vocab(texts: list[str], budget: int) -> list[str]:
    """One twin's WordPiece vocabulary (specials excluded), most useful first."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=budget + len(SPECIALS),
                                                             special_tokens=list(SPECIALS)))
    vocab = tok.get_vocab()
    return [t for t in sorted(vocab, key=vocab.get) if t not in SPECIALS]


def lexicon_vocab(config: TinyBertConfig, language: str) -> list[str]:
    """A twin's word-level vocabulary: every word of its lexicon, then its letters and their ## forms.

    The words come from the generator's lexicon (an oracle segmentation of the twin, no other
    twin involved); the letters keep every string of the script tokenisable.
    """
    twin = TWINS[language]
    words = sorted(set(grammar.build_lexicon(twin, config.testbed.seed, config.testbed.anchor_fraction).values()))
    return words + list(twin.letters) + [f"##{c}" for c in twin.letters]


def train_tokenizer(texts: dict[str, list[str]], budget: int, extra_specials: tuple[str, ...] = (),
                    vocabs: dict[str, list[str]] | None = None):
    """A cased WordPiece tokenizer whose vocabulary is each twin's own, merged; and each twin's id range.

    Ids: the five specials, then twin by twin its tokens (a token a twin shares with an earlier
    twin, an anchor, keeps its first id), then `extra_specials`.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    vocab, ranges = {t: i for i, t in enumerate(SPECIALS)}, {}
    for lang, lang_texts in texts.items():
        start = len(vocab)
        for t in (vocabs[lang] if vocabs else _twin_vocab(lang_texts, budget)):
            vocab.setdefault(t, len(vocab))
        ranges[lang] = (start, len(vocab))
    for t in extra_specials:
        vocab[t] = len(vocab)
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.decoder = decoders.WordPiece()
    wrapped = BertTokenizerFast(tokenizer_object=tok, do_lower_case=False, unk_token="[UNK]", pad_token="[PAD]",
                                cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    return wrapped, ranges


def make_layout(config: TinyBertConfig, tokenizer, ranges: dict[str, tuple[int, int]]) -> dict:
    """Per twin: token range, the ids of its [CLS]/[SEP]/[MASK] and its first position row."""
    shared = {k: tokenizer.convert_tokens_to_ids(f"[{k.upper()}]") for k in ("cls", "sep", "mask")}
    out = {"decoupled": config.decoupled, "max_positions": config.max_positions, "shared_specials": shared,
           "languages": {}}
    for i, lang in enumerate(config.testbed.languages):
        own = {k: tokenizer.convert_tokens_to_ids(f"[{k.upper()}-{lang}]") for k in shared}
        out["languages"][lang] = {
            "tokens": list(ranges[lang]),
            "specials": own if config.decoupled else shared,
            "position_offset": i * config.max_positions if config.decoupled else 0}
    return out


class LanguageTokenizer:
    """The model's tokenizer for one twin: its specials and position rows set (a no-op unless decoupled)."""

    def __init__(self, tokenizer, layout: dict, language: str):
        self.tokenizer, self.language = tokenizer, language
        self.entry = layout["languages"][language]
        self.decoupled = layout["decoupled"]

    def __call__(self, texts, **kwargs):
        enc = self.tokenizer(texts, **kwargs)
        if not self.decoupled:
            return enc
        ids = torch.as_tensor(enc["input_ids"])
        for k in ("cls", "sep", "mask"):
            ids = ids.masked_fill(ids == getattr(self.tokenizer, f"{k}_token_id"), self.entry["specials"][k])
        enc["input_ids"] = ids
        enc["position_ids"] = self.entry["position_offset"] + torch.arange(ids.shape[-1]).expand_as(ids)
        return enc


def load_layout(model_dir: Path) -> dict:
    return read_json(Path(model_dir) / LAYOUT)


def install_layout(model, model_dir) -> None:
    """Make a decoupled tiny model (`decoupled=True`) runnable by any caller, as `LanguageTokenizer` does.

    A forward pre-hook on the embeddings reads each row's twin from its tokens (the twins' id ranges
    are disjoint), swaps the shared [CLS]/[SEP]/[MASK] for the twin's own and, unless the caller gave
    them, sets the twin's position rows. A no-op for any other model: fine-tuning, transfer and
    similarity run the decoupled control through the same code as the multilingual model.
    """
    path = Path(model_dir) / LAYOUT
    if not path.is_file():
        return
    layout = read_json(path)
    if not layout.get("decoupled"):
        return
    embeddings = model.base_model.embeddings
    entries = list(layout["languages"].values())
    lang_of = torch.full((embeddings.word_embeddings.num_embeddings,), -1, dtype=torch.long)
    for i, e in enumerate(entries):
        lang_of[e["tokens"][0]:e["tokens"][1]] = i
        lang_of[list(e["specials"].values())] = i
    own = {k: torch.tensor([e["specials"][k] for e in entries]) for k in ("cls", "sep", "mask")}
    offsets = torch.tensor([e["position_offset"] for e in entries])
    shared_ids = layout["shared_specials"]

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is None:
            return None
        known = lang_of.to(ids.device)[ids]
        counts = torch.zeros(ids.shape[0], len(entries), dtype=torch.long, device=ids.device)
        counts.scatter_add_(1, known.clamp(min=0), (known >= 0).long())
        row = counts.argmax(1)
        for k, tid in shared_ids.items():
            ids = torch.where(ids == tid, own[k].to(ids.device)[row][:, None], ids)
        kwargs["input_ids"] = ids
        if kwargs.get("position_ids") is None:
            kwargs["position_ids"] = offsets.to(ids.device)[row][:, None] + torch.arange(ids.shape[1], device=ids.device)
        return args, kwargs

    embeddings.register_forward_pre_hook(hook, with_kwargs=True)


def language_tokenizers(model_dir: Path, tokenizer=None) -> dict[str, LanguageTokenizer]:
    """A `LanguageTokenizer` per twin of a saved tiny model."""
    from transformers import AutoTokenizer

    tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_dir)
    layout = load_layout(model_dir)
    return {lang: LanguageTokenizer(tokenizer, layout, lang) for lang in layout["languages"]}


def _encode(tokenizers: dict[str, LanguageTokenizer], texts: dict[str, list[str]],
            max_body: int = 126) -> list[tuple[int, list[int]]]:
    """(language index, token ids with the twin's specials) per sentence, every twin."""
    out = []
    for i, (lang, tok) in enumerate(tokenizers.items()):
        entry = tok.entry["specials"]
        for ids in tok.tokenizer(texts[lang], add_special_tokens=False)["input_ids"]:
            out.append((i, [entry["cls"], *ids[:max_body], entry["sep"]]))
    return out


def translation_rows(encoded: dict[str, list[list[int]]], specials: dict, count: int,
                     rng: random.Random) -> list[tuple[int, list[int]]]:
    """`count` sequences `[CLS] s [SEP] t [SEP]`: sentence i of one twin beside sentence i of another.

    Translation language modelling (Conneau & Lample 2019): a masked word can be read off its
    translation, so this injects cross-lingual signal directly (parallel data). Needs parallel corpora.
    """
    languages = list(encoded)
    n = min(len(v) for v in encoded.values())
    out = []
    for _ in range(count):
        a, b = rng.sample(range(len(languages)), 2)
        i = rng.randrange(n)
        out.append((a, [specials["cls"], *encoded[languages[a]][i], specials["sep"],
                        *encoded[languages[b]][i], specials["sep"]]))
    return out


def _batch(rows: list[tuple[int, list[int]]], layout: dict, languages: list[str], pad_id: int) -> dict:
    """Padded input_ids, attention mask, position ids and per-row language index."""
    width = max(len(ids) for _, ids in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for r, (_, seq) in enumerate(rows):
        ids[r, :len(seq)] = torch.tensor(seq)
    lang = torch.tensor([i for i, _ in rows])
    offsets = torch.tensor([layout["languages"][languages[i]]["position_offset"] for i, _ in rows])
    return {"input_ids": ids, "attention_mask": (ids != pad_id).long(),
            "position_ids": offsets[:, None] + torch.arange(width)[None, :], "lang": lang}


def mask_batch(batch: dict, layout: dict, languages: list[str], joint: bool, generator=None) -> dict:
    """BERT's masking: 15% of the non-special tokens are targets; 80% [MASK], 10% a random word, 10% kept.

    Random words come from every twin's range (joint) or from the row's own twin's range.
    """
    ids = batch["input_ids"]
    entries = [layout["languages"][lang] for lang in languages]
    special = torch.zeros_like(ids, dtype=torch.bool)
    for e in entries:
        for t in e["specials"].values():
            special |= ids == t
    special |= batch["attention_mask"] == 0
    targets = (torch.rand(ids.shape, generator=generator) < 0.15) & ~special
    draw = torch.rand(ids.shape, generator=generator)
    lo = torch.tensor([e["tokens"][0] for e in entries])
    hi = torch.tensor([e["tokens"][1] for e in entries])
    row_lo, row_hi = (lo[batch["lang"]], hi[batch["lang"]]) if not joint else (lo.min(), hi.max())
    span = (row_hi - row_lo).reshape(-1, 1) if not joint else row_hi - row_lo
    start = row_lo.reshape(-1, 1) if not joint else row_lo
    words = start + (torch.rand(ids.shape, generator=generator) * span).long()
    mask_ids = torch.tensor([e["specials"]["mask"] for e in entries])[batch["lang"]].reshape(-1, 1)
    inputs = torch.where(targets & (draw < 0.8), mask_ids.expand_as(ids), ids)
    inputs = torch.where(targets & (draw >= 0.8) & (draw < 0.9), words, inputs)
    return {"input_ids": inputs, "attention_mask": batch["attention_mask"], "position_ids": batch["position_ids"],
            "labels": ids.masked_fill(~targets, -100)}


def build_model(config: TinyBertConfig, vocab_size: int):
    from transformers import BertConfig, BertForMaskedLM

    n_blocks = len(config.testbed.languages) if config.decoupled else 1
    return BertForMaskedLM(BertConfig(
        vocab_size=vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.layers,
        num_attention_heads=config.heads, intermediate_size=config.intermediate_size,
        max_position_embeddings=n_blocks * config.max_positions, type_vocab_size=2,
        hidden_dropout_prob=config.dropout, attention_probs_dropout_prob=config.dropout))


def masked_accuracy(model, rows, layout: dict, languages: list[str], pad_id: int, unigram: Counter,
                    concept_of: dict[int, str] | None = None) -> dict:
    """Top-1 accuracy on masked held-out tokens (fixed masks, [MASK] for every target), vs the unigram baseline.

    With `concept_of` (token id -> latent concept, for whole-word vocabularies) also the concept accuracy:
    the prediction names the target's concept, in any twin's words. A code-switched model predicts the
    right concept but often in another twin's words (docs/testbed.md); this tells the two apart.
    """
    gen = torch.Generator().manual_seed(1234)
    hits = n = base = concept_hits = concept_base = 0
    top = unigram.most_common(1)[0][0]
    concepts = Counter()
    for t, count in unigram.items() if concept_of else ():
        concepts[concept_of.get(t)] += count
    top_concept = concepts.most_common(1)[0][0] if concepts else None
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), 128):
            b = mask_batch(_batch(rows[start:start + 128], layout, languages, pad_id), layout, languages,
                           joint=True, generator=gen)
            labels = b.pop("labels")
            logits = model(**b).logits
            keep = labels != -100
            predicted = logits.argmax(-1)
            hits += ((predicted == labels) & keep).sum().item()
            base += ((labels == top) & keep).sum().item()
            n += keep.sum().item()
            if concept_of:
                for p, t in zip(predicted[keep].tolist(), labels[keep].tolist()):
                    concept_hits += concept_of.get(p, "?p") == concept_of.get(t, "?t")
                    concept_base += concept_of.get(t) == top_concept
    model.train()
    out = {"masked_tokens": n, "accuracy": hits / n, "unigram_baseline": base / n}
    if concept_of:
        out.update(concept_accuracy=concept_hits / n, concept_unigram_baseline=concept_base / n)
    return out


def _train(model, config: TinyBertConfig, rows, layout: dict, languages: list[str], pad_id: int) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01, eps=1e-6)
    schedule = warmup_cosine(optimizer, config.steps)
    order = random.Random(f"order|{config.seed}")
    losses, model_start = [], time.perf_counter()
    model.train()
    for step in range(config.steps):
        chosen = [rows[order.randrange(len(rows))] for _ in range(config.batch_size)]
        batch = mask_batch(_batch(chosen, layout, languages, pad_id), layout, languages,
                           joint=config.joint_replacement and not config.decoupled)
        losses.append(train_step(model, batch, optimizer, schedule, masked_positions_loss))
        if (step + 1) % 100 == 0:
            log.info("tiny BERT pretraining: step %d/%d, loss %.3f, %.0f s", step + 1, config.steps,
                     sum(losses[-100:]) / 100, time.perf_counter() - model_start)
    return losses


def pretrain(config: TinyBertConfig, out: Path) -> dict:
    """Train the tokenizer and the model; save both (and the layout) to `out`; return the report."""
    from transformers import set_seed

    start = time.perf_counter()
    languages = list(config.testbed.languages)
    train = {lang: pretraining_sentences(config, lang) for lang in languages}
    extra = tuple(f"[{k}-{lang}]" for lang in languages for k in ("CLS", "SEP", "MASK")) if config.decoupled else ()
    vocabs = {lang: lexicon_vocab(config, lang) for lang in languages} if config.word_level else None
    tokenizer, ranges = train_tokenizer({lang: train[lang][:3000] for lang in languages},
                                        config.vocab_per_language, extra, vocabs)
    layout = make_layout(config, tokenizer, ranges)
    tokenizers = {lang: LanguageTokenizer(tokenizer, layout, lang) for lang in languages}
    set_seed(config.seed)
    model = build_model(config, len(tokenizer))
    rows = _encode(tokenizers, train)
    if config.translation_pairs > 0 and not config.decoupled:
        if not config.parallel:
            raise ValueError("translation_pairs needs parallel corpora (parallel=True)")
        bodies = {lang: [] for lang in languages}  # each sentence's tokens without its specials, cut to fit 2 in 128
        for i, ids in rows:
            bodies[languages[i]].append(ids[1:-1][:62])
        count = round(len(rows) * config.translation_pairs / (1 - config.translation_pairs))
        rows += translation_rows(bodies, layout["languages"][languages[0]]["specials"], count,
                                 random.Random(f"tlm|{config.seed}"))
    losses = _train(model, config, rows, layout, languages, tokenizer.pad_token_id)
    train_seconds = time.perf_counter() - start
    concept_of = {}
    if config.word_level:  # every lexicon word is one token: map it to its concept
        for lang in languages:
            lex = grammar.build_lexicon(TWINS[lang], config.testbed.seed, config.testbed.anchor_fraction)
            concept_of.update({tokenizer.convert_tokens_to_ids(w): c for c, w in lex.items()})
    per_language = {}
    for i, lang in enumerate(languages):
        held = _encode({lang: tokenizers[lang]}, {lang: pretraining_sentences(config, lang, "validation")})
        held = [(i, ids) for _, ids in held]
        unigram = Counter(t for ids in tokenizer(train[lang][:3000], add_special_tokens=False)["input_ids"]
                          for t in ids)
        per_language[lang] = masked_accuracy(model, held, layout, languages, tokenizer.pad_token_id, unigram,
                                             concept_of)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / LAYOUT).write_text(json.dumps(layout, indent=2))
    report = {"config": canonical(config), "id": config.id, "parameters": sum(p.numel() for p in model.parameters()),
              "seconds": round(time.perf_counter() - start, 1), "train_seconds": round(train_seconds, 1),
              "final_loss": sum(losses[-100:]) / len(losses[-100:]),
              "loss_curve": [round(sum(losses[i:i + 100]) / len(losses[i:i + 100]), 4)
                             for i in range(0, len(losses), 100)],
              "per_language": per_language}
    (out / PRETRAIN_REPORT).write_text(json.dumps(report, indent=2))
    return report


def ensure_tiny_model(config: TinyBertConfig = TinyBertConfig(), root: Path | None = None) -> Path:
    """The tiny model's folder: the shipped copy of its configuration (trainables/testbed/shipped/, checked by
    sha256) when there is one, else pretrained the first time (minutes on 2 cores; docs/testbed.md)."""
    return ensure_model((root or cache_root()) / config.id, config.id, lambda tmp: pretrain(config, tmp),
                        "tiny multilingual BERT")


def pretrain_report(model_dir: Path) -> dict:
    return read_json(Path(model_dir) / PRETRAIN_REPORT)
