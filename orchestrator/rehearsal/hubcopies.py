"""Local copies of the three hub datasets, laid out as `--data-dir` reads them and shaped as the Hub's.

Used by the loader tests (tests/hub_fixtures.py) and by `lnsub rehearsal` (testbed/rehearsal.py).
`write_hub_fixtures(root)` writes root/<task>/<language>/<split>.jsonl for en, fr, ar, fa, hi, sw
(only where the real dataset has the language), through each task's own `features()`:

- mlm, `wikimedia/wikipedia` (20231101.<lang>): train only; id, url, title, text (all strings);
  article-length texts: paragraphs of several sentences, "\\n\\n" between them (the title is a column).
- ner, `unimelb-nlp/wikiann`: train, validation, test; tokens, ner_tags (ClassLabel O, B-PER, ...),
  langs, spans ("PER: Name Here").
- xnli, `facebook/xnli`: train, validation, test; premise, hypothesis, label (entailment, neutral,
  contradiction); in validation and test each premise appears three times in a row, one per label.

Words are drawn deterministically from a per-language syllable set in the language's script; the
text means nothing. `vocabulary(language)` lists every word, for a WordPiece tokenizer in tests.
Sentence lengths in words follow the real datasets' (testbed/lengths.py: log-normal around the mean
that each language's dataset card implies): a WikiANN sentence about 6-10 words, an XNLI premise
about 15-23 and its hypothesis about half that.
"""

from __future__ import annotations

import random
from pathlib import Path

from lnsub.trainables.tasks import TASKS
from lnsub.orchestrator.rehearsal.lengths import draw_words

LANGUAGES = ("en", "fr", "ar", "fa", "hi", "sw")
SIZES = {"mlm": {"train": 120}, "ner": {"train": 60, "validation": 20, "test": 20},
         "xnli": {"train": 60, "validation": 10, "test": 10}}  # xnli validation/test: premises (x3 rows)
_LETTERS = {
    "en": "bcdfghklmnprstvw" + "aeiou", "fr": "bcdfgjlmnprstv" + "aeiouéèàâ", "sw": "bdghjkmnprstwyz" + "aeiou",
    "ar": "بتثجحخدذرزسشصضطظعغفقكلمنهوي", "fa": "بپتجچحخدرزژسشغفقکگلمنوهی", "hi": "कखगघचछजझटठडढणतथदधनपफबभमयरलवशसह",
}
_VOWELS = {"en": "aeiou", "fr": "aeiouéèàâ", "sw": "aeiou"}


def _words(language: str, n: int = 200) -> list[str]:
    rng = random.Random(f"words-{language}")
    letters = _LETTERS[language]
    vowels = _VOWELS.get(language)
    consonants = "".join(c for c in letters if not vowels or c not in vowels)
    words: list[str] = []
    while len(words) < n:
        syllables = rng.randint(1, 3)
        word = "".join(rng.choice(consonants) + (rng.choice(vowels) if vowels else "") for _ in range(syllables))
        if word not in words:
            words.append(word)
    return words


def vocabulary(language: str) -> list[str]:
    """Every word the fixtures of a language use (names are capitalised words)."""
    words = _words(language)
    return words + [w.capitalize() for w in words if w.capitalize() != w]


def _sentence(rng: random.Random, words: list[str], n: int | None = None) -> str:
    body = [rng.choice(words) for _ in range(n or rng.randint(6, 14))]
    return " ".join([body[0].capitalize(), *body[1:]]) + "."


def _article(rng: random.Random, words: list[str]) -> str:
    paragraphs = [" ".join(_sentence(rng, words) for _ in range(rng.randint(3, 6)))
                  for _ in range(rng.randint(3, 5))]
    return "\n\n".join(paragraphs)


def wikipedia_rows(language: str, n: int) -> list[dict]:
    rng, words = random.Random(f"wikipedia-{language}"), _words(language)
    rows, doc_id = [], 0
    for _ in range(n):
        doc_id += rng.randint(1, 40)  # real ids are increasing page ids with gaps
        title = " ".join(rng.choice(words).capitalize() for _ in range(rng.randint(1, 3)))
        rows.append({"id": str(doc_id), "url": f"https://{language}.wikipedia.org/wiki/{title.replace(' ', '_')}",
                     "title": title, "text": _article(rng, words)})
    return rows


def wikiann_rows(language: str, split: str, n: int) -> list[dict]:
    rng, words = random.Random(f"wikiann-{language}-{split}"), _words(language)
    return [_wikiann_row(rng, words, language, draw_words(rng, "ner", language)) for _ in range(n)]


def _wikiann_row(rng: random.Random, words: list[str], language: str, length: int) -> dict:
    """A sentence of `length` words holding one to three entities (at least one word each), the rest O."""
    names = TASKS["ner"].features()["ner_tags"].feature.names
    entities = [rng.randint(1, 3) for _ in range(rng.randint(1, 3))]
    while sum(entities) > length:  # a short sentence holds fewer, shorter entities
        entities = entities[:-1] if len(entities) > 1 else [length]
    gaps = [0] * (len(entities) + 1)  # the O words before, between and after the entities
    for _ in range(length - sum(entities)):
        gaps[rng.randrange(len(gaps))] += 1
    tokens, tags, spans = [], [], []
    for gap, size in zip(gaps, entities + [0]):
        tokens += [rng.choice(words) for _ in range(gap)]
        tags += [0] * gap
        if size:
            kind = rng.choice(("PER", "ORG", "LOC"))
            entity = [rng.choice(words).capitalize() for _ in range(size)]
            tokens += entity
            tags += [names.index(f"B-{kind}")] + [names.index(f"I-{kind}")] * (size - 1)
            spans.append(f"{kind}: {' '.join(entity)}")
    return {"tokens": tokens, "ner_tags": tags, "langs": [language] * len(tokens), "spans": spans}


def xnli_rows(language: str, split: str, n: int) -> list[dict]:
    rng, words = random.Random(f"xnli-{language}-{split}"), _words(language)

    def sentence(kind: str) -> str:
        return _sentence(rng, words, draw_words(rng, kind, language))

    if split == "train":
        return [{"premise": sentence("premise"), "hypothesis": sentence("hypothesis"), "label": rng.randrange(3)}
                for _ in range(n)]
    rows = []
    for _ in range(n):  # one premise, three hypotheses in a row, one per label, in no fixed order
        premise = sentence("premise")
        rows += [{"premise": premise, "hypothesis": sentence("hypothesis"), "label": label}
                 for label in rng.sample(range(3), 3)]
    return rows


def _rows(task: str, language: str, split: str, n: int) -> list[dict]:
    if task == "mlm":
        return wikipedia_rows(language, n)
    return (wikiann_rows if task == "ner" else xnli_rows)(language, split, n)


def write_hub_fixtures(root: Path, sizes: dict | None = None) -> Path:
    """Write every (task, language, split) file under root, cast to the task's hub features; returns root."""
    from datasets import Dataset  # heavy: only the fixtures need it here

    for task, splits in (sizes or SIZES).items():
        for language in LANGUAGES:
            if not TASKS[task].has_language(language):
                continue
            folder = root / task / language
            folder.mkdir(parents=True, exist_ok=True)
            for split, n in splits.items():
                ds = Dataset.from_list(_rows(task, language, split, n), features=TASKS[task].features())
                ds.to_json(folder / f"{split}.jsonl", force_ascii=False)
    return root
