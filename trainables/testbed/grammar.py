"""One latent grammar, realised in every synthetic twin.

A sentence means an event: an agent does (or does not do) something to a
patient, optionally somewhere. Events are sampled once, in latent concepts;
each twin realises them with its own lexicon and word order. NLI labels are
derived from the events themselves, so they follow from meaning, not surface.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, replace

from lnsub.trainables.testbed.languages import ANCHOR_LETTERS, Twin

NOUN_CLASSES = ("animal", "food", "tool", "vehicle", "building")
NOUNS_PER_CLASS = 8
N_VERB_PAIRS = 10  # each verb has one antonym: buy/sell, love/hate, ...
N_ADJECTIVES = 16
N_FIRST_NAMES, N_LAST_NAMES, N_PLACES, N_ORG_NAMES, N_ORG_KINDS = 40, 40, 30, 20, 4
FUNCTION_WORDS = ("in", "not", "end")  # location marker, negation, sentence end

ENTAILMENT, NEUTRAL, CONTRADICTION = 0, 1, 2  # the hub XNLI label ids


def _concepts() -> dict[str, str]:
    """Every latent concept -> its lexical kind (which sets word length)."""
    c: dict[str, str] = {}
    for k in NOUN_CLASSES:
        c[f"class:{k}"] = "word"
        for i in range(NOUNS_PER_CLASS):
            c[f"noun:{k}:{i}"] = "word"
    for i in range(N_VERB_PAIRS):
        c[f"verb:{i}:a"] = c[f"verb:{i}:b"] = "word"
    for i in range(N_ADJECTIVES):
        c[f"adj:{i}"] = "word"
    for prefix, n in (("first", N_FIRST_NAMES), ("last", N_LAST_NAMES), ("place", N_PLACES),
                      ("org", N_ORG_NAMES)):
        for i in range(n):
            c[f"{prefix}:{i}"] = "name"
    for i in range(N_ORG_KINDS):
        c[f"orgkind:{i}"] = "word"
    for w in FUNCTION_WORDS:
        c[f"fn:{w}"] = "function"
    return c


CONCEPTS = _concepts()
_SYLLABLES = {"function": (1, 1), "word": (2, 3), "name": (3, 4)}


def _stable_unit(*parts: object) -> float:
    """A number in [0, 1) fixed by its arguments, the same on every machine."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _word(rng: random.Random, letters: tuple[str, ...], kind: str) -> str:
    lo, hi = _SYLLABLES[kind]
    return "".join(rng.choice(letters) + rng.choice(letters) for _ in range(rng.randint(lo, hi)))


def build_lexicon(twin: Twin, seed: int, anchor_fraction: float = 0.0) -> dict[str, str]:
    """Concept -> surface word for one twin; words are unique within the twin.

    With anchor_fraction > 0 that share of content concepts (never function
    words) gets one surface form shared by every twin, written in a script no
    twin otherwise uses.
    """
    rng = random.Random(f"lexicon|{seed}|{twin.code}")
    anchor_rng = random.Random(f"anchors|{seed}")
    lexicon: dict[str, str] = {}
    used: set[str] = set()
    for concept, kind in CONCEPTS.items():
        anchored = kind != "function" and _stable_unit("anchor", seed, concept) < anchor_fraction
        anchor_form = _word(anchor_rng, ANCHOR_LETTERS, kind)  # drawn always: stable across fractions
        if anchored:
            word = anchor_form
        else:
            word = _word(rng, twin.letters, kind)
            while word in used:
                word = _word(rng, twin.letters, kind)
        used.add(word)
        lexicon[concept] = word
    return lexicon


@dataclass(frozen=True)
class Phrase:
    """A noun phrase: an entity name (PER/ORG/LOC) or a common noun with an optional adjective."""

    kind: str  # "PER", "ORG", "LOC" or "NOUN"
    words: tuple[str, ...]  # concepts, in canonical order
    adjective: str | None = None

    @property
    def noun_class(self) -> str | None:
        head = self.words[0]
        if head.startswith("noun:"):
            return head.split(":")[1]
        if head.startswith("class:"):
            return head.split(":")[1]
        return None


@dataclass(frozen=True)
class Event:
    agent: Phrase
    verb: str  # "verb:<i>:a" or "verb:<i>:b"
    patient: Phrase
    location: Phrase | None = None
    negated: bool = False


def antonym(verb: str) -> str:
    head, side = verb.rsplit(":", 1)
    return f"{head}:{'b' if side == 'a' else 'a'}"


def _person(rng: random.Random) -> Phrase:
    first = f"first:{rng.randrange(N_FIRST_NAMES)}"
    if rng.random() < 0.6:
        return Phrase("PER", (first, f"last:{rng.randrange(N_LAST_NAMES)}"))
    return Phrase("PER", (first,))


def _organisation(rng: random.Random) -> Phrase:
    return Phrase("ORG", (f"org:{rng.randrange(N_ORG_NAMES)}", f"orgkind:{rng.randrange(N_ORG_KINDS)}"))


def _place(rng: random.Random) -> Phrase:
    return Phrase("LOC", (f"place:{rng.randrange(N_PLACES)}",))


SELECTION = 0.85  # how often a verb takes a patient of its preferred class, a noun its class's adjectives


def _adjective(rng: random.Random, cls: str) -> str:
    """Adjectives 3c..3c+2 suit class c (colours of food, sizes of vehicles...); the rest go anywhere."""
    if rng.random() < SELECTION:
        return f"adj:{3 * NOUN_CLASSES.index(cls) + rng.randrange(3)}"
    return f"adj:{rng.randrange(N_ADJECTIVES)}"


def _noun(rng: random.Random, cls: str | None = None) -> Phrase:
    cls = cls or rng.choice(NOUN_CLASSES)
    adjective = _adjective(rng, cls) if rng.random() < 0.4 else None
    return Phrase("NOUN", (f"noun:{cls}:{rng.randrange(NOUNS_PER_CLASS)}",), adjective)


def sample_event(rng: random.Random) -> Event:
    """An event; verbs prefer patients of one noun class, so context predicts words."""
    agent = _person(rng) if rng.random() < 0.7 else _organisation(rng)
    pair = rng.randrange(N_VERB_PAIRS)
    preferred = NOUN_CLASSES[pair % len(NOUN_CLASSES)] if rng.random() < SELECTION else None
    r = rng.random()
    patient = _noun(rng, preferred) if r < 0.7 else (_person(rng) if r < 0.85 else _organisation(rng))
    location = _place(rng) if rng.random() < 0.5 else None
    verb = f"verb:{pair}:{rng.choice('ab')}"
    return Event(agent, verb, patient, location, negated=rng.random() < 0.2)


# --- NLI: hypotheses made from a premise by one meaning-level operation ---------------

def _entailed(e: Event, rng: random.Random) -> Event | None:
    # Dropping information entails only in an upward context: "x did not buy a red dog"
    # does not entail "x did not buy a dog". Negated premises get no entailment.
    if e.negated:
        return None
    ops = []
    if e.location is not None:
        ops.append(lambda: replace(e, location=None))
    if e.patient.adjective is not None:
        ops.append(lambda: replace(e, patient=replace(e.patient, adjective=None)))
    if e.patient.kind == "NOUN":
        # "x bought a red dog" entails "x bought an animal".
        ops.append(lambda: replace(e, patient=Phrase("NOUN", (f"class:{e.patient.noun_class}",))))
    return rng.choice(ops)() if ops else None


def _contradicted(e: Event, rng: random.Random) -> Event:
    ops = [lambda: replace(e, negated=not e.negated)]
    if not e.negated:
        ops.append(lambda: replace(e, verb=antonym(e.verb)))
    return rng.choice(ops)()


def _neutral(e: Event, rng: random.Random) -> Event:
    ops = []
    if not e.negated:  # adding information is neutral only in an upward context
        if e.location is None:
            ops.append(lambda: replace(e, location=_place(rng)))
        if e.patient.kind == "NOUN" and e.patient.adjective is None:
            adjective = _adjective(rng, e.patient.noun_class)
            ops.append(lambda: replace(e, patient=replace(e.patient, adjective=adjective)))
    if e.patient.kind == "NOUN" and e.patient.words[0].startswith("noun:"):
        def other_noun() -> Event:
            p = _noun(rng)
            while p.words == e.patient.words:
                p = _noun(rng)
            return replace(e, patient=replace(p, adjective=e.patient.adjective))
        ops.append(other_noun)
    if not ops:  # an entity patient: another person is neutral
        def other_person() -> Event:
            p = _person(rng)
            while p == e.patient:
                p = _person(rng)
            return replace(e, patient=p)
        ops.append(other_person)
    return rng.choice(ops)()


def sample_nli(rng: random.Random) -> tuple[Event, Event, int]:
    """(premise, hypothesis, label) with label ids as in the hub's XNLI."""
    label = rng.randrange(3)  # drawn first, so the three labels are balanced
    while True:
        premise = sample_event(rng)
        if label == ENTAILMENT:
            hypothesis = _entailed(premise, rng)
            if hypothesis is None:  # no entailment from this premise: draw another
                continue
        elif label == CONTRADICTION:
            hypothesis = _contradicted(premise, rng)
        else:
            hypothesis = _neutral(premise, rng)
        return premise, hypothesis, label


# --- realisation ------------------------------------------------------------------------

def _phrase_tokens(p: Phrase, twin: Twin, lex: dict[str, str]) -> list[tuple[str, str]]:
    if p.kind == "NOUN":
        words = [(lex[p.words[0]], "O")]
        if p.adjective is not None:
            adj = (lex[p.adjective], "O")
            words = words + [adj] if twin.adjective_after_noun else [adj] + words
        return words
    return [(lex[w], ("B-" if i == 0 else "I-") + p.kind) for i, w in enumerate(p.words)]


def realise(e: Event, twin: Twin, lex: dict[str, str], with_end: bool = True) -> list[tuple[str, str]]:
    """The event as (word, BIO tag) pairs in the twin's word order."""
    subject = _phrase_tokens(e.agent, twin, lex)
    obj = _phrase_tokens(e.patient, twin, lex)
    verb = ([(lex["fn:not"], "O")] if e.negated else []) + [(lex[e.verb], "O")]
    where: list[tuple[str, str]] = []
    if e.location is not None:
        place = _phrase_tokens(e.location, twin, lex)
        marker = [(lex["fn:in"], "O")]
        where = place + marker if twin.order == "SOV" else marker + place  # postposition in SOV
    if twin.order == "SVO":
        out = subject + verb + obj + where
    elif twin.order == "SOV":
        out = subject + obj + where + verb
    else:  # VSO
        out = verb + subject + obj + where
    return out + [(lex["fn:end"], "O")] if with_end else out


def add_noise(tokens: list[tuple[str, str]], lex: dict[str, str], noise: float,
              rng: random.Random) -> list[tuple[str, str]]:
    """Replace each outside-entity word, with probability `noise`, by a random word of the twin."""
    if noise <= 0:
        return tokens
    vocab = sorted(w for c, w in lex.items() if not c.startswith("fn:"))
    return [(rng.choice(vocab), t) if t == "O" and rng.random() < noise else (w, t) for w, t in tokens]


# --- meaning-level relation, written independently of the generators above ---------------

def _patient_facts(e: Event) -> set[tuple]:
    p = e.patient
    if p.kind != "NOUN":
        facts = {("patient", p)}
    else:
        facts = {("patient-class", p.noun_class)}
        if p.words[0].startswith("noun:"):
            facts.add(("patient-noun", p.words[0]))
        if p.adjective is not None:
            facts.add(("patient-adj", p.adjective))
    if e.location is not None:
        facts.add(("location", e.location))
    return facts


def relation(premise: Event, hypothesis: Event) -> int:
    """Entailment, neutral or contradiction, decided from the two meanings alone.

    Contradiction: the same participants with a negated or opposite predicate.
    Entailment: the same predicate, and the hypothesis says less (upward context)
    or more (under negation, a downward context) about the patient and place.
    """
    p, h = premise, hypothesis
    if p.agent != h.agent:
        return NEUTRAL
    if p.patient == h.patient and p.location == h.location:
        if p.verb == h.verb and p.negated != h.negated:
            return CONTRADICTION
        if h.verb == antonym(p.verb) and not p.negated and not h.negated:
            return CONTRADICTION
    if p.verb == h.verb and p.negated == h.negated:
        fp, fh = _patient_facts(p), _patient_facts(h)
        if (fh <= fp) if not p.negated else (fp <= fh):
            return ENTAILMENT
    return NEUTRAL
