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
"""

from __future__ import annotations

import random
from pathlib import Path

from lnsub.trainables.tasks import TASKS

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


def _sentence(rng: random.Random, words: list[str]) -> str:
    body = [rng.choice(words) for _ in range(rng.randint(6, 14))]
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
    names = TASKS["ner"].features()["ner_tags"].feature.names
    rows = []
    for _ in range(n):
        tokens, tags, spans = [], [], []
        for _ in range(rng.randint(1, 3)):
            tokens += [rng.choice(words) for _ in range(rng.randint(0, 3))]
            tags += [0] * (len(tokens) - len(tags))
            kind = rng.choice(("PER", "ORG", "LOC"))
            entity = [rng.choice(words).capitalize() for _ in range(rng.randint(1, 3))]
            tokens += entity
            tags += [names.index(f"B-{kind}")] + [names.index(f"I-{kind}")] * (len(entity) - 1)
            spans.append(f"{kind}: {' '.join(entity)}")
        rows.append({"tokens": tokens, "ner_tags": tags, "langs": [language] * len(tokens), "spans": spans})
    return rows


def xnli_rows(language: str, split: str, n: int) -> list[dict]:
    rng, words = random.Random(f"xnli-{language}-{split}"), _words(language)
    if split == "train":
        return [{"premise": _sentence(rng, words), "hypothesis": _sentence(rng, words), "label": rng.randrange(3)}
                for _ in range(n)]
    rows = []
    for _ in range(n):  # one premise, three hypotheses in a row, one per label, in no fixed order
        premise = _sentence(rng, words)
        rows += [{"premise": premise, "hypothesis": _sentence(rng, words), "label": label}
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
