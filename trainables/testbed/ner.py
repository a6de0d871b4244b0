"""The testbed's NER: names a model can get wrong.

Under the first testbed data every name was one whole word of a closed set, always with one tag, and
dense F1 was 1.000 on every twin and seed: NER masks and NER transfer said nothing. NER's sentences
(and only NER's: the tiny models' pretraining text, MLM, XNLI and the parallel sentences are unchanged,
so the shipped models stay valid) now name their entities as WikiANN's do:

- **names of several forms** (`NAME_FORMS`): a person by first and family name, the first name alone
  or the family name alone; an organisation by its name and kind, after a place or a noun ("Apple
  Inc"), or by its name alone; a place alone or after an adjective ("New York"); places are patients
  too. So one word is B- in one sentence and I- in another, and a place's word may head an ORG;
- **words that are a name in one sentence and not in another** (`HOMONYM`): a place or an
  organisation written as a common noun of the twin ("Turkey", "Apple"). As a patient the noun is O;
  after the location marker, or before an organisation's kind, it is a name: only context tells;
- **names no pretraining text holds, and names training never shows** (`NOVEL`): a share of name
  slots take a string from a pool of the split's own (`novel:<split>:<slot>:<k>`, spelled in the
  twin's letters, in no lexicon). They are out of the tiny models' vocabularies, so they reach the
  model as letters, several pieces each (as a rare name reaches mBERT), and validation's pool is
  disjoint from training's: every such name in validation is unseen in training.

The twins stay parallel: events and name concepts are drawn once, in latent concepts; each twin
writes them with its own words (a novel name's spelling is fixed per twin and concept).
"""

from __future__ import annotations

import random
from dataclasses import replace

from lnsub.trainables.testbed import grammar
from lnsub.trainables.testbed.languages import Twin

SLOTS = {"first": grammar.N_FIRST_NAMES, "last": grammar.N_LAST_NAMES, "place": grammar.N_PLACES,
         "org": grammar.N_ORG_NAMES}
# The forms a name takes, with their probabilities; the first word is tagged B-, the rest I-.
NAME_FORMS = {
    "PER": ((("first", "last"), 0.5), (("first",), 0.3), (("last",), 0.2)),
    "ORG": ((("org", "orgkind"), 0.55), (("place", "orgkind"), 0.3), (("org",), 0.15)),
    "LOC": ((("place",), 0.85), (("prefix", "place"), 0.15)),
}
PREFIXES = ("adj:12", "adj:13")  # two of the buildings' adjectives also open a place's name ("New York")
NOVEL = 0.15  # share of name slots (first, last, place, org) filled from the split's pool of novel names
NOVEL_POOL = 400  # novel names per slot and split
HOMONYM = 0.15  # share of place slots written as a common noun (only where context marks a name)
PLACE_PATIENT = 0.1  # share of noun patients replaced by a place ("visited Paris")


def novel_concepts(split: str) -> list[str]:
    return [f"novel:{split}:{slot}:{k}" for slot in SLOTS for k in range(NOVEL_POOL)]


def novel_lexicon(twin: Twin, seed: int, lexicon: dict[str, str], splits: tuple[str, ...]) -> dict[str, str]:
    """Spellings of every split's novel names in one twin: unique, and no word of the twin's lexicon."""
    rng = random.Random(f"novel-names|{seed}|{twin.code}")
    used = set(lexicon.values())
    out = {}
    for split in splits:
        for concept in novel_concepts(split):
            word = grammar._word(rng, twin.letters, "word")
            while word in used:
                word = grammar._word(rng, twin.letters, "word")
            used.add(word)
            out[concept] = word
    return out


def _slot(rng: random.Random, slot: str, split: str, homonym_ok: bool) -> str:
    if slot == "orgkind":
        return f"orgkind:{rng.randrange(grammar.N_ORG_KINDS)}"
    if slot == "prefix":
        return rng.choice(PREFIXES)
    if homonym_ok and slot == "place" and rng.random() < HOMONYM:
        return f"noun:{rng.choice(grammar.NOUN_CLASSES)}:{rng.randrange(grammar.NOUNS_PER_CLASS)}"
    if rng.random() < NOVEL:
        return f"novel:{split}:{slot}:{rng.randrange(NOVEL_POOL)}"
    return f"{slot}:{rng.randrange(SLOTS[slot])}"


def name(kind: str, rng: random.Random, split: str, homonym_ok: bool = True) -> grammar.Phrase:
    """A PER, ORG or LOC phrase: a form from NAME_FORMS, each slot filled (novel names from `split`'s pool).

    `homonym_ok`: a place may be written as a noun only where context marks the name (after the location
    marker, before an organisation's kind), never as a bare patient, where a noun is O.
    """
    forms, weights = zip(*NAME_FORMS[kind])
    form = rng.choices(forms, weights)[0]
    marked = homonym_ok or "orgkind" in form  # an organisation's kind follows: its first word is a name
    return grammar.Phrase(kind, tuple(_slot(rng, slot, split, marked) for slot in form))


def sample_event(rng: random.Random, split: str) -> grammar.Event:
    """One NER sentence's event: the grammar's event with its names drawn as above."""
    e = grammar.sample_event(rng)
    agent = name(e.agent.kind, rng, split, homonym_ok=False)  # an agent holds no location marker
    if e.patient.kind != "NOUN":
        patient = name(e.patient.kind, rng, split, homonym_ok=False)
    elif rng.random() < PLACE_PATIENT:
        patient = name("LOC", rng, split, homonym_ok=False)
    else:
        patient = e.patient
    location = None if e.location is None else name("LOC", rng, split)
    return replace(e, agent=agent, patient=patient, location=location)
