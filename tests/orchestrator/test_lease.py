"""One driver per sweep: the lease is taken atomically, renewed and released only by its holder, and aged by the
storage's clock (never by a host's), on a file system and on S3 (moto on 127.0.0.1)."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from s3_server import s3_server  # noqa: F401 (the fixture)

from lnsub.orchestrator import lease
from lnsub.trainables.errors import LnsubError

CONTENDERS = 12


def _a_body(gen: int, **changes) -> bytes:
    fields = dict(generation=gen, token="ab" * 16, pid=1, pid_started=1.0, host="elsewhere", started=time.time())
    fields.update(changes)
    return (json.dumps(fields) + "\n").encode()


def _plant(storage: Path, gen: int, body: bytes, age: float = 0.0) -> Path:
    path = storage / "sweeps/s/lease" / f"{gen:08d}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    if age:
        stamp = time.time() - age
        os.utime(path, (stamp, stamp))
    return path


def _contend(storage: str, barrier, results) -> None:
    """One racing driver: it judges the lease free, waits at the barrier with the others, then creates."""
    real_create = lease.FolderLeases.create

    def create(self, gen, body):
        barrier.wait(timeout=60)  # every contender has judged the lease free before any creates
        return real_create(self, gen, body)

    lease.FolderLeases.create = create
    try:
        held = lease.take(storage, "s")
        results.put(("took", held.generation))
    except LnsubError as e:
        results.put(("refused", str(e)))


def test_of_drivers_racing_at_the_same_instant_exactly_one_takes_the_lease(tmp_path):
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(CONTENDERS), ctx.Queue()
    procs = [ctx.Process(target=_contend, args=(str(tmp_path), barrier, results)) for _ in range(CONTENDERS)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert not barrier.broken  # all twelve passed the liveness check and reached create() together: they raced
    took = [o for o in outcomes if o[0] == "took"]
    assert len(took) == 1, outcomes
    assert all("being run by pid" in o[1] for o in outcomes if o[0] == "refused")


def test_a_live_holder_keeps_the_sweep_and_a_dead_one_passes_it_on(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        mine = lease.take(tmp_path, "s")
        lease.release(tmp_path, "s", mine)
        import psutil

        _plant(tmp_path, 2, _a_body(2, pid=other.pid, pid_started=psutil.Process(other.pid).create_time(),
                                    host=socket.gethostname()))
        with pytest.raises(LnsubError, match=f"being run by pid {other.pid}"):
            lease.take(tmp_path, "s")
    finally:
        other.kill()
        other.wait()
    taken = lease.take(tmp_path, "s")  # the holder's process is gone: the next generation is ours
    assert taken.generation == 3 and taken.pid == os.getpid()


def test_a_reused_pid_is_not_the_holder(tmp_path):
    _plant(tmp_path, 1, _a_body(1, pid=os.getpid(), pid_started=123.0, host=socket.gethostname()))
    assert lease.take(tmp_path, "s").generation == 2  # our pid, but not the process that took generation 1


def test_age_is_the_storage_clocks_not_the_hosts(tmp_path):
    # another host whose clock is 125 s behind wrote its lease just now: alive, whatever its body says
    _plant(tmp_path, 1, _a_body(1, started=time.time() - 125))
    with pytest.raises(LnsubError, match="renewed 0 s ago"):
        lease.take(tmp_path, "s")
    # a body no clock can age (heartbeat 1e400, a huge pid) is damage; it holds the sweep only until it is old
    _plant(tmp_path, 2, b'{"generation": 2, "heartbeat": 1e400, "pid": 99999999999999999999}')
    with pytest.raises(LnsubError, match="damaged lease"):
        lease.take(tmp_path, "s")
    _plant(tmp_path, 2, b'{"generation": 2, "heartbeat": 1e400, "pid": 99999999999999999999}', age=lease.TTL + 5)
    assert lease.take(tmp_path, "s").generation == 3


def test_renewal_and_release_touch_only_the_holders_own_lease(tmp_path):
    mine = lease.take(tmp_path, "s")
    path = tmp_path / "sweeps/s/lease" / f"{mine.generation:08d}.json"
    os.utime(path, (1, 1))
    lease.renew(tmp_path, "s", mine)
    assert path.stat().st_mtime > time.time() - 60  # the heartbeat is the file's own mtime
    other = _plant(tmp_path, mine.generation + 1, _a_body(mine.generation + 1))  # taken over (presumed dead)
    with pytest.raises(lease.LeaseLost, match="another driver took the lease"):
        lease.renew(tmp_path, "s", mine)
    lease.release(tmp_path, "s", mine)
    assert other.exists() and not path.exists()  # ours gone, the newer holder's kept
    assert lease.read_holder(tmp_path, "s").generation == mine.generation + 1


def test_the_keeper_renews_while_the_driver_is_busy_and_reports_a_lost_lease(tmp_path):
    mine = lease.take(tmp_path, "s")
    path = tmp_path / "sweeps/s/lease" / f"{mine.generation:08d}.json"
    os.utime(path, (1, 1))
    lost = threading.Event()
    with lease.Keeper(tmp_path, "s", mine, lambda reason: lost.set(), every=0.2):
        time.sleep(1.0)  # the main thread blocked (a slow draw, a sync, a store retry): the keeper renews anyway
        assert path.stat().st_mtime > time.time() - 60
        _plant(tmp_path, mine.generation + 1, _a_body(mine.generation + 1))
        assert lost.wait(10)


def test_the_lease_on_s3_is_created_only_if_absent(s3_server):  # noqa: F811
    from lnsub.trainables.storage import Storage

    root = Storage.open(f"s3://{s3_server.bucket}/lease-test")
    first = lease.take(root, "s")
    with pytest.raises(LnsubError, match="being run by pid"):
        lease.take(root, "s")
    leases = lease.leases_for(root, "s")
    assert isinstance(leases, lease.S3Leases)
    assert not leases.create(first.generation, b"x")  # If-None-Match: *: the server refuses a second writer
    raw, age = leases.read(first.generation)
    assert lease.Lease.parse(raw) == first and age < 60
    lease.renew(root, "s", first)
    lease.release(root, "s", first)
    assert leases.generations() == [] and lease.read_holder(root, "s") is None
    assert lease.take(root, "s").generation == 1


def test_of_drivers_racing_on_s3_exactly_one_takes_the_lease(s3_server, monkeypatch):  # noqa: F811
    from lnsub.trainables.storage import Storage

    root = Storage.open(f"s3://{s3_server.bucket}/race")
    barrier, outcomes = threading.Barrier(CONTENDERS), []
    real_create = lease.S3Leases.create

    def create(self, gen, body):
        barrier.wait(timeout=60)  # all have judged the lease free: the conditional PUT alone decides
        return real_create(self, gen, body)

    monkeypatch.setattr(lease.S3Leases, "create", create)

    def contend():
        try:
            outcomes.append(("took", lease.take(root, "s").generation))
        except LnsubError as e:
            outcomes.append(("refused", str(e)))

    threads = [threading.Thread(target=contend) for _ in range(CONTENDERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not barrier.broken and len(outcomes) == CONTENDERS
    assert [o for o in outcomes if o[0] == "took"] == [("took", 1)], outcomes
