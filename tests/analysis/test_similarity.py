"""CKA and ratio-margin retrieval against independent references; layer representations of a tiny BERT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lnsub.analysis.similarity import (
    cka_by_layer,
    layer_representations,
    linear_cka,
    mean_pool,
    random_encoder_like,
    ratio_margin_scores,
    retrieval_accuracy,
)

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "big"]


def _rotation(d: int, seed: int) -> np.ndarray:
    """A random orthogonal matrix (QR of a Gaussian, signs fixed so it is Haar-distributed)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def _reference_cka(x: np.ndarray, y: np.ndarray) -> float:
    """HSIC form with the centring matrix H = I - 11ᵀ/n, written out with einsum."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k = np.einsum("ia,ja->ij", x, x)
    l = np.einsum("ia,ja->ij", y, y)
    hsic = lambda a, b: np.einsum("ij,jk,kl,li->", a, h, b, h)  # tr(A H B H)
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def _reference_margin(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """The ratio-margin formula pair by pair, with neighbours found by sorting."""
    cos = lambda a, b: float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    out = np.zeros((len(x), len(y)))
    for i, xi in enumerate(x):
        for j, yj in enumerate(y):
            nn_x = sorted((cos(xi, z) for z in y), reverse=True)[:k]
            nn_y = sorted((cos(yj, z) for z in x), reverse=True)[:k]
            out[i, j] = cos(xi, yj) / (sum(nn_x) / (2 * k) + sum(nn_y) / (2 * k))
    return out


# ---- linear CKA ----

def test_cka_is_one_for_identical_and_for_rotated_scaled_copies():
    x = np.random.default_rng(0).normal(size=(200, 32))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 3.7 * x @ _rotation(32, 1)) == pytest.approx(1.0, abs=1e-12)


def test_cka_matches_hsic_reference_on_random_data():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(40, 7)) + 5.0, rng.normal(size=(40, 11)) @ rng.normal(size=(11, 11))
    y[:, :7] += x  # related but not identical, different widths
    assert linear_cka(x, y) == pytest.approx(_reference_cka(x, y), rel=1e-10)


def test_cka_ignores_a_constant_offset():
    # Mean-pooled BERT vectors share a large common component; CKA must not see it.
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(100, 16)), rng.normal(size=(100, 16))
    y += 0.5 * x
    offset = rng.normal(size=16) * 100
    assert linear_cka(x + offset, y - offset) == pytest.approx(linear_cka(x, y), rel=1e-9)


def test_cka_of_independent_representations_is_small():
    rng = np.random.default_rng(4)
    assert linear_cka(rng.normal(size=(500, 20)), rng.normal(size=(500, 20))) < 0.3


@pytest.mark.parametrize("n, d1, d2", [(300, 10, 20), (12, 64, 48)])
def test_gram_and_feature_forms_agree(n, d1, d2):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(n, d1))
    y = np.tanh(x @ rng.normal(size=(d1, d2))) + 0.3 * rng.normal(size=(n, d2))
    features, gram = linear_cka(x, y, method="features"), linear_cka(x, y, method="gram")
    assert features == pytest.approx(gram, rel=1e-10)
    assert linear_cka(x, y) == pytest.approx(features, rel=1e-10)


def test_cka_accepts_float32_tensors_and_rejects_mismatched_rows():
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    assert linear_cka(x, x.double().numpy() * 2) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="same number of rows"):
        linear_cka(np.ones((5, 3)), np.ones((6, 3)))


# ---- ratio-margin retrieval ----

def test_margin_scores_match_the_formula_pair_by_pair():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(7, 5)) + 0.5, rng.normal(size=(9, 5)) + 0.5
    np.testing.assert_allclose(ratio_margin_scores(x, y, k=3), _reference_margin(x, y, 3), rtol=1e-10)


def test_noisy_translations_are_all_retrieved_in_any_shared_frame():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(200, 32))
    y = x + 0.05 * rng.normal(size=(200, 32))
    assert retrieval_accuracy(x, y, k=5) == 1.0
    # Rotating both sides together changes no cosine, so neither scores nor accuracy move.
    r = _rotation(32, 8)
    np.testing.assert_allclose(ratio_margin_scores(x @ r, y @ r), ratio_margin_scores(x, y), atol=1e-12)
    assert retrieval_accuracy(x @ r, y @ r, k=5) == 1.0


def test_retrieval_unlike_cka_needs_a_shared_frame():
    # CKA sees an independently rotated copy as identical; cosine retrieval cannot
    # match sentences across unaligned coordinates, so it falls to chance.
    rng = np.random.default_rng(8)
    x = rng.normal(size=(200, 32))
    y = x @ _rotation(32, 8) + 0.05 * rng.normal(size=(200, 32))
    assert linear_cka(x, y) > 0.99
    assert retrieval_accuracy(x, y, k=5) < 0.05


def test_unrelated_representations_retrieve_near_chance():
    rng = np.random.default_rng(9)
    acc = retrieval_accuracy(rng.normal(size=(300, 32)), rng.normal(size=(300, 32)), k=5)
    assert acc < 0.03  # chance is 1/300


def test_margin_demotes_a_hub_that_plain_cosine_prefers():
    # A y near the centre of all x's is every x's nearest neighbour by cosine; the margin
    # divides by its high neighbourhood similarity and finds the true translations.
    rng = np.random.default_rng(10)
    x = rng.normal(size=(60, 16)) + 2.0
    y = x + rng.normal(size=(60, 16))
    y[0] = x.mean(axis=0)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
    by_cosine = (unit(x) @ unit(y).T).argmax(axis=1)
    by_margin = ratio_margin_scores(x, y, k=5).argmax(axis=1)
    assert np.mean(by_cosine == 0) > 0.25
    assert np.mean(by_margin == 0) < np.mean(by_cosine == 0) / 2
    truth = np.arange(60)
    assert np.mean(by_margin == truth) > np.mean(by_cosine == truth) + 0.1


# ---- layer representations of a tiny BERT ----

@pytest.fixture(scope="module")
def tiny_bert():
    from transformers import BertConfig, BertModel, BertTokenizerFast

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32)
    torch.manual_seed(0)
    model = BertModel(config)
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(WORDS)})
    return model, tokenizer


SENTENCES = ["the cat sat", "a big dog ran on the mat", "the dog sat on a cat", "a mat"]


def test_mean_pool_averages_only_unpadded_tokens():
    h = torch.arange(24, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    pooled = mean_pool(h, mask)
    torch.testing.assert_close(pooled[0], h[0, :2].mean(dim=0))
    torch.testing.assert_close(pooled[1], h[1].mean(dim=0))


def test_one_pooled_vector_per_layer_and_sentence(tiny_bert):
    reps = layer_representations(*tiny_bert, SENTENCES, batch_size=3)
    assert reps.shape == (3, len(SENTENCES), 16)  # embeddings + 2 layers
    assert np.isfinite(reps).all()
    # Batches are joined in sentence order: row i is sentence i whatever the batch size.
    np.testing.assert_allclose(reps, layer_representations(*tiny_bert, SENTENCES, batch_size=32), atol=1e-5)


def test_padding_does_not_change_a_sentence_vector(tiny_bert):
    alone = layer_representations(*tiny_bert, ["the cat sat"])
    padded = layer_representations(*tiny_bert, ["the cat sat", "a big dog ran on the mat the cat sat"])
    np.testing.assert_allclose(alone[:, 0], padded[:, 0], atol=1e-5)


def test_masked_lm_head_model_works_and_dropout_is_off(tiny_bert):
    from transformers import BertForMaskedLM

    model, tokenizer = tiny_bert
    config = model.config.__class__(**{**model.config.to_dict(), "hidden_dropout_prob": 0.5})
    mlm = BertForMaskedLM(config).train()
    first = layer_representations(mlm, tokenizer, SENTENCES)
    assert first.shape == (3, len(SENTENCES), 16)
    np.testing.assert_array_equal(first, layer_representations(mlm, tokenizer, SENTENCES))
    assert mlm.training  # the caller's mode is restored


def test_cka_by_layer_is_one_against_itself(tiny_bert):
    reps = layer_representations(*tiny_bert, SENTENCES)
    assert cka_by_layer(reps, reps) == pytest.approx([1.0, 1.0, 1.0], abs=1e-6)


def test_random_encoder_has_same_architecture_new_weights_and_is_seeded(tiny_bert):
    model, tokenizer = tiny_bert
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a, b, c = random_encoder_like(model, seed=1), random_encoder_like(model, seed=1), random_encoder_like(model, seed=2)
    assert type(a) is type(model)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in before.items()}
    w = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(a.state_dict()[w], before[w])
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in before)
    assert not torch.equal(a.state_dict()[w], c.state_dict()[w])
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)  # the original is untouched
    assert layer_representations(a, tokenizer, SENTENCES).shape == (3, len(SENTENCES), 16)


def test_random_encoder_leaves_the_global_random_stream_alone(tiny_bert):
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    random_encoder_like(tiny_bert[0], seed=5)
    torch.testing.assert_close(torch.rand(3), expected)


# ---- sentence retrieval P@1 by word-order group, as `lnsub similarity` writes it ----

# The twins' basic word orders, written out here rather than read from the code under test.
ORDERS = {"syn-en": "SVO", "syn-fr": "SVO", "syn-hi": "SOV", "syn-ur": "SOV", "syn-ar": "VSO"}


def _brute_p1(x: np.ndarray, y: np.ndarray) -> float:
    """Sentence by sentence: the row of y with the largest cosine to x[i] (numpy argmax) is y[i]?"""
    hits = 0
    for i in range(len(x)):
        cos = [np.dot(x[i], y[j]) / (np.linalg.norm(x[i]) * np.linalg.norm(y[j])) for j in range(len(y))]
        hits += int(np.argmax(cos)) == i
    return hits / len(x)


def _brute_groups(reps: dict, orders: dict | None) -> dict[tuple[int, str], tuple[float, int]]:
    """(layer, group) -> (mean P@1 over the group's ordered pairs, number of pairs), by loops."""
    out = {}
    layers = len(next(iter(reps.values())))
    for layer in range(layers):
        members = {"all": []} if orders is None else {"same-order": [], "different-order": [], "all": []}
        for a in reps:
            for b in reps:
                if a == b:
                    continue
                p = _brute_p1(reps[a][layer], reps[b][layer])
                members["all"].append(p)
                if orders is not None:
                    members["same-order" if orders[a] == orders[b] else "different-order"].append(p)
        out.update({(layer, g): (sum(v) / len(v), len(v)) for g, v in members.items() if v})
    return out


def _check_retrieval_csv(rows: list[dict], label: str, reps: dict, orders: dict | None) -> None:
    mine = {(int(r["layer"]), r["group"]): r for r in rows if r["encoder"] == label}
    expected = _brute_groups(reps, orders)
    assert set(mine) == set(expected)
    n = next(iter(reps.values())).shape[1]
    for key, (p1, pairs) in expected.items():
        assert float(mine[key]["p1"]) == pytest.approx(p1, abs=1e-12), key
        assert int(mine[key]["pairs"]) == pairs and int(mine[key]["n"]) == n
        assert float(mine[key]["chance"]) == pytest.approx(1 / n)


def test_retrieval_rows_match_a_loop_over_pairs_and_sentences_grouped_by_word_order():
    from lnsub.analysis.representations import best_layers, best_metrics, retrieval_rows, word_orders

    assert word_orders(list(ORDERS)) == ORDERS
    assert word_orders(["en", "de"]) is None and word_orders(["syn-en", "en"]) is None  # real: order unknown
    rng = np.random.default_rng(12)
    layers, n, dim = 3, 16, 8
    content = rng.normal(size=(layers, n, dim))
    # noise per language and layer, so pairs differ in P@1 and a pair in the wrong group would move a mean
    reps = {lang: content + rng.normal(size=(layers, n, dim)) * rng.uniform(0.3, 1.5, size=(layers, 1, 1))
            for lang in ORDERS}
    rows = retrieval_rows("dense", reps, word_orders(list(ORDERS)))
    _check_retrieval_csv(rows, "dense", reps, ORDERS)
    counts = {r["group"]: r["pairs"] for r in rows if r["layer"] == 0}
    # SVO en-fr and SOV hi-ur, both ways; VSO ar shares no order
    assert counts == {"same-order": 4, "different-order": 16, "all": 20}
    real = retrieval_rows("random", reps, None)
    assert {r["group"] for r in real} == {"all"}
    _check_retrieval_csv(real, "random", reps, None)
    assert retrieval_rows("dense", {"syn-en": reps["syn-en"]}, ORDERS) == []  # one language: no pair

    best = best_layers(rows + real)
    assert len(best) == 4  # dense x 3 groups, random x all
    for b in best:
        group = [r for r in rows + real if r["encoder"] == b["encoder"] and r["group"] == b["group"]]
        assert b["p1"] == max(r["p1"] for r in group)
        assert b["best_layer"] == min(r["layer"] for r in group if r["p1"] == b["p1"])
    metrics = best_metrics(best)
    assert metrics["retrieval_p1_best/dense/same-order"] == next(
        b["p1"] for b in best if b["encoder"] == "dense" and b["group"] == "same-order")
    assert "retrieval_best_layer/random/all" in metrics
    assert best_metrics([{**best[0], "encoder": "ner:syn-en@20%"}]).keys() == {
        "retrieval_p1_best/ner_syn-en_20pct/same-order", "retrieval_best_layer/ner_syn-en_20pct/same-order"}


def test_similarity_writes_retrieval_csv_of_the_twins_by_word_order(tmp_path, tiny_model):
    """End to end on the testbed's parallel file (no finished cell: the dense and random encoders), with
    retrieval.csv checked against the loop on the same encoders' representations."""
    import csv
    import json

    from transformers import AutoTokenizer

    from lnsub.analysis.representations import load_encoder, parallel_sentences, similarity
    from lnsub.trainables.loading import model_path
    from lnsub.trainables.spec import make_spec
    from lnsub.analysis.sweeps import PlannedCell, Resources, SweepState, save_state

    languages, n = ["syn-en", "syn-fr", "syn-hi"], 12
    specs = [make_spec("mlm", lang, steps=1) for lang in languages]
    storage = tmp_path / "storage"
    save_state(storage, SweepState(
        name="ret", grid_name="ret", grid_source="(test)", grid={}, cells=[PlannedCell(s, 0.0) for s in specs],
        skipped=[], tracking_uri=f"sqlite:///{storage / 'mlflow.db'}",
        resources=Resources()))
    result = similarity("ret", str(storage), out=str(tmp_path / "out"), sentences=n)
    rows = list(csv.DictReader(open(result.folder / "retrieval.csv")))
    assert {r["encoder"] for r in rows} == {"dense", "random"}

    texts = parallel_sentences(specs[0], languages, n).texts
    path = model_path(specs[0])  # the model the job compares (the tiny_model fixture builds it)
    tokenizer, base = AutoTokenizer.from_pretrained(path), load_encoder(specs[0], path).eval()
    for label, model in (("dense", base), ("random", random_encoder_like(base, seed=0))):
        reps = {lang: layer_representations(model, tokenizer, texts[lang]) for lang in languages}
        _check_retrieval_csv(rows, label, reps, ORDERS)
    assert {r["group"]: int(r["pairs"]) for r in rows if r["layer"] == "0" and r["encoder"] == "dense"} == \
        {"same-order": 2, "different-order": 4, "all": 6}  # en <-> fr share SVO; hi is SOV

    best = list(csv.DictReader(open(result.folder / "retrieval_best.csv")))
    assert {(b["encoder"], b["group"]) for b in best} == {(e, g) for e in ("dense", "random")
                                                           for g in ("same-order", "different-order", "all")}
    for b in best:
        key = f"retrieval_p1_best/{b['encoder']}/{b['group']}"
        assert result.metrics[key] == pytest.approx(float(b["p1"])) == pytest.approx(max(
            float(r["p1"]) for r in rows if (r["encoder"], r["group"]) == (b["encoder"], b["group"])))
    note = json.loads((result.folder / "parallel.json").read_text())
    assert note["word_order"] == {lang: ORDERS[lang] for lang in languages}
    assert note["retrieval_groups"] == ["same-order", "different-order", "all"]


# ---- debiased CKA ----

def _song_unbiased_cka(x: np.ndarray, y: np.ndarray) -> float:
    """HSIC₁ of Song et al. (2012) written out on uncentred Gram matrices with zeroed diagonals, by einsum."""
    n = x.shape[0]

    def hsic(k, l):
        k, l = k.copy(), l.copy()
        np.fill_diagonal(k, 0.0)
        np.fill_diagonal(l, 0.0)
        ones = np.ones(n)
        return (np.einsum("ij,ji->", k, l) + (ones @ k @ ones) * (ones @ l @ ones) / ((n - 1) * (n - 2))
                - 2 / (n - 2) * (ones @ k @ l @ ones)) / (n * (n - 3))

    k, l = x @ x.T, y @ y.T
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def test_debiased_cka_equals_song_et_al_formula_on_a_small_case():
    rng = np.random.default_rng(10)
    x, y = rng.normal(size=(30, 5)) + 3.0, rng.normal(size=(30, 7))
    y[:, :5] += x
    assert linear_cka(x, y, debiased=True) == pytest.approx(_song_unbiased_cka(x, y), rel=1e-10)
    assert linear_cka(x, 2.5 * x @ _rotation(5, 2), debiased=True) == pytest.approx(1.0, abs=1e-12)


def test_debiased_cka_of_independent_features_is_about_zero_where_the_plug_in_is_not():
    # n = 200 sentences, 64 dimensions (the testbed's width): the plug-in CKA of independent Gaussians is ~0.24
    rng = np.random.default_rng(11)
    pairs = [(rng.normal(size=(200, 64)), rng.normal(size=(200, 64))) for _ in range(20)]
    biased = np.mean([linear_cka(x, y) for x, y in pairs])
    debiased = [linear_cka(x, y, debiased=True) for x, y in pairs]
    assert 0.2 < biased < 0.3
    assert abs(np.mean(debiased)) < 0.005 and max(abs(d) for d in debiased) < 0.02
    with pytest.raises(ValueError, match="at least 4"):
        linear_cka(np.ones((3, 2)), np.ones((3, 2)), debiased=True)
