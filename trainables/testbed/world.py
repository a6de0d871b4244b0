"""A world for the pretraining corpus to describe: words that are not exchangeable.

`grammar.sample_event` draws every name, place, organisation and noun uniformly and
independently, so swapping two first names of one twin leaves its corpus's distribution
unchanged, and nothing in monolingual text tells which of another twin's names is a
name's translation (docs/testbed.md, "Why"). Natural text is not like that: some names
are frequent, a person has a family name, a home town, an employer and habits. This
module gives the latent events such a world, fixed by a seed and the same for every twin
(they describe one world, each in its own words):

  * Zipfian frequencies within every slot (a random rank per word);
  * per person: a family name, a home place, an employer, two favourite verbs, three
    favourite nouns; per organisation: its kind and its seat; per verb: its favourite
    nouns within its preferred class; per noun: its usual adjective.

With probability `strength` each part of an event follows the world; otherwise it is
drawn as `grammar.sample_event` would. No twin's words appear here: the structure is in
the latent concepts, and each twin's corpus is monolingual. It injects no cross-lingual
signal directly; it only makes each word's distribution its own, as in natural text.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

from lnsub.trainables.testbed import grammar as g


def _zipf(n: int, rng: random.Random, exponent: float) -> list[float]:
    ranks = list(range(n))
    rng.shuffle(ranks)
    return [1.0 / (r + 1) ** exponent for r in ranks]


@dataclass(frozen=True)
class World:
    first: list[float]
    last: list[float]
    place: list[float]
    org: list[float]
    family: list[int]  # first name -> last name
    home: list[int]  # first name -> place
    employer: list[int]  # first name -> organisation
    habits: list[tuple[int, ...]]  # first name -> verb pairs
    likes: list[tuple[tuple[str, int], ...]]  # first name -> (class, noun index)
    org_kind: list[int]
    seat: list[int]  # organisation -> place
    verb_nouns: list[list[float]]  # verb pair -> weights over its preferred class's nouns
    usual_adjective: dict[tuple[str, int], int]


@lru_cache(maxsize=8)
def build_world(seed: int, exponent: float = 1.0) -> World:
    rng = random.Random(f"world|{seed}")
    nouns = [(c, i) for c in g.NOUN_CLASSES for i in range(g.NOUNS_PER_CLASS)]
    return World(
        first=_zipf(g.N_FIRST_NAMES, rng, exponent), last=_zipf(g.N_LAST_NAMES, rng, exponent),
        place=_zipf(g.N_PLACES, rng, exponent), org=_zipf(g.N_ORG_NAMES, rng, exponent),
        family=[rng.randrange(g.N_LAST_NAMES) for _ in range(g.N_FIRST_NAMES)],
        home=[rng.randrange(g.N_PLACES) for _ in range(g.N_FIRST_NAMES)],
        employer=[rng.randrange(g.N_ORG_NAMES) for _ in range(g.N_FIRST_NAMES)],
        habits=[tuple(rng.sample(range(g.N_VERB_PAIRS), 2)) for _ in range(g.N_FIRST_NAMES)],
        likes=[tuple(rng.sample(nouns, 3)) for _ in range(g.N_FIRST_NAMES)],
        org_kind=[rng.randrange(g.N_ORG_KINDS) for _ in range(g.N_ORG_NAMES)],
        seat=[rng.randrange(g.N_PLACES) for _ in range(g.N_ORG_NAMES)],
        verb_nouns=[_zipf(g.NOUNS_PER_CLASS, rng, exponent) for _ in range(g.N_VERB_PAIRS)],
        usual_adjective={n: rng.randrange(g.N_ADJECTIVES) for n in nouns})


def _pick(rng: random.Random, weights: list[float]) -> int:
    return rng.choices(range(len(weights)), weights)[0]


def sample_event(rng: random.Random, world: World, strength: float) -> g.Event:
    """An event of `grammar`'s shape whose words follow `world` with probability `strength` each."""
    follows = lambda: rng.random() < strength  # noqa: E731
    first = _pick(rng, world.first)

    def person(i: int) -> g.Phrase:
        if rng.random() < 0.6:
            last = world.family[i] if follows() else _pick(rng, world.last)
            return g.Phrase("PER", (f"first:{i}", f"last:{last}"))
        return g.Phrase("PER", (f"first:{i}",))

    def organisation(o: int) -> g.Phrase:
        kind = world.org_kind[o] if follows() else rng.randrange(g.N_ORG_KINDS)
        return g.Phrase("ORG", (f"org:{o}", f"orgkind:{kind}"))

    def noun(cls: str, index: int) -> g.Phrase:
        adjective = None
        if rng.random() < 0.4:
            adjective = (f"adj:{world.usual_adjective[(cls, index)]}" if follows()
                         else g._adjective(rng, cls))
        return g.Phrase("NOUN", (f"noun:{cls}:{index}",), adjective)

    is_person = rng.random() < 0.7
    org = world.employer[first] if follows() else _pick(rng, world.org)
    agent = person(first) if is_person else organisation(org)
    pair = rng.choice(world.habits[first]) if is_person and follows() else rng.randrange(g.N_VERB_PAIRS)
    r = rng.random()
    if r < 0.7:
        if is_person and follows():
            cls, index = rng.choice(world.likes[first])
        else:
            cls = g.NOUN_CLASSES[pair % len(g.NOUN_CLASSES)] if rng.random() < g.SELECTION else rng.choice(g.NOUN_CLASSES)
            index = _pick(rng, world.verb_nouns[pair]) if follows() else rng.randrange(g.NOUNS_PER_CLASS)
        patient = noun(cls, index)
    elif r < 0.85:
        patient = person(_pick(rng, world.first))
    else:
        patient = organisation(_pick(rng, world.org))
    location = None
    if rng.random() < 0.5:
        if follows():
            place = world.home[first] if is_person else world.seat[org]
        else:
            place = _pick(rng, world.place)
        location = g.Phrase("LOC", (f"place:{place}",))
    verb = f"verb:{pair}:{rng.choice('ab')}"
    return g.Event(agent, verb, patient, location, negated=rng.random() < 0.2)
