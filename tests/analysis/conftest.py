"""Real cells in storage with the sweep state that names them (no Ray needed), shared by the analysis tests."""

from __future__ import annotations

import pytest

from trainables.atomic import write_json
from trainables.imp import run_cell
from trainables.spec import make_spec

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
    write_json(storage / "sweeps/mini/sweep.json", {
        "name": "mini", "grid_name": "mini", "cells": [{"id": s.id, "spec": s.to_dict()} for s in specs],
        "tracking_uri": f"sqlite:///{storage / 'mlflow.db'}", "skipped": [],
        "resources": {"workers_per_cell": 1, "cpus_per_worker": 1, "gpus_per_worker": 0}})
    return storage, specs
