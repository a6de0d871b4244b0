"""A cell on 2 CPU workers under Ray Train's TorchTrainer (gloo): identical masks on every rank."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

import pytest

from lnsub.analysis.sweeps import Resources
from lnsub.orchestrator import faults
from lnsub.trainables.masks import load_masks, pack
from lnsub.trainables.spec import make_spec
from lnsub.trainables.store import CellStore

FAST = {"lr": 1e-3, "batch_size": 16, "max_length": 32, "levels": 2, "steps": 12, "train_size": 400,
        "valid_size": 96}


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    """A private Ray whose workers read the fault plan in `faults.json` of the yielded folder."""
    from lnsub.orchestrator import ray_backend

    folder = tmp_path_factory.mktemp("faults")
    os.environ[faults.ENV] = str(folder / "faults.json")
    temp_dir = tempfile.mkdtemp(prefix="lnr-", dir="/tmp")  # AF_UNIX socket paths must stay < 108 bytes
    started = ray_backend.start(num_cpus=2, temp_dir=temp_dir)
    yield folder
    os.environ.pop(faults.ENV, None)
    if started:
        ray_backend.stop()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_hold_identical_masks_close_to_one_worker(tmp_path, tiny_model, ray_local):
    from lnsub.orchestrator.ray_backend import run_cell_on_workers

    spec = make_spec("ner", "syn-en", **FAST)
    one = run_cell_on_workers(spec, tmp_path / "one", Resources(workers_per_cell=1), checkpoint_every=4)
    marker = tmp_path / "crashed"
    faults.write_plan(ray_local / "faults.json", [{"unit": spec.id, "level": 1, "step": 6, "rank": 1,
                                                   "action": "crash", "marker": str(marker)}])
    two = run_cell_on_workers(spec, tmp_path / "two", Resources(workers_per_cell=2), checkpoint_every=4)
    assert json.loads(marker.read_text())["rank"] == 1  # rank 1 did die mid-round ...
    store_two, store_one = CellStore(tmp_path / "two", spec), CellStore(tmp_path / "one", spec)
    resumed = store_two.metrics(1)["resumed_from_step"]
    assert resumed == 4  # ... and the restarted group continued from the step-4 checkpoint
    assert len(two.levels) == len(one.levels) == spec.levels + 1
    for k in range(spec.levels):
        record = store_two.metrics(k)
        assert record["workers"] == 2
        digests = record["next_mask_rank_digests"]
        saved = load_masks(store_two.level_dir(k + 1))
        assert len(digests) == 2 and digests[0] == digests[1] == hashlib.sha256(pack(saved)).hexdigest()
    for k in range(1, spec.levels + 1):
        a, b = load_masks(store_one.level_dir(k)), load_masks(store_two.level_dir(k))
        agree = sum(int((a[n] == b[n]).sum()) for n in a) / sum(t.numel() for t in a.values())
        assert agree >= 0.99, (k, agree)
