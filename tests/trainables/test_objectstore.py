"""Object storage as lnsub's storage, against a real S3-compatible server (moto) on 127.0.0.1.

Each "process" here is a scratch copy of its own (Storage.open in a fresh
registry and scratch folder), as two nodes would have: nothing is shared but the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from pathlib import Path

import pytest
import torch
from s3_server import s3_server  # noqa: F401 (the fixture)

from lnsub.trainables import storage as storage_module
from lnsub.trainables.storage import Storage
from lnsub.trainables.storage import commit
from lnsub.trainables.storage import remote as objectstore
from lnsub.trainables.errors import LnsubError
from lnsub.trainables.spec import CellSpec
from lnsub.trainables.store import CellStore
from lnsub.analysis.sweeps import open_storage as check_storage


@pytest.fixture
def node(tmp_path, monkeypatch):
    """Switch to a new 'node': its own scratch folder and no scratch copies opened yet."""
    count = [0]

    def switch() -> None:
        count[0] += 1
        monkeypatch.setenv(objectstore.SCRATCH_ENV, str(tmp_path / f"node{count[0]}"))
        monkeypatch.setattr(storage_module, "_OPEN", {})

    switch()
    return switch


def spec() -> CellSpec:
    return CellSpec(model="testbed", task="ner", language="syn-en", seed=0, levels=2)


def uri(server) -> str:
    return f"s3://{server.bucket}/runs"


def test_writes_go_through_whole_and_done_names_the_sha256_of_what_it_commits(s3_server, node, tmp_path):  # noqa: F811
    root = check_storage(uri(s3_server))
    assert tmp_path / "node1" in root.root.parents  # this process's scratch copy, not a shared path
    store = CellStore(root, spec())
    payload = bytes(range(256)) * 40
    store.storage.write_bytes(store.level_dir(0) / "mask.npz", payload)
    store.storage.write_json(store.level_dir(0) / "metrics.json", {"score": 0.5})
    store.storage.write_bytes(store.checkpoint_dir(0) / "step_00000004" / "state.pt", b"work in progress")
    store.mark_level_done(0)

    keys = s3_server.list("runs/")
    prefix = f"runs/cells/{spec().id}/level_0/"
    assert {prefix + n for n in ("mask.npz", "metrics.json", "DONE", "checkpoint/step_00000004/state.pt")} <= set(keys)
    done = json.loads(s3_server.client().get_object(Bucket=s3_server.bucket, Key=prefix + "DONE")["Body"].read())
    # the checksums, computed here independently, of exactly the finished files (no checkpoint)
    assert done["files"] == {"mask.npz": hashlib.sha256(payload).hexdigest(),
                             "metrics.json": hashlib.sha256(
                                 (json.dumps({"score": 0.5}, indent=2, sort_keys=True) + "\n").encode()).hexdigest()}
    assert not [k for k in keys if k.endswith((".tmp", ".part"))]


def test_another_node_trusts_a_level_only_if_its_files_match_its_done(s3_server, node):  # noqa: F811
    store = CellStore(check_storage(uri(s3_server)), spec())
    store.storage.write_bytes(store.level_dir(0) / "mask.npz", b"a" * 100)
    store.mark_level_done(0)
    store.storage.write_bytes(store.level_dir(1) / "mask.npz", b"b" * 100)
    store.mark_level_done(1)

    node()
    other = CellStore(check_storage(uri(s3_server)), spec())
    assert other.root != store.root
    other.storage.fresh(other.root)
    assert other.level_done(0) and other.level_done(1)
    assert (other.level_dir(1) / "mask.npz").read_bytes() == b"b" * 100

    # level 1's mask is damaged in the store after its DONE went up
    key = f"runs/cells/{spec().id}/level_1/mask.npz"
    s3_server.client().put_object(Bucket=s3_server.bucket, Key=key, Body=b"c" * 99)
    other.storage.pull(other.root)
    assert other.level_done(0) and not other.level_done(1)  # not trusted: it will be recomputed

    # what the store withdraws (a DONE invalidated by another node) leaves the copy too
    s3_server.client().delete_object(Bucket=s3_server.bucket, Key=f"runs/cells/{spec().id}/level_0/DONE")
    other.storage.pull(other.root)
    assert not other.level_done(0)


def test_resume_on_another_node_reads_the_newest_intact_checkpoint(s3_server, node):  # noqa: F811
    store = CellStore(check_storage(uri(s3_server)), spec())
    checkpoints = store.checkpoints(1)
    for step in (3, 6, 9):
        checkpoints.save(step, {"step": step, "weights": torch.full((4,), float(step))})
    kept = sorted(k for k in s3_server.list("runs/") if k.endswith("state.pt"))
    assert [Path(k).parent.name for k in kept] == ["step_00000006", "step_00000009"]  # old ones leave the store too

    # the newest is damaged in the store: the other node falls back to step 6 and quarantines step 9 there
    key = f"runs/cells/{spec().id}/level_1/checkpoint/step_00000009/state.pt"
    s3_server.client().put_object(Bucket=s3_server.bucket, Key=key, Body=b"not a checkpoint")
    node()
    other = CellStore(check_storage(uri(s3_server)), spec())
    other.storage.fresh(other.root)
    state = other.checkpoints(1).load_newest()
    assert state["step"] == 6 and torch.equal(state["weights"], torch.full((4,), 6.0))
    keys = s3_server.list("runs/")
    assert f"runs/cells/{spec().id}/level_1/quarantine/step_00000009/state.pt" in keys
    assert key not in keys


def test_an_outage_shorter_than_the_retry_window_costs_a_wait_not_a_write(s3_server, node, monkeypatch, caplog):  # noqa: F811
    monkeypatch.setenv(objectstore.TIMEOUT_ENV, "1")
    store = CellStore(check_storage(uri(s3_server)), spec())
    s3_server.pause()
    done = threading.Event()
    errors = []

    def write():
        try:
            store.storage.write_json(store.level_dir(0) / "metrics.json", {"score": 1.0})
        except Exception as e:  # noqa: BLE001
            errors.append(e)
        done.set()

    with caplog.at_level(logging.WARNING, logger=objectstore.__name__):
        threading.Thread(target=write).start()
        deadline = time.time() + 60
        while not any("retrying" in r.getMessage() for r in caplog.records) and time.time() < deadline:
            time.sleep(0.2)
        assert not done.is_set()  # the write is held by the outage ...
        assert any("retrying" in r.getMessage() for r in caplog.records)  # ... it failed at least once ...
        s3_server.resume()
        assert done.wait(60)  # ... and the retry went through once the store was back
    assert not errors
    assert f"runs/cells/{spec().id}/level_0/metrics.json" in s3_server.list("runs/")


def test_an_outage_longer_than_the_retry_window_is_an_oserror_not_damage(s3_server, node, monkeypatch):  # noqa: F811
    monkeypatch.setenv(objectstore.TIMEOUT_ENV, "1")
    monkeypatch.setenv(objectstore.RETRY_ENV, "2")
    store = CellStore(check_storage(uri(s3_server)), spec())
    store.storage.write_bytes(store.level_dir(0) / "mask.npz", b"m")
    store.mark_level_done(0)
    s3_server.pause()
    try:
        with pytest.raises(OSError) as caught:
            store.mark_level_done(0)
        assert not isinstance(caught.value, FileNotFoundError)  # a storage failure: the trial fails and is retried
    finally:
        s3_server.resume()
    assert store.level_done(0)


def test_a_bucket_that_does_not_exist_is_one_line_at_once(s3_server, node):  # noqa: F811
    started = time.monotonic()
    with pytest.raises(LnsubError) as caught:
        root = check_storage(f"s3://no-such-bucket-{s3_server.bucket}/runs")
        root.write_text(root.path("x"), "x")
    assert "\n" not in str(caught.value) and "no-such-bucket" in str(caught.value)
    assert time.monotonic() - started < 30


def test_a_pull_leaves_alone_what_this_process_has_just_written(s3_server, node):  # noqa: F811
    """Another thread's pull must not delete a file between its local rename and its upload."""
    store = CellStore(check_storage(uri(s3_server)), spec())
    pending = store.level_dir(0) / "metrics.json"
    pending.parent.mkdir(parents=True)
    pending.write_text("{}")  # renamed into place here, not uploaded yet
    store.storage.write_bytes(store.level_dir(0) / "mask.npz", b"m")
    store.storage.pull(store.root)
    assert pending.exists() and (store.level_dir(0) / "mask.npz").exists()
    s3_server.client().delete_object(Bucket=s3_server.bucket, Key=f"runs/cells/{spec().id}/level_0/mask.npz")
    store.storage.pull(store.root)  # mask.npz came down in the first pull: the store's word now goes
    assert pending.exists() and not (store.level_dir(0) / "mask.npz").exists()


def test_an_object_gone_between_listing_and_reading_is_skipped(s3_server, node, monkeypatch):  # noqa: F811
    store = CellStore(check_storage(uri(s3_server)), spec())
    store.storage.write_text(store.level_dir(0) / "a.json", "{}")
    store.storage.write_text(store.level_dir(0) / "b.json", "{}")
    node()
    other = CellStore(check_storage(uri(s3_server)), spec())
    real_get = objectstore.Remote.get

    def vanishing(self, rel, local):
        if rel.endswith("a.json"):
            raise FileNotFoundError(rel)  # deleted by its writer after the listing
        return real_get(self, rel, local)

    monkeypatch.setattr(objectstore.Remote, "get", vanishing)
    assert other.storage.pull(other.root) == 1
    assert (other.level_dir(0) / "b.json").exists() and not (other.level_dir(0) / "a.json").exists()
