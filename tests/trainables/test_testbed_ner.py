"""The testbed's NER is one a model can get wrong (trainables/testbed/ner.py), checked on the files the NER
task's loader reads: names of several forms, words that are a name in one sentence and O in another (with
the context that tells them apart), names validation holds and training never shows, out of the tiny
models' vocabularies; and no other text of the testbed changed, so the shipped models stand."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from lnsub.trainables.testbed import grammar
from lnsub.trainables.testbed.generate import WIKIANN_TAGS, TestbedConfig
from lnsub.trainables.testbed.languages import TWINS
from lnsub.trainables.testbed.shipped import SHIPPED

LANGS = ("syn-en", "syn-ur", "syn-ar")  # one twin per word order


def rows(testbed: Path, task: str, language: str, split: str) -> list[dict]:
    path = testbed / "data" / task / language / f"{split}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def tagged(row: dict) -> list[tuple[str, str]]:
    return [(w, WIKIANN_TAGS[t]) for w, t in zip(row["tokens"], row["ner_tags"])]


def entities(row: dict) -> list[tuple[str, tuple[str, ...]]]:
    """(kind, words) of each entity, read from the BIO tags alone."""
    out = []
    for word, tag in tagged(row):
        if tag.startswith("B-"):
            out.append((tag[2:], [word]))
        elif tag.startswith("I-"):
            out[-1][1].append(word)
    return [(kind, tuple(words)) for kind, words in out]


@pytest.mark.parametrize("language", LANGS)
def test_a_word_takes_several_tags_by_the_form_of_its_name(testbed_dir, language):
    tags = defaultdict(set)
    for row in rows(testbed_dir, "ner", language, "train"):
        for word, tag in tagged(row):
            tags[word].add(tag)
    # a family name alone (B-PER) or after the first name (I-PER); a place alone (B-LOC), after an adjective
    # (I-LOC) or heading an organisation (B-ORG)
    assert sum({"B-PER", "I-PER"} <= t for t in tags.values()) >= 10
    assert sum({"B-LOC", "B-ORG"} <= t for t in tags.values()) >= 5
    assert sum({"B-LOC", "I-LOC"} <= t for t in tags.values()) >= 5


@pytest.mark.parametrize("language", LANGS)
def test_a_noun_is_a_name_only_where_context_marks_one(testbed_dir, language):
    lex = grammar.build_lexicon(TWINS[language], TestbedConfig().seed)
    nouns = {w for c, w in lex.items() if c.startswith("noun:")}
    marker, kinds = lex["fn:in"], {w for c, w in lex.items() if c.startswith("orgkind:")}
    as_name = as_word = 0
    for row in rows(testbed_dir, "ner", language, "train"):
        words = tagged(row)
        for i, (word, tag) in enumerate(words):
            if word not in nouns:
                continue
            if tag == "O":
                as_word += 1
                continue
            as_name += 1
            start = i  # the name this noun is part of: back to its B- tag, on to its last I- tag
            while words[start][1].startswith("I-"):
                start -= 1
            end = i + 1
            while end < len(words) and words[end][1].startswith("I-"):
                end += 1
            span = [w for w, _ in words[start:end]]
            before = words[start - 1][0] if start else None
            after = words[end][0] if end < len(words) else None
            # a place: the location marker stands next to it (a postposition in SOV); an organisation: its kind
            # follows the noun that names it
            next_in_name = span[i - start + 1] if i - start + 1 < len(span) else None
            located = tag.endswith("LOC") and marker in (before, after)
            named_org = tag == "B-ORG" and next_in_name in kinds
            assert located or named_org, (words, i)
    assert as_name >= 30 and as_word >= 300, (as_name, as_word)


def test_validation_holds_names_that_training_never_shows_out_of_the_models_vocabulary(testbed_dir):
    from transformers import AutoTokenizer

    tokenizers = [AutoTokenizer.from_pretrained(folder) for folder in sorted(SHIPPED.glob("tinybert-*"))]
    assert tokenizers
    for language in LANGS:
        train_words = {w for r in rows(testbed_dir, "ner", language, "train") for w in r["tokens"]}
        valid = rows(testbed_dir, "ner", language, "validation")
        names = [words for r in valid for _, words in entities(r)]
        unseen = [words for words in names if not set(words) <= train_words]
        assert 0.1 < len(unseen) / len(names) < 0.5, (language, len(unseen), len(names))
        for words in unseen[:50]:  # a name's unseen word reaches the model as several pieces
            for tok in tokenizers:
                new = [w for w in words if w not in train_words]
                assert all(len(tok.tokenize(w)) >= 2 for w in new), (language, new)


def test_training_names_out_of_the_vocabulary_too():
    """Training holds novel names as well (as WikiANN's training holds rare names), from its own pool."""
    from lnsub.trainables.testbed.generate import ner_rows

    lex = grammar.build_lexicon(TWINS["syn-en"], 0)
    known = set(lex.values())
    train = ner_rows(TestbedConfig(), "syn-en", "train")
    novel = {w for r in train for w, t in tagged(r) if t != "O" and w not in known}
    valid = ner_rows(TestbedConfig(), "syn-en", "validation")
    novel_valid = {w for r in valid for w, t in tagged(r) if t != "O" and w not in known}
    assert len(novel) >= 100 and len(novel_valid) >= 20
    assert not novel & novel_valid


def test_twins_stay_parallel(testbed_dir):
    """The same events in every twin: each row holds the same entities, of the same kinds and lengths."""
    per_twin = {lang: rows(testbed_dir, "ner", lang, "validation") for lang in LANGS}
    for triple in zip(*per_twin.values()):
        shapes = [sorted((kind, len(words)) for kind, words in entities(r)) for r in triple]
        assert shapes[0] == shapes[1] == shapes[2]
        assert len({len(r["tokens"]) for r in triple}) == 1


def words(language: str) -> set[str]:
    return set(grammar.build_lexicon(TWINS[language], TestbedConfig().seed).values())


@pytest.mark.parametrize("task", ["mlm", "xnli"])
def test_no_other_text_holds_a_word_outside_the_lexicon(testbed_dir, task):
    """NER's novel names are NER's alone: the texts models pretrain on and other tasks read hold lexicon words only."""
    for language in LANGS:
        lexicon = words(language)
        for split in ("train", "validation"):
            for row in rows(testbed_dir, task, language, split):
                text = row["text"] if task == "mlm" else f"{row['premise']} {row['hypothesis']}"
                assert set(text.split()) <= lexicon


def test_the_parallel_sentences_hold_lexicon_words_only(testbed_dir):
    parallel = [json.loads(line) for line in (testbed_dir / "data/parallel/validation.jsonl").read_text().splitlines()]
    for language in LANGS:
        lexicon = words(language)
        assert all(set(r[language].split()) <= lexicon for r in parallel)
