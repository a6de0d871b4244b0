"""Real cells in storage with the sweep state that names them (no Ray needed), shared by the analysis tests."""

from __future__ import annotations

import pytest

from lnsub.trainables.imp import run_cell
from lnsub.trainables.spec import make_spec
from lnsub.trainables.sweep_state import PlannedCell, SweepState, save_state

FAST = {"lr": 1e-3, "batch_size": 16, "max_length": 32, "levels": 2, "steps": 8, "train_size": 300,
        "valid_size": 64}


@pytest.fixture(scope="module")
def mini_sweep(tmp_path_factory, tiny_model):
    """NER cells of syn-en (seeds 0 and 1) and syn-ar (seed 0), and a sweep "mini" that lists them."""
    storage = tmp_path_factory.mktemp("mini")
    specs = [make_spec("ner", "syn-en", **FAST), make_spec("ner", "syn-ar", **FAST),
             make_spec("ner", "syn-en", seed=1, **FAST)]
    for spec in specs:
        run_cell(spec, storage)
    save_state(storage, SweepState(
        name="mini", grid_name="mini", grid_source="(test)", grid={}, cells=[PlannedCell(s.id, s, 0.0) for s in specs],
        skipped=[], tracking_uri=f"sqlite:///{storage / 'mlflow.db'}",
        resources={"workers_per_cell": 1, "cpus_per_worker": 1, "gpus_per_worker": 0}))
    return storage, specs
