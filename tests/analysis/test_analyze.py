"""`lnsub analyze` on real cells: its Jaccard rows equal a direct set computation on the stored masks."""

from __future__ import annotations

import csv

import pytest

from lnsub.analysis.report import SECTIONS
from lnsub.orchestrator import tracking
from lnsub.orchestrator.analyses import analyze, report, similarity
from lnsub.trainables.masks import load_masks
from lnsub.trainables.store import CellStore

pytestmark = pytest.mark.slow


def kept_set(masks: dict) -> set:
    return {(n, i) for n, m in masks.items() for i in m.flatten().nonzero().flatten().tolist()}


def test_overlap_tables_baselines_and_tickets(mini_sweep, tmp_path):
    storage, all_specs = mini_sweep
    specs = [s for s in all_specs if s.seed == 0]
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
        assert float(r["random_empirical"]) == pytest.approx(d / (2 - d), abs=0.02)
        assert 0 < float(r["oneshot_pretrained"]) <= 1
    tickets = list(csv.DictReader(open(folder / "winning_tickets.csv")))
    assert {t["language"] for t in tickets} == {"syn-en", "syn-ar"}
    assert all(int(t["ticket_level"]) in (0, 1, 2) for t in tickets)
    assert (folder / "overlap_ner_s0_level2.png").stat().st_size > 1000
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

    client = tracking._client(f"sqlite:///{storage / 'mlflow.db'}")
    exp = client.get_experiment_by_name(tracking.experiment_name("mini"))
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`lnsub.role` = 'analysis:overlap'")
    assert len(runs) == 1
    assert "overlap/overlap.csv" in {a.path for a in client.list_artifacts(runs[0].info.run_id, "overlap")}
    assert "overlap/seed_overlap.csv" in {a.path for a in client.list_artifacts(runs[0].info.run_id, "overlap")}


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
    path = report("mini", str(storage), out=str(tmp_path / "empty")).extra["path"]  # no analysis has written there
    page = path.read_text(encoding="utf-8")
    for key, title in SECTIONS:
        assert f'<section id="{key}"><h2>{title}</h2>' in page
    for command in ("lnsub analyze --name mini", "lnsub transfer --name mini --level 2",
                    "lnsub similarity --name mini"):
        assert f"<code>{command}</code>" in page
    assert page.count('src="data:image/png;base64,') == 1  # only the ticket scores, drawn from the cells
    assert "3 of 3 cells done" in page
