"""The pretraining world: Zipfian slots and word-specific associations, in closed form; one world for all twins."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from lnsub.trainables.testbed import grammar
from lnsub.trainables.testbed import world as W
from lnsub.trainables.testbed.generate import TestbedConfig
from lnsub.trainables.testbed.languages import TWINS
from lnsub.trainables.testbed.tinybert import TinyBertConfig, pretraining_sentences

N = 40_000


@pytest.fixture(scope="module")
def events():
    w = W.build_world(0)
    rng = random.Random("test-world")
    return w, [W.sample_event(rng, w, 0.8) for _ in range(N)]


def _agent_first(e: grammar.Event) -> int | None:
    return int(e.agent.words[0].split(":")[1]) if e.agent.kind == "PER" else None


def test_first_names_follow_their_zipf_weights(events):
    w, evs = events
    counts = Counter(_agent_first(e) for e in evs if e.agent.kind == "PER")
    total = sum(counts.values())
    for i, weight in enumerate(w.first):  # p(first = i) = w_i / sum(w), whatever the rest of the event
        expected = weight / sum(w.first)
        assert abs(counts[i] / total - expected) < 4 * (expected * (1 - expected) / total) ** 0.5 + 1e-3, i
    ranked = sorted(range(len(w.first)), key=w.first.__getitem__, reverse=True)
    assert counts[ranked[0]] > 5 * counts[ranked[-1]]  # not exchangeable: the top name is far more common


def test_a_person_keeps_a_family_name_and_a_home(events):
    w, evs = events
    family, home = Counter(), Counter()
    for e in evs:
        i = _agent_first(e)
        if i is None:
            continue
        if len(e.agent.words) == 2:
            family[(i, int(e.agent.words[1].split(":")[1]) == w.family[i])] += 1
        if e.location is not None:
            home[(i, int(e.location.words[0].split(":")[1]) == w.home[i])] += 1
    # closed form: the world's choice with probability 0.8, else a Zipf draw that may hit it too
    for counter, assoc, weights in ((family, w.family, w.last), (home, w.home, w.place)):
        per_person = Counter()
        for (i, _), v in counter.items():
            per_person[i] += v
        n = sum(per_person.values())
        hits = sum(v for (_, ok), v in counter.items() if ok)
        expected = sum(k * (0.8 + 0.2 * weights[assoc[i]] / sum(weights)) for i, k in per_person.items()) / n
        assert abs(hits / n - expected) < 4 * (expected * (1 - expected) / n) ** 0.5


def test_one_world_for_every_twin_and_code_switching_keeps_the_concepts():
    langs = ("syn-en", "syn-ar")
    mono = TinyBertConfig(testbed=TestbedConfig(languages=langs), world=1.0, code_switch=0.0, sentences_per_language=300)
    lex = {lang: grammar.build_lexicon(TWINS[lang], 0) for lang in langs}
    concept = {w: c for lang in langs for c, w in lex[lang].items()}  # the twins share no word
    text = {lang: pretraining_sentences(mono, lang) for lang in langs}
    for a, b in zip(text["syn-en"], text["syn-ar"]):  # the same events: the same concepts, each twin its own words
        assert sorted(concept[x] for x in a.split()) == sorted(concept[x] for x in b.split())  # word order differs
        assert set(a.split()) <= set(lex["syn-en"].values()) and set(b.split()) <= set(lex["syn-ar"].values())
    uniform = pretraining_sentences(TinyBertConfig(testbed=mono.testbed, world=0.0, code_switch=0.0,
                                                   sentences_per_language=300), "syn-en")
    assert uniform != text["syn-en"]  # the world changes the corpus
    # the default switches each word, with probability 0.6, to the same concept in the other twin
    switched = pretraining_sentences(TinyBertConfig(testbed=mono.testbed, sentences_per_language=300), "syn-en")
    words = [(x, y) for s, t in zip(switched, text["syn-en"]) for x, y in zip(s.split(), t.split(), strict=True)]
    assert all(concept[x] == concept[y] for x, y in words)
    share = sum(x not in lex["syn-en"].values() for x, _ in words) / len(words)
    assert abs(share - 0.6) < 4 * (0.24 / len(words)) ** 0.5
    held_out = pretraining_sentences(TinyBertConfig(testbed=mono.testbed, sentences_per_language=300), "syn-en",
                                     "validation")
    assert all(x in lex["syn-en"].values() for s in held_out for x in s.split())  # the report's sentences: monolingual
