"""The synthetic testbed: deterministic, typologically varied, labels that follow from meaning."""

from __future__ import annotations

import filecmp
import json
import random

import pytest

from lnsub.trainables.testbed import grammar
from lnsub.trainables.testbed.generate import (WIKIANN_TAGS, TestbedConfig, ensure_testbed, nli_examples,
                                         ner_rows, xnli_rows)
from lnsub.trainables.testbed.languages import TWINS

SMALL = TestbedConfig(languages=("syn-en", "syn-ur", "syn-ar"), mlm_docs=(5, 2), ner_examples=(20, 5),
                      xnli_examples=(30, 5), parallel_sentences=7)


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_generation_is_deterministic_per_seed(tmp_path):
    a = ensure_testbed(SMALL, tmp_path / "a")
    b = ensure_testbed(SMALL, tmp_path / "b")
    assert _files(a) == _files(b) and len(_files(a)) > 10
    for rel in _files(a):
        assert filecmp.cmp(a / rel, b / rel, shallow=False), rel
    other = TestbedConfig(**{**SMALL.__dict__, "seed": 1})
    c = ensure_testbed(other, tmp_path / "c")
    assert (a / "data/xnli/syn-en/train.jsonl").read_text() != (c / "data/xnli/syn-en/train.jsonl").read_text()


def test_second_call_returns_cached_folder(tmp_path):
    first = ensure_testbed(SMALL, tmp_path)
    stamp = (first / "data/mlm/syn-en/train.jsonl").stat().st_mtime_ns
    assert ensure_testbed(SMALL, tmp_path) == first
    assert (first / "data/mlm/syn-en/train.jsonl").stat().st_mtime_ns == stamp


def test_twins_share_no_character():
    alphabets = {code: set(twin.letters) for code, twin in TWINS.items()}
    assert len(alphabets) == 11
    codes = list(alphabets)
    for i, a in enumerate(codes):
        assert len(alphabets[a]) >= 20
        for b in codes[i + 1:]:
            assert not alphabets[a] & alphabets[b], (a, b)
    lexicon_chars = {code: set("".join(grammar.build_lexicon(t, 0).values())) for code, t in TWINS.items()}
    for a in codes:
        assert lexicon_chars[a] <= alphabets[a]


def test_anchor_fraction_shares_forms_across_twins():
    en = grammar.build_lexicon(TWINS["syn-en"], 0, anchor_fraction=0.3)
    ar = grammar.build_lexicon(TWINS["syn-ar"], 0, anchor_fraction=0.3)
    shared = [c for c in en if en[c] == ar[c]]
    content = [c for c in en if not c.startswith("fn:")]
    assert 0.15 < len(shared) / len(content) < 0.45
    assert not any(c.startswith("fn:") for c in shared)


def test_word_order_follows_the_real_twin():
    event = grammar.Event(agent=grammar.Phrase("PER", ("first:1",)), verb="verb:2:a",
                          patient=grammar.Phrase("NOUN", ("noun:food:3",)))
    for code, expected in (("syn-en", "SVO"), ("syn-ur", "SOV"), ("syn-ar", "VSO")):
        twin = TWINS[code]
        lex = grammar.build_lexicon(twin, 0)
        words = [w for w, _ in grammar.realise(event, twin, lex, with_end=False)]
        position = {"S": words.index(lex["first:1"]), "V": words.index(lex["verb:2:a"]),
                    "O": words.index(lex["noun:food:3"])}
        assert "".join(sorted(position, key=position.get)) == expected, code


def test_nli_labels_follow_from_the_latent_meaning():
    examples = nli_examples(TestbedConfig(), "train")
    counts = [sum(1 for *_, l in examples if l == k) for k in range(3)]
    assert min(counts) > 0.25 * len(examples)  # balanced labels
    for premise, hypothesis, label in examples:
        assert grammar.relation(premise, hypothesis) == label


def test_entailed_hypothesis_is_derivable_from_the_premise_surface():
    config = TestbedConfig(languages=("syn-fr",), xnli_examples=(300, 10))
    lex = grammar.build_lexicon(TWINS["syn-fr"], 0)
    hypernyms = {lex[f"class:{k}"] for k in grammar.NOUN_CLASSES}
    negation = lex["fn:not"]
    antonyms = {(lex[f"verb:{i}:{a}"], lex[f"verb:{i}:{b}"]) for i in range(grammar.N_VERB_PAIRS)
                for a, b in ("ab", "ba")}
    rows = xnli_rows(config, "syn-fr", "train")
    assert {r["label"] for r in rows} == {0, 1, 2}
    for row in rows:
        premise, hypothesis = row["premise"].split(), row["hypothesis"].split()
        if row["label"] == 0:  # every word is in the premise or names a premise noun's class
            assert set(hypothesis) <= set(premise) | hypernyms
            assert negation not in premise
        if row["label"] == 2:  # the same sentence with the negation flipped, or the verb's antonym
            unnegated = ([w for w in premise if w != negation], [w for w in hypothesis if w != negation])
            flipped = (negation in premise) != (negation in hypothesis) and unnegated[0] == unnegated[1]
            diffs = [(a, b) for a, b in zip(premise, hypothesis) if a != b]
            opposite = len(premise) == len(hypothesis) and len(diffs) == 1 and diffs[0] in antonyms
            assert flipped or opposite, row


def test_ner_rows_have_consistent_bio_tags_and_spans():
    rows = ner_rows(TestbedConfig(), "syn-de", "validation")
    kinds = set()
    for row in rows:
        assert len(row["tokens"]) == len(row["ner_tags"]) == len(row["langs"])
        tags = [WIKIANN_TAGS[t] for t in row["ner_tags"]]
        for prev, tag in zip(["O"] + tags, tags):
            if tag.startswith("I-"):
                assert prev[2:] == tag[2:], tags  # an I- tag continues an entity of its kind
        n_entities = sum(t.startswith("B-") for t in tags)
        assert len(row["spans"]) == n_entities
        kinds |= {t[2:] for t in tags if t != "O"}
    assert kinds == {"PER", "ORG", "LOC"}


def test_parallel_sentences_are_translations(testbed_dir):
    rows = [json.loads(line) for line in (testbed_dir / "data/parallel/validation.jsonl").read_text().splitlines()]
    assert len(rows) == TestbedConfig().parallel_sentences
    assert set(rows[0]) == {"id", *TWINS}
    # the same meaning: a twin's sentence has as many words as every other SVO/SOV/VSO rendering
    for row in rows[:20]:
        lengths = {len(row[c].split()) for c in TWINS}
        assert len(lengths) == 1


@pytest.mark.parametrize("noise", [0.3])
def test_noise_replaces_words_outside_entities(noise):
    twin = TWINS["syn-en"]
    lex = grammar.build_lexicon(twin, 0)
    rng = random.Random(0)
    clean = [grammar.realise(grammar.sample_event(rng), twin, lex) for _ in range(200)]
    noisy = [grammar.add_noise(t, lex, noise, random.Random(i)) for i, t in enumerate(clean)]
    changed = outside = 0
    for c, n in zip(clean, noisy):
        for (cw, ct), (nw, nt) in zip(c, n):
            assert ct == nt
            if ct != "O":
                assert cw == nw
            else:
                outside += 1
                changed += cw != nw
    assert 0.2 < changed / outside < 0.35
