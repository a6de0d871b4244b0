"""Length-grouped batches and what padding costs, against brute force; the grouped order is exact on resume."""

from __future__ import annotations

import random
import statistics

import pytest
import torch

from lnsub.trainables.padding import batch_lengths, padding_ratio, tokens_computed
from lnsub.trainables.spec import make_spec
from lnsub.orchestrator.rehearsal import lengths as L
from lnsub.orchestrator.rehearsal.hubcopies import wikiann_rows, xnli_rows
from lnsub.trainables.train import RoundData, epoch_order

SPEC = make_spec("xnli", "en", model="bert-base-multilingual-cased", batch_size=8, max_length=128, epochs=1.0)


def planted(n: int = 400, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(3, 120) for _ in range(n)]


def test_tokens_computed_by_brute_force():
    lengths = planted(50)
    order = list(range(50))
    batches = batch_lengths(lengths, order, 8)
    assert len(batches) == 6 and [len(b) for b in batches] == [8] * 6  # the last 2 examples dropped, as in training
    assert batches[1] == lengths[8:16]
    ordered = epoch_order(RoundData(range(50), None, None, None, train_lengths=lengths), SPEC, 0, 0, 8)
    real = sum(lengths[i] for i in ordered[:48])  # the 48 examples of the epoch's six whole batches
    assert tokens_computed(lengths, SPEC, "max_length", 8) == (6 * 8 * 128, real)
    widest = sum(max(lengths[i] for i in ordered[s:s + 8]) * 8 for s in range(0, 48, 8))
    assert tokens_computed(lengths, SPEC, "batch", 8) == (widest, real)


def test_grouped_order_is_a_permutation_fixed_by_seed_level_and_epoch():
    lengths = planted()
    grouped = make_spec("xnli", "en", model="bert-base-multilingual-cased", batch_size=8, epochs=1.0,
                        group_by_length=True)
    data = RoundData(range(len(lengths)), None, None, None, train_lengths=lengths)
    order = epoch_order(data, grouped, 2, 1, 8)
    assert sorted(order) == list(range(len(lengths)))
    assert order == epoch_order(data, grouped, 2, 1, 8)  # resume finds the same order
    assert order != epoch_order(data, grouped, 2, 2, 8) and order != epoch_order(data, grouped, 3, 1, 8)
    from transformers.trainer_pt_utils import get_length_grouped_indices

    # the batches are Hugging Face's grouping of the same draw (mega-batches of 12 batches sorted by length) ...
    hf = get_length_grouped_indices(lengths, 8, generator=torch.Generator().manual_seed(_draw_seed(grouped, 2, 1)))
    as_batches = lambda o: [tuple(o[i:i + 8]) for i in range(0, len(o), 8)]  # noqa: E731
    assert as_batches(order)[0] == as_batches(hf)[0]  # the batch with the longest example stays first
    assert sorted(as_batches(order)) == sorted(as_batches(hf))
    assert as_batches(order) != as_batches(hf)  # ... in shuffled order: no long-to-short run within a mega-batch
    plain = epoch_order(data, SPEC, 2, 1, 8)
    spread = lambda o: statistics.mean(max(b) - min(b) for b in batch_lengths(lengths, o, 8))  # noqa: E731
    assert spread(order) < spread(plain) / 4  # a sorted mega-batch of 96 spans ~10 a batch; a random batch ~80


def _draw_seed(spec, level: int, epoch: int) -> int:
    from lnsub.trainables.train import hash_seed

    return hash_seed(spec.seed, level, epoch)


def test_grouping_pays_on_planted_lengths():
    lengths = planted(4003)  # an incomplete last batch: it stays last, and the whole batches stay grouped
    ratios = {p: padding_ratio(lengths, SPEC, p) for p in ("max_length", "batch", "grouped")}
    assert ratios["max_length"] == pytest.approx(128 / statistics.mean(lengths), rel=0.02)
    assert 1.0 <= ratios["grouped"] < 1.05 < ratios["batch"] < ratios["max_length"]


def test_grouped_loader_resumes_exactly(tiny_model_free_loader):
    loader, accelerator = tiny_model_free_loader
    data = RoundData(loader.dataset.select([5, 2, 9]), None, None, None)
    assert data.lengths() == [len(data.train[i]["input_ids"]) for i in range(3)]  # read from the Arrow offsets
    batches = [b["input_ids"].tolist() for b in loader]
    skipped = [b["input_ids"].tolist() for b in accelerator.skip_first_batches(loader, 3)]
    assert skipped == batches[3:]


@pytest.fixture
def tiny_model_free_loader():
    from accelerate import Accelerator
    from datasets import Dataset

    from lnsub.trainables.train import train_loader

    lengths = planted(64, seed=3)
    ds = Dataset.from_dict({"input_ids": [[i] * n for i, n in enumerate(lengths)]})
    pad = lambda rows: {"input_ids": torch.nn.utils.rnn.pad_sequence(  # noqa: E731
        [torch.tensor(r["input_ids"]) for r in rows], batch_first=True)}
    spec = make_spec("ner", "en", model="bert-base-multilingual-cased", batch_size=4, epochs=1.0,
                     group_by_length=True)
    accelerator = Accelerator(cpu=True)
    return train_loader(RoundData(ds, ds, pad, pad), spec, 1, 0, accelerator), accelerator


@pytest.mark.parametrize("language", ["en", "fr", "ar", "fa"])
def test_wikiann_copies_follow_the_length_model(language):
    rows = wikiann_rows(language, "train", 3000)
    words = [len(r["tokens"]) for r in rows]
    assert statistics.mean(words) == pytest.approx(L.mean_words("ner", language), rel=0.05)
    assert all(len(r["tokens"]) == len(r["ner_tags"]) == len(r["langs"]) for r in rows)
    assert all(r["spans"] and r["ner_tags"][0] in (0, 1, 3, 5) for r in rows)  # an entity each; none starts with I-
    _quartiles_are_lognormal(words, L.mean_words("ner", language), L.LOG_SPREAD["ner"])


@pytest.mark.parametrize("language", ["en", "fr", "ar", "hi", "sw"])
def test_xnli_copies_follow_the_length_model(language):
    rows = xnli_rows(language, "train", 3000)
    for kind in ("premise", "hypothesis"):
        words = [len(r[kind].split()) for r in rows]
        assert statistics.mean(words) == pytest.approx(L.mean_words(kind, language), rel=0.05)
        _quartiles_are_lognormal(words, L.mean_words(kind, language), L.LOG_SPREAD[kind])


def _quartiles_are_lognormal(words: list[int], mean: float, sigma: float) -> None:
    """The sample's quartiles against the log-normal's in closed form, exp(mu + sigma z), within rounding."""
    import math

    mu = math.log(mean) - sigma ** 2 / 2
    got = statistics.quantiles(words, n=4)
    for q, z in zip(got, (-0.6745, 0.0, 0.6745)):
        assert abs(q - max(1.0, math.exp(mu + sigma * z))) <= 1.0 + 0.06 * q, (got, mean, sigma)


def test_the_card_byte_layout_matches_pyarrow():
    """The bytes a WikiANN word and an XNLI pair take in an Arrow table, as lengths.py reads the cards' num_bytes."""
    import pyarrow as pa

    def wikiann(words: int) -> int:
        return pa.table({"tokens": [["abcd"] * words] * 10, "ner_tags": [[0] * words] * 10,
                         "langs": [["en"] * words] * 10, "spans": [["PER: abcd"]] * 10}).nbytes
    per_word = (wikiann(9) - wikiann(4)) / (5 * 10)
    assert per_word == (5 - 1) + 4 + 8 + (2 + 4)  # lengths.wikiann_words' per_word for 5-byte words
    xnli = pa.table({"premise": ["x" * 30] * 10, "hypothesis": ["y" * 12] * 10, "label": [0] * 10}).nbytes
    assert xnli / 10 - 8 - 2 * 4 == 42  # lengths.xnli_pair_words subtracts exactly the label and two offsets
