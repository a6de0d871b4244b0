"""Storage under faults and tampering: a damaged DONE is damage, an interrupted upload leaves no object, a key or a
name read back never leaves the storage folder, a link is never followed, and a full local disk says so at once
(it is not a store outage). S3 is moto on 127.0.0.1."""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import threading
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
from lnsub.trainables.storage.layout import sha256_file
from lnsub.trainables.store import CellStore, save_tensors

SHA = "0" * 64


@pytest.fixture
def node(tmp_path, monkeypatch):
    monkeypatch.setenv(objectstore.SCRATCH_ENV, str(tmp_path / "scratch"))
    monkeypatch.setattr(storage_module, "_OPEN", {})
    yield


def a_cell() -> CellSpec:
    return CellSpec(model="testbed", task="ner", language="syn-en", seed=0, levels=2)


@pytest.mark.parametrize("body", [b"", b"{}", b"null", b"ok\n", b"[]", b'{"files": []}', b'{"files": {}, "x": 1}',
                                  b'{"files": {"../../etc/passwd": "%s"}}' % SHA.encode(),
                                  b'{"files": {"mask.npz": "not-a-digest"}}', b"\xff\xfe"])
def test_a_done_that_is_not_a_commit_record_is_damage(tmp_path, body):
    store = CellStore(tmp_path, a_cell())
    store.storage.write_json(store.level_dir(0) / "metrics.json", {"score": 1.0})
    store.mark_level_done(0)
    assert store.level_done(0) and commit.verify_done(store.level_dir(0) / "DONE")
    (store.level_dir(0) / "DONE").write_bytes(body)
    assert not store.level_done(0)
    assert not commit.verify_done(store.level_dir(0) / "DONE")


def test_a_link_in_a_committed_folder_is_never_followed(tmp_path, caplog):
    folder = tmp_path / "level_1"
    storage = Storage.open(tmp_path)
    storage.write_json(folder / "metrics.json", {"score": 1.0})
    (folder / "etc").symlink_to("/etc")
    (folder / "passwd").symlink_to("/etc/passwd")
    with caplog.at_level(logging.WARNING):
        storage.mark_done(folder)
    assert commit.read_done(folder / "DONE") == {"metrics.json": sha256_file(folder / "metrics.json")}
    assert sum("symbolic link" in r.getMessage() for r in caplog.records) == 2


@pytest.mark.parametrize("language", ["../../outside", "syn-en/../../x", "", "xx"])
def test_a_tampered_spec_cannot_name_a_folder_outside_storage(tmp_path, language):
    d = {**a_cell().to_dict(), "steps": 4}
    CellSpec.from_dict(d)  # as written, a valid spec
    d["language"] = language
    with pytest.raises(LnsubError, match="language"):
        CellSpec.from_dict(d)


def test_store_keys_that_would_leave_the_scratch_copy_are_ignored(s3_server, node, tmp_path, caplog):  # noqa: F811
    client = s3_server.client()
    client.put_object(Bucket=s3_server.bucket, Key="runs/sweeps/s/../../../../escaped/x.txt", Body=b"evil")
    client.put_object(Bucket=s3_server.bucket, Key="runs/sweeps/s/ok.txt", Body=b"fine")
    storage = Storage.open(f"s3://{s3_server.bucket}/runs")
    with caplog.at_level(logging.WARNING):
        storage.pull(storage.path("sweeps", "s"))
    assert storage.path("sweeps/s/ok.txt").read_bytes() == b"fine"
    assert not list(tmp_path.rglob("escaped"))  # nothing created outside the copy
    assert any("would leave the storage folder" in r.getMessage() for r in caplog.records)  # the key was seen


def _count_calls(client, operation: str, action=None) -> list[int]:
    calls = [0]

    def before(**kwargs):
        calls[0] += 1
        if action is not None:
            action(calls[0])

    client.meta.events.register(f"before-call.s3.{operation}", before)
    return calls


def test_an_upload_interrupted_by_ctrl_c_leaves_no_object(s3_server, node, tmp_path, monkeypatch):  # noqa: F811
    from boto3.s3.transfer import TransferConfig

    monkeypatch.setattr(objectstore, "_transfer_config", lambda: TransferConfig(
        multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024, max_concurrency=1))
    remote = objectstore.Remote.open(f"s3://{s3_server.bucket}/runs")
    local = tmp_path / "state.pt"
    local.write_bytes(os.urandom(20 * 1024 * 1024))  # four parts
    ctrl_c = lambda n: signal.pthread_kill(threading.main_thread().ident, signal.SIGINT) if n == 2 else None  # noqa
    parts = _count_calls(objectstore._s3_client(), "UploadPart", ctrl_c)  # Ctrl-C after one part went up
    # Python's own Ctrl-C handler, whatever this process inherited (a shell starts background jobs with SIGINT ignored)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            remote.put("cells/c/level_0/checkpoint/step_00000004/state.pt", local)
    finally:
        signal.signal(signal.SIGINT, before)
    assert parts[0] >= 2  # the interruption hit a multipart upload in flight
    assert s3_server.list("runs/") == []  # no partial object, nothing to trust
    pending = s3_server.client().list_multipart_uploads(Bucket=s3_server.bucket).get("Uploads", [])
    assert pending == []  # and the upload was aborted, not completed


def test_a_transient_error_mid_upload_is_retried_into_a_whole_object(s3_server, node, tmp_path,  # noqa: F811
                                                                     monkeypatch):
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import EndpointConnectionError

    monkeypatch.setattr(objectstore, "_transfer_config", lambda: TransferConfig(
        multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024, max_concurrency=1))

    def fail_once(n):
        if n == 2:
            raise EndpointConnectionError(endpoint_url=s3_server.endpoint)

    remote = objectstore.Remote.open(f"s3://{s3_server.bucket}/runs")
    local = tmp_path / "state.pt"
    local.write_bytes(os.urandom(12 * 1024 * 1024))
    parts = _count_calls(objectstore._s3_client(), "UploadPart", fail_once)
    remote.put("x/state.pt", local)
    assert parts[0] > 3  # the failed part, then the retried upload's parts
    body = s3_server.client().get_object(Bucket=s3_server.bucket, Key="runs/x/state.pt")["Body"].read()
    assert body == local.read_bytes()


def test_other_stores_upload_to_a_temporary_key_first(tmp_path, monkeypatch):
    """A store without boto3 (fsspec's memory:// here): an upload cut short leaves only a temporary key, removed."""
    import fsspec

    remote = objectstore.Remote.open("memory://bucket/runs")
    local = tmp_path / "f.bin"
    local.write_bytes(b"x" * 100_000)
    real = objectstore.shutil.copyfileobj

    def cut(src, dst, length=0):
        dst.write(src.read(1000))  # part of it went up ...
        raise KeyboardInterrupt  # ... then Ctrl-C

    monkeypatch.setattr(objectstore.shutil, "copyfileobj", cut)
    with pytest.raises(KeyboardInterrupt):
        remote.put("a/f.bin", local)
    memory = fsspec.filesystem("memory")
    assert not memory.exists("/bucket/runs/a/f.bin") and memory.find("/bucket/runs") == []
    monkeypatch.setattr(objectstore.shutil, "copyfileobj", real)
    remote.put("a/f.bin", local)
    assert memory.cat("/bucket/runs/a/f.bin") == local.read_bytes()


def test_a_checkpoint_on_a_full_disk_says_disk_full():
    with pytest.raises(objectstore.DiskFull, match="disk full writing /dev/full") as e:
        save_tensors({"w": torch.zeros(1000, 1000)}, Path("/dev/full"))  # the kernel's ENOSPC
    assert e.value.errno == errno.ENOSPC


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "tiny-disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a 1 MB tmpfs needs root (CI runs as root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_scratch_disk_is_not_retried_as_a_store_outage(s3_server, node, tiny_disk, monkeypatch):  # noqa: F811
    s3_server.client().put_object(Bucket=s3_server.bucket, Key="runs/cells/c/big.bin", Body=os.urandom(3 << 20))
    monkeypatch.setenv(objectstore.SCRATCH_ENV, str(tiny_disk))
    monkeypatch.setenv(objectstore.RETRY_ENV, "300")
    storage = Storage.open(f"s3://{s3_server.bucket}/runs")
    mirror = storage.mirror
    reads = [0]
    real_open = mirror.remote.fs.open_input_stream

    class Counting:
        def open_input_stream(self, key):
            reads[0] += 1
            return real_open(key)

        def __getattr__(self, name):
            return getattr(real_open.__self__, name)

    mirror.remote.fs = Counting()
    with pytest.raises(objectstore.DiskFull, match="disk full writing .*big.bin .*LNSUB_SCRATCH"):
        storage.pull(storage.path("cells"))
    assert reads[0] == 1  # tried once: a full disk is not retried for 300 s
