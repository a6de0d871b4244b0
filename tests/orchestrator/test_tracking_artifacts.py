"""Wherever runs are tracked, their masks live somewhere that outlives the process that logged them.

With storage on an object store and a local tracking store (SQLite), each cell run's artifacts go to the store's
`mlartifacts/` (never to the logging process's scratch copy, gone when it is): every mask reads back through MLflow
after the scratch copy is deleted. S3 is moto on 127.0.0.1.
"""

from __future__ import annotations

import shutil

import torch
from s3_server import s3_server  # noqa: F401 (the fixture)

from lnsub.orchestrator import tracking
from lnsub.trainables import metrics as M
from lnsub.trainables import storage as storage_module
from lnsub.trainables.storage import remote as objectstore
from lnsub.trainables.spec import make_spec
from lnsub.trainables.store import CellStore


def a_finished_cell(root, language: str) -> CellStore:
    spec = make_spec("ner", language, steps=4, levels=1, prune_fraction=0.5)
    store = CellStore(root, spec)
    store.write_spec()
    g = torch.Generator().manual_seed(len(language))
    for level in (0, 1):
        mask = {"bert.encoder.layer.0.attention.self.query.weight": torch.rand(8, 8, generator=g) > 0.5 * level}
        store.save_mask(level, mask, sparsity=spec.sparsities[level])
        store.save_metrics(level, {M.LEVEL: level, M.SPARSITY: spec.sparsities[level], M.DENSITY: 1.0,
                                   M.SCORE: 0.9})
        store.mark_level_done(level)
    store.mark_finished()
    return store


def test_masks_logged_from_an_object_store_to_sqlite_read_back_after_the_process_is_gone(
        s3_server, tmp_path, monkeypatch):  # noqa: F811
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv(objectstore.SCRATCH_ENV, str(tmp_path / "scratch"))
    monkeypatch.setattr(storage_module, "_OPEN", {})
    root = storage_module.Storage.open(f"s3://{s3_server.bucket}/runs")
    stores = [a_finished_cell(root, lang) for lang in ("syn-en", "syn-ar")]
    expected = {(s.spec.id, k): (s.level_dir(k) / "mask.npz").read_bytes() for s in stores for k in (0, 1)}
    uri = f"sqlite:///{tmp_path / 'ml.db'}"
    tracking.sync("s", [s.spec for s in stores], root, uri)
    shutil.rmtree(tmp_path / "scratch")  # the logging process's scratch copy is gone, as after the sweep
    client = MlflowClient(uri)
    runs = tracking.find_cell_runs("s", uri)
    assert set(runs) == {s.spec.id for s in stores}
    for (cell, level), data in expected.items():
        run = runs[cell][0]
        assert run.info.artifact_uri.startswith(f"s3://{s3_server.bucket}/runs/mlartifacts/")
        got = client.download_artifacts(run.info.run_id, f"masks/level_{level}/mask.npz", str(tmp_path / "dl"))
        assert open(got, "rb").read() == data, (cell, level)
    assert any(k.startswith("runs/mlartifacts/") for k in s3_server.list("runs/"))
