"""`lnsub analyze` on real cells: its Jaccard rows equal a direct set computation on the stored masks."""

from __future__ import annotations

import csv
import html

import numpy as np
import pytest

from lnsub.analysis.report import SECTIONS
from lnsub.orchestrator import tracking
from lnsub.orchestrator.analyses import analyze, report, similarity
from lnsub.analysis.neutrality import DEFAULT_BINS
from lnsub.analysis.pairs import pretrained_weights
from lnsub.analysis.tickets import theta0_jobs
from lnsub.trainables.transfer_job import run_transfer_job
from lnsub.trainables.masks import load_masks
from lnsub.trainables.store import ONESHOT_PRETRAINED, CellStore
from test_neutrality import reference

pytestmark = pytest.mark.slow


def kept_set(masks: dict) -> set:
    return {(n, i) for n, m in masks.items() for i in m.flatten().nonzero().flatten().tolist()}


def test_overlap_tables_baselines_and_tickets(mini_sweep, tmp_path):
    storage, all_specs = mini_sweep
    specs = [s for s in all_specs if s.seed == 0]
    for job in theta0_jobs(all_specs):  # the winning tickets read each level's mask trained from θ0
        run_transfer_job(job, storage)
    folder = analyze("mini", str(storage), out=str(tmp_path / "analysis")).folder
    assert folder == tmp_path / "analysis" / "overlap"
    rows = list(csv.DictReader(open(folder / "overlap.csv")))
    levels = {int(r["level"]) for r in rows}
    assert levels == {1, 2}
    groupings = {(r["grouping"], r["group"]) for r in rows if r["level"] == "2"}
    assert ("total", "all") in groupings and ("layer", "layer_3") in groupings and ("component", "query") in groupings
    for level in (1, 2):  # the total equals |A ∩ B| / |A ∪ B| over the kept positions, as sets
        a, b = (load_masks(CellStore(storage, s).level_dir(level)) for s in specs)
        kept_a, kept_b = kept_set(a), kept_set(b)
        expected = len(kept_a & kept_b) / len(kept_a | kept_b)
        row = next(r for r in rows if r["level"] == str(level) and r["grouping"] == "total")
        assert float(row["jaccard"]) == pytest.approx(expected, abs=1e-12)
    baselines = list(csv.DictReader(open(folder / "overlap_baselines.csv")))
    assert len(baselines) == 4  # (syn-en, syn-ar) x 2 levels, seed 0; seed 1 has no second language
    for r in baselines:
        d = 1 - float(r["sparsity"])
        assert float(r["random_closed_form"]) == pytest.approx(d / (2 - d))
        assert 0 < float(r["oneshot_pretrained"]) <= 1
    tickets = list(csv.DictReader(open(folder / "winning_tickets.csv")))
    assert {t["language"] for t in tickets} == {"syn-en", "syn-ar"}
    assert all(int(t["ticket_level"]) in (0, 1, 2) for t in tickets)
    assert all(t["score_source"] == "θ0" and t["theta0_missing"] == "" for t in tickets)
    assert all(int(t["round_ticket_level"]) in (0, 1, 2) for t in tickets)
    assert (folder / "overlap_ner_s0_level2.png").stat().st_size > 1000
    for level in (1, 2):  # per level, the per-layer small multiples beside the total
        assert (folder / f"overlap_layers_ner_s0_level{level}.png").stat().st_size > 1000
    for name in ("overlap_curve_ner.png", "overlap_groups_ner.png"):
        assert (folder / name).stat().st_size > 1000
    # same language, different seed: syn-en seed 0 against seed 1, against a set computation
    seeds = list(csv.DictReader(open(folder / "seed_overlap.csv")))
    assert [(r["language"], r["level"], r["seed_a"], r["seed_b"]) for r in seeds] == \
        [("syn-en", "1", "0", "1"), ("syn-en", "2", "0", "1")]
    en = [s for s in all_specs if s.language == "syn-en"]
    for r in seeds:
        a, b = (kept_set(load_masks(CellStore(storage, s).level_dir(int(r["level"])))) for s in en)
        assert float(r["jaccard"]) == pytest.approx(len(a & b) / len(a | b), abs=1e-12)

    check_pairs(storage, all_specs, folder)

    client = tracking._client(f"sqlite:///{storage / 'mlflow.db'}")
    exp = client.get_experiment_by_name(tracking.experiment_name("mini"))
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`lnsub.role` = 'analysis:overlap'")
    assert len(runs) == 1
    assert "overlap/overlap.csv" in {a.path for a in client.list_artifacts(runs[0].info.run_id, "overlap")}
    assert "overlap/seed_overlap.csv" in {a.path for a in client.list_artifacts(runs[0].info.run_id, "overlap")}


def check_pairs(storage, specs, folder) -> None:
    """pair_overlap.csv against set computations, the matched baseline's formula by loop, and the excess against
    the brute-force reference of tests/analysis/test_neutrality.py, on θ0 loaded here as the cells drew it."""
    rows = list(csv.DictReader(open(folder / "pair_overlap.csv")))
    kinds = {(r["level"], r["language_a"], r["seed_a"], r["language_b"], r["seed_b"]): r["kind"] for r in rows}
    assert kinds == {(lv, *pair): kind for lv in ("1", "2") for pair, kind in (
        (("syn-ar", "0", "syn-en", "0"), "cross_language_same_seed"),
        (("syn-ar", "0", "syn-en", "1"), "cross_language_cross_seed"),
        (("syn-en", "0", "syn-en", "1"), "same_language_cross_seed"))}
    cell = {(s.language, s.seed): s for s in specs}
    theta0 = pretrained_weights(specs[0])
    stored = CellStore(storage, specs[0]).baseline(ONESHOT_PRETRAINED, specs[0].sparsities[2])
    names = list(stored)  # θ0 as loaded here reproduces the cell's own one-shot θ0 mask: it is the cell's θ0
    flat = np.concatenate([np.abs(theta0[n]).ravel() for n in names])
    kept = int(sum(int(m.sum()) for m in stored.values()))
    assert np.array_equal(np.concatenate([stored[n].numpy().ravel() for n in names]),
                          flat >= np.sort(flat)[flat.size - kept])
    for r in rows:
        a, b = (load_masks(CellStore(storage, cell[(r[f"language_{x}"], int(r[f"seed_{x}"]))]).level_dir(int(r["level"])))
                for x in "ab")
        ka, kb = kept_set(a), kept_set(b)
        assert float(r["jaccard"]) == pytest.approx(len(ka & kb) / len(ka | kb), abs=1e-12)
        inter = sum(int(a[n].sum()) * int(b[n].sum()) / a[n].numel() for n in a)
        assert float(r["random_matched"]) == pytest.approx(inter / (len(ka) + len(kb) - inter), rel=1e-9)
        if r["level"] == "2" and r["kind"] == "cross_language_cross_seed":  # one pair by brute force (seconds)
            arrays = [{n: m.numpy() for n, m in x.items()} for x in (a, b)]
            observed, expected, _ = reference({n: theta0[n] for n in names}, *arrays, DEFAULT_BINS)
            assert int(r["observed"]) == observed and float(r["expected"]) == pytest.approx(expected, rel=1e-9)
            assert float(r["ratio"]) == pytest.approx(observed / expected, rel=1e-9)
    assert all(r["excess_jaccard_trained"] != "" for r in rows)  # every cell stored its one-shot trained masks
    groups = list(csv.DictReader(open(folder / "excess_overlap.csv")))
    assert {(g["grouping"], g["kind"]) for g in groups} >= {("total", k) for k in set(kinds.values())}
    assert {g["group"] for g in groups if g["grouping"] == "layer"} == {f"layer_{k}" for k in range(6)}


def test_similarity_over_the_same_cells(mini_sweep, tiny_model, tmp_path):
    from transformers import AutoConfig

    depth = AutoConfig.from_pretrained(tiny_model).num_hidden_layers
    storage, _ = mini_sweep
    folder = similarity("mini", str(storage), out=str(tmp_path), sentences=60).folder
    rows = list(csv.DictReader(open(folder / "similarity.csv")))
    encoders = {r["encoder"] for r in rows}
    assert encoders == {"dense", "random", "ner:syn-en@20%", "ner:syn-ar@20%"}
    layers = {int(r["layer"]) for r in rows}
    assert layers == set(range(depth + 1))  # embeddings + every layer of the tiny model
    for r in rows:
        assert 0.0 <= float(r["cka"]) <= 1.0 + 1e-9 and 0.0 <= float(r["retrieval"]) <= 1.0
    top = [r for r in rows if r["layer"] == str(depth)]
    dense = next(float(r["cka"]) for r in top if r["encoder"] == "dense")
    assert 0.0 < dense < 1.0
    assert (folder / "similarity_cka.png").stat().st_size > 1000

    client = tracking._client(f"sqlite:///{storage / 'mlflow.db'}")
    exp = client.get_experiment_by_name(tracking.experiment_name("mini"))
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`lnsub.role` = 'analysis:similarity'")
    assert len(runs) == 1 and "cka_top_layer_dense" in runs[0].data.metrics
    paths = {a.path for a in client.list_artifacts(runs[0].info.run_id, "similarity")}
    assert {"similarity/similarity.csv", "similarity/similarity_cka.png"} <= paths


def test_report_names_the_command_for_each_missing_analysis(mini_sweep, tmp_path):
    storage, _ = mini_sweep
    path = report("mini", str(storage), out=str(tmp_path / "empty")).report  # no analysis has written there
    page = path.read_text(encoding="utf-8")
    for key, title in SECTIONS:
        assert f'<section id="{key}"><h2>{html.escape(title)}</h2>' in page  # "The paper's claims": &#x27;
    for command in ("lnsub analyze --name mini", "lnsub transfer --name mini --level 2",
                    "lnsub similarity --name mini"):
        assert f"<code>{command}</code>" in page
    assert page.count('src="data:image/png;base64,') == 1  # only the ticket scores, drawn from the cells
    assert "3 of 3 cells done" in page
