"""Write the synthetic testbed to disk in the hub datasets' own schemas.

Layout (one folder per configuration, named by its hash, built atomically):
    testbed-<id>/spec.json
    testbed-<id>/data/<task>/<language>/{train,validation}.jsonl
    testbed-<id>/data/parallel/validation.jsonl   one row per meaning, a column per twin
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from lnsub.trainables.storage.local import atomic_dir, build_lock, is_built, write_json
from lnsub.trainables.ids import canonical, stable_id
from lnsub.trainables.testbed import grammar, ner
from lnsub.trainables.testbed.languages import TWINS, Twin

# 2: NER's sentences name their entities as testbed/ner.py draws them (several forms, nouns as names, novel
#    names); every other text is as in 1, so the tiny models (whose ids hash TestbedConfig, not SCHEMA) stand
SCHEMA = 2
SPLITS = ("train", "validation")
PARALLEL_FILE = "parallel/validation.jsonl"  # under the data folder: exact translations, for the similarity analysis
WIKIANN_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC")  # hub label ids


@dataclass(frozen=True)
class TestbedConfig:
    seed: int = 0
    languages: tuple[str, ...] = tuple(TWINS)
    anchor_fraction: float = 0.0  # share of content concepts with one form in every twin
    noise: float = 0.0  # per-word chance of a random replacement, outside entities
    mlm_docs: tuple[int, int] = (400, 40)  # documents per split (train, validation)
    mlm_sentences_per_doc: int = 6
    ner_examples: tuple[int, int] = (1000, 200)
    xnli_examples: tuple[int, int] = (2000, 300)
    parallel_sentences: int = 200

    __test__ = False  # not a pytest class

    @property
    def id(self) -> str:
        return stable_id(self, SCHEMA, prefix="testbed-")


def cache_root() -> Path:
    """Where generated testbeds and the tiny model live ($LNSUB_CACHE, else ~/.cache/lnsub)."""
    return Path(os.environ.get("LNSUB_CACHE") or Path.home() / ".cache" / "lnsub")


def _rng(config: TestbedConfig, *what: object) -> random.Random:
    return random.Random("|".join(map(str, (config.seed, *what))))


def _tokens(event: grammar.Event, twin: Twin, lex: dict, config: TestbedConfig,
            noise_rng: random.Random, with_end: bool = True) -> list[tuple[str, str]]:
    return grammar.add_noise(grammar.realise(event, twin, lex, with_end), lex, config.noise, noise_rng)


def _text(tokens: list[tuple[str, str]]) -> str:
    return " ".join(w for w, _ in tokens)


def _spans(tokens: list[tuple[str, str]]) -> list[str]:
    spans, current = [], None
    for word, tag in tokens:
        if tag.startswith("B-"):
            current = [tag[2:], [word]]
            spans.append(current)
        elif tag.startswith("I-") and current is not None:
            current[1].append(word)
        else:
            current = None
    return [f"{kind}: {' '.join(words)}" for kind, words in spans]


def mlm_rows(config: TestbedConfig, language: str, split: str) -> list[dict]:
    """Wikipedia schema: id, url, title, text."""
    twin = TWINS[language]
    lex = grammar.build_lexicon(twin, config.seed, config.anchor_fraction)
    latent, noise = _rng(config, "mlm", split), _rng(config, "mlm-noise", split, language)
    rows = []
    for i in range(config.mlm_docs[SPLITS.index(split)]):
        n = latent.randint(max(1, config.mlm_sentences_per_doc // 2), config.mlm_sentences_per_doc * 3 // 2)
        events = [grammar.sample_event(latent) for _ in range(n)]
        text = " ".join(_text(_tokens(e, twin, lex, config, noise)) for e in events)
        title = _text(grammar._phrase_tokens(events[0].agent, twin, lex))
        rows.append({"id": str(i), "url": f"synthetic://{language}/{split}/{i}", "title": title, "text": text})
    return rows


def ner_rows(config: TestbedConfig, language: str, split: str) -> list[dict]:
    """WikiANN schema: tokens, ner_tags (hub label ids), langs, spans; names as `testbed/ner.py` draws them."""
    twin = TWINS[language]
    lex = grammar.build_lexicon(twin, config.seed, config.anchor_fraction)
    names = {**lex, **ner.novel_lexicon(twin, config.seed, lex, SPLITS)}
    latent, noise = _rng(config, "ner", split), _rng(config, "ner-noise", split, language)
    rows = []
    for _ in range(config.ner_examples[SPLITS.index(split)]):
        words = grammar.realise(ner.sample_event(latent, split), twin, names, with_end=False)
        tokens = grammar.add_noise(words, lex, config.noise, noise)  # noise draws from the lexicon, never a novel name
        rows.append({
            "tokens": [w for w, _ in tokens],
            "ner_tags": [WIKIANN_TAGS.index(t) for _, t in tokens],
            "langs": [language] * len(tokens),
            "spans": _spans(tokens),
        })
    return rows


def nli_examples(config: TestbedConfig, split: str) -> list[tuple[grammar.Event, grammar.Event, int]]:
    """The latent (premise, hypothesis, label) triples; every twin translates the same ones."""
    latent = _rng(config, "xnli", split)
    return [grammar.sample_nli(latent) for _ in range(config.xnli_examples[SPLITS.index(split)])]


def xnli_rows(config: TestbedConfig, language: str, split: str) -> list[dict]:
    """XNLI schema: premise, hypothesis, label (0 entailment, 1 neutral, 2 contradiction)."""
    twin = TWINS[language]
    lex = grammar.build_lexicon(twin, config.seed, config.anchor_fraction)
    noise = _rng(config, "xnli-noise", split, language)
    return [
        {"premise": _text(_tokens(p, twin, lex, config, noise)),
         "hypothesis": _text(_tokens(h, twin, lex, config, noise)),
         "label": label}
        for p, h, label in nli_examples(config, split)
    ]


def parallel_rows(config: TestbedConfig) -> list[dict]:
    """The same meanings in every twin: exact translations, for CKA and retrieval."""
    latent = _rng(config, "parallel")
    events = [grammar.sample_event(latent) for _ in range(config.parallel_sentences)]
    lexicons = {lang: grammar.build_lexicon(TWINS[lang], config.seed, config.anchor_fraction)
                for lang in config.languages}
    return [
        {"id": i, **{lang: _text(grammar.realise(e, TWINS[lang], lexicons[lang])) for lang in config.languages}}
        for i, e in enumerate(events)
    ]


ROWS = {"mlm": mlm_rows, "ner": ner_rows, "xnli": xnli_rows}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def ensure_testbed(config: TestbedConfig = TestbedConfig(), root: Path | None = None) -> Path:
    """Generate the testbed once; later calls return the cached folder at once."""
    final = (root or cache_root()) / config.id
    if is_built(final):
        return final
    with build_lock(final):
        if not is_built(final):
            with atomic_dir(final) as tmp:
                for task, make in ROWS.items():
                    for language in config.languages:
                        for split in SPLITS:
                            _write_jsonl(tmp / "data" / task / language / f"{split}.jsonl",
                                         make(config, language, split))
                _write_jsonl(tmp / "data" / PARALLEL_FILE, parallel_rows(config))
                write_json(tmp / "spec.json", {"schema": SCHEMA, "config": canonical(config)})
    return final


def data_dir(testbed: Path, task: str, language: str) -> Path:
    return testbed / "data" / task / language
