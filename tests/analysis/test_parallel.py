"""Parallel sentences for `lnsub similarity`: XNLI premises without their repeats, WMT14 en-fr for exactly
en and fr, and a language without a parallel source left out with its reason, on local copies in the hub schemas."""

from __future__ import annotations

import csv
import json
import random

import pytest

from lnsub.analysis.representations import distinct_rows, parallel_sentences, similarity
from lnsub.trainables.errors import LnsubError
from lnsub.trainables.spec import make_spec
from lnsub.analysis.sweeps import Resources, PlannedCell, SweepState, save_state

PREMISES = 24


def _sentences(vocab: list[str], n: int, seed: int) -> list[str]:
    """n distinct sentences of 4 to 9 words the tokenizer knows."""
    rng, out = random.Random(seed), []
    while len(out) < n:
        sentence = " ".join(rng.choice(vocab) for _ in range(rng.randint(4, 9)))
        if sentence not in out:
            out.append(sentence)
    return out


def write_xnli(data_dir, language: str, premises: list[str]) -> None:
    """An XNLI-shaped local copy: each premise three times in a row, once per hypothesis and label."""
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"premise": Value("string"), "hypothesis": Value("string"),
                         "label": ClassLabel(names=["entailment", "neutral", "contradiction"])})
    rows = {"premise": [p for p in premises for _ in range(3)],
            "hypothesis": [f"{p} h{k}" for p in premises for k in range(3)],
            "label": [k for _ in premises for k in range(3)]}
    folder = data_dir / "xnli" / language
    folder.mkdir(parents=True)
    for split in ("train", "validation"):
        Dataset.from_dict(rows, features=features).to_json(folder / f"{split}.jsonl")


@pytest.fixture(scope="module")
def vocab(tiny_model):
    from transformers import AutoTokenizer

    words = [w for w in AutoTokenizer.from_pretrained(tiny_model).get_vocab() if w.isalpha() and w.islower()]
    assert len(words) > 50
    return sorted(words)


def test_repeated_rows_are_dropped_in_every_language_at_once():
    texts = {"en": ["a", "a", "a", "b", "b", "c", "a"], "de": ["x", "x", "x", "y", "y", "z", "w"]}
    assert distinct_rows(texts) == {"en": ["a", "b", "c"], "de": ["x", "y", "z"]}  # row 6 repeats en's "a"
    with pytest.raises(LnsubError, match="as many rows"):
        distinct_rows({"en": ["a"], "de": []})


def test_xnli_premises_come_once_each_aligned_by_position(tmp_path, vocab):
    en = _sentences(vocab, PREMISES, seed=0)
    de = [s.upper() for s in en]  # a "translation" that keeps the alignment visible
    write_xnli(tmp_path, "en", en)
    write_xnli(tmp_path, "de", de)
    spec = make_spec("xnli", "en", model="bert-base-multilingual-cased", data_dir=str(tmp_path), steps=1)
    parallel = parallel_sentences(spec, ["de", "en", "fa"], 1000)
    assert parallel.texts == {"de": de, "en": en}
    assert set(parallel.skipped) == {"fa"} and "facebook/xnli has no fa" in parallel.skipped["fa"]
    assert parallel_sentences(spec, ["de", "en"], 5).texts["en"] == en[:5]


def test_wmt14_serves_exactly_en_and_fr(tmp_path):
    pairs = [{"en": f"sentence {i}", "fr": f"phrase {i}"} for i in range(10)] + [{"en": "sentence 3", "fr": "x"}]
    folder = tmp_path / "wmt14" / "fr-en"
    folder.mkdir(parents=True)
    (folder / "test.jsonl").write_text("".join(json.dumps({"translation": p}) + "\n" for p in pairs))
    spec = make_spec("xnli", "en", model="bert-base-multilingual-cased", data_dir=str(tmp_path), steps=1)
    parallel = parallel_sentences(spec, ["en", "fr"], 1000)
    assert parallel.source.startswith("wmt/wmt14")
    assert parallel.texts == {"en": [f"sentence {i}" for i in range(10)], "fr": [f"phrase {i}" for i in range(10)]}
    assert not parallel.skipped
    with pytest.raises(LnsubError, match="no test file for wmt/wmt14"):
        parallel_sentences(make_spec("xnli", "en", model="m", data_dir=str(tmp_path / "none"), steps=1),
                           ["en", "fr"], 5)


def test_identical_sentences_are_all_retrieved_and_fa_is_skipped_with_its_reason(tmp_path, tiny_model, vocab,
                                                                                  caplog):
    premises = _sentences(vocab, PREMISES, seed=1)
    for language in ("en", "de"):
        write_xnli(tmp_path / "data", language, premises)  # identical strings: a perfect encoder's case
    specs = [make_spec("mlm", lang, model=str(tiny_model), data_dir=str(tmp_path / "data"), steps=1)
             for lang in ("en", "de", "fa")]
    storage = tmp_path / "storage"
    save_state(storage, SweepState(
        name="par", grid_name="par", grid_source="(test)", grid={}, cells=[PlannedCell(s, 0.0) for s in specs],
        skipped=[], tracking_uri=f"sqlite:///{storage / 'mlflow.db'}",
        resources=Resources()))
    result = similarity("par", str(storage), out=str(tmp_path / "out"), sentences=100)
    rows = list(csv.DictReader(open(result.folder / "similarity.csv")))
    dense = [r for r in rows if r["encoder"] == "dense"]
    assert {(r["language_a"], r["language_b"]) for r in rows} == {("de", "en")}
    from transformers import AutoConfig

    depth = AutoConfig.from_pretrained(tiny_model).num_hidden_layers
    assert len(dense) == depth + 1 and all(float(r["retrieval"]) == 1.0 for r in dense)  # not 1/3: no repeats
    note = json.loads((result.folder / "parallel.json").read_text())
    assert note["sentences"] == PREMISES and note["languages"] == ["de", "en"]
    assert "facebook/xnli has no fa" in note["skipped"]["fa"]
    assert "language fa skipped" in caplog.text
    # word order is not known for real languages: retrieval P@1 over all pairs only, and the note says so
    p1 = list(csv.DictReader(open(result.folder / "retrieval.csv")))
    assert {r["group"] for r in p1} == {"all"} and all(r["pairs"] == "2" for r in p1)
    assert all(float(r["p1"]) == 1.0 for r in p1 if r["encoder"] == "dense")
    assert note["word_order"] is None and note["retrieval_groups"] == ["all"]
    assert "not known for real languages" in note["retrieval_note"]
    assert result.metrics["retrieval_p1_best/dense/all"] == 1.0
