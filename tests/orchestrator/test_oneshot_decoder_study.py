"""`lnsub study` of a one-shot grid on the tiny decoder, beside its decoupled control, end to end: cells through the
job runner, the one-shot analysis (overlap beyond θ0, transfer by evaluation, LAPE) and the report."""

from __future__ import annotations

import pytest
import yaml

from lnsub.analysis.tables import read_csv
from lnsub.orchestrator.study import study_markers
from lnsub.analysis.sweeps import load_state
from lnsub.trainables.store import CellStore

from tests.conftest import lnsub

pytestmark = pytest.mark.slow
LANGS = ["syn-en", "syn-ur", "syn-ar"]


def _grid(name: str, model: str, control: str | None) -> dict:
    return {"name": name, "model": model, "languages": LANGS,
            "tasks": {"clm": {"max_length": 64, "batch_size": 16, "calibration_samples": 8, "train_size": 60,
                              "valid_size": 8}},
            "methods": ["magnitude", "wanda"], "sparsity_patterns": ["unstructured", "2:4"], "levels": 1,
            "prune_fraction": 0.5, "resources": {"workers_per_cell": 1, "cpus_per_worker": 1, "gpus_per_worker": 0},
            "study": {"steps": ["oneshot"], **({"control": f"{control}.yaml"} if control else {})}}


def test_a_oneshot_study_with_its_control_runs_end_to_end(tmp_path):
    (tmp_path / "dec.yaml").write_text(yaml.safe_dump(_grid("dec", "testbed-decoder", "ctl")))
    (tmp_path / "ctl.yaml").write_text(yaml.safe_dump(_grid("ctl", "testbed-decoder-decoupled", None)))
    out = lnsub("study", "--grid", "dec.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:]
    storage = tmp_path / "lnsub-runs"
    assert set(study_markers(str(storage), "dec")) == {"sweep", "oneshot", "report-vs-ctl"}
    assert set(study_markers(str(storage), "ctl")) == {"sweep", "oneshot"}
    folder = storage / "sweeps/dec/analysis/oneshot"
    scores = read_csv(folder / "scores.csv")
    assert len(scores) == 3 * 4 * 2  # languages x discoveries x levels
    overlap = read_csv(folder / "overlap.csv")
    assert len(overlap) == 3 * 4 and all(0 < float(r["jaccard"]) <= 1 for r in overlap)
    transfer = read_csv(folder / "transfer.csv")
    assert len(transfer) == 4 * (3 + 2) * 3  # discoveries x (sources + random + magnitude) x targets
    own = {(r["method"], r["sparsity_pattern"], r["language"]): float(r["score"]) for r in scores if r["level"] == "1"}
    for r in transfer:  # the diagonal is the cell's own pruned model, scored again by the analysis
        if r["source"] == r["target"]:
            assert float(r["score"]) == pytest.approx(own[(r["method"], r["sparsity_pattern"], r["target"])], rel=1e-9)
    magnitude = {(r["sparsity_pattern"], r["target"]): float(r["score"]) for r in transfer if r["source"] == "magnitude"}
    for r in transfer:  # one-shot magnitude pruning needs no data: every language's mask is θ0's magnitude mask
        if r["method"] == "magnitude" and r["source"] in LANGS:
            assert float(r["score"]) == pytest.approx(magnitude[(r["sparsity_pattern"], r["target"])], rel=1e-9)
    for r in overlap:
        if r["method"] == "magnitude":
            assert float(r["jaccard"]) == 1.0
    sizes = read_csv(folder / "lape_neurons.csv")
    assert [r["language"] for r in sizes] == sorted(LANGS) and all(int(r["specific"]) >= 0 for r in sizes)
    assert len(read_csv(folder / "lape_masks.csv")) == 4 * 3 * 3
    page = (storage / "sweeps/dec/analysis/report/report.html").read_text()
    assert "One-shot discovery" in page and "control: ctl" in page and "LAPE" in page
    assert (folder / "summary.md").read_text().count("| syn-") >= 3
    specs = load_state(storage, "dec").specs
    assert len(specs) == 12 and all(CellStore(storage, s).finished() for s in specs)
