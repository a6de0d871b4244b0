"""After a driver is killed, the next one stops the Ray daemons it left: only those, never anyone else's.

The record of a driver's private Ray is kept on its own host, in a private folder (never in storage, where a
trial, another host or a bucket user could plant one). Even a record planted there reaps nothing unless it names
a private temp dir lnsub made, on this host, for this user, and a victim names that dir as a path argument and
was started after the driver.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from lnsub.orchestrator import jobs, ray_backend


@pytest.fixture
def state_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state"


def _sentinel(*args: str) -> subprocess.Popen:
    """A harmless process whose command line holds `args` (as a Ray daemon's would)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *args])


def _dead_pid() -> tuple[int, float]:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(proc.pid).create_time()
    proc.wait()
    return proc.pid, started


def _record(path: Path, **fields) -> None:
    pid, started = _dead_pid()
    body = {"pid": pid, "pid_started": started, "host": socket.gethostname(), "uid": os.getuid(),
            "temp_dir": "", "started": time.time()}
    body.update(fields)
    path.write_text(json.dumps(body))


@pytest.mark.parametrize("fields", [
    {"temp_dir": ""},  # a substring of every command line
    {"temp_dir": "/"},
    {"temp_dir": "/tmp"},
    {"host": "another-host"},
    {"uid": os.getuid() + 1},
])
def test_a_planted_record_reaps_nothing(tmp_path, state_home, caplog, fields):
    sentinels = [_sentinel("/tmp", "--temp-dir=/tmp/lnsub-ray-x", str(tmp_path))]
    try:
        record = jobs.session_file(tmp_path / "runs", "sweep-s")
        _record(record, **fields)
        with caplog.at_level(logging.WARNING):
            jobs._reap_left_behind(record)
        assert any("ignored a Ray session record" in r.getMessage() for r in caplog.records)  # it was read
        assert all(s.poll() is None for s in sentinels)  # and killed nothing
        assert not record.exists()
    finally:
        for s in sentinels:
            s.kill()
            s.wait()


def test_a_damaged_record_is_ignored(tmp_path, state_home, caplog):
    record = jobs.session_file(tmp_path / "runs", "sweep-s")
    record.write_text('{"pid": 999999, "temp_dir": ""}')
    with caplog.at_level(logging.WARNING):
        jobs._reap_left_behind(record)
    assert any("does not parse" in r.getMessage() for r in caplog.records) and not record.exists()


def test_only_the_dead_drivers_own_daemons_are_stopped(tmp_path, state_home):
    temp_dir = str(Path(tempfile.mkdtemp(prefix="lnsub-ray-")).resolve())
    before = _sentinel(f"--temp-dir={temp_dir}")  # older than the driver: not its daemon
    time.sleep(1.5)
    record = jobs.session_file(tmp_path / "runs", "sweep-s")
    _record(record, temp_dir=temp_dir, pid_started=time.time())
    time.sleep(1.5)
    daemon = _sentinel(f"--temp-dir={temp_dir}", f"--session-dir={temp_dir}/session_x")
    neighbour = _sentinel(f"--temp-dir={temp_dir}-other", f"{temp_dir}x")  # the dir as a mere prefix of a name
    try:
        jobs._reap_left_behind(record)
        assert daemon.wait(timeout=30) is not None  # stopped
        assert before.poll() is None and neighbour.poll() is None
        assert not Path(temp_dir).exists() and not record.exists()
    finally:
        for s in (before, daemon, neighbour):
            if s.poll() is None:
                s.kill()
            s.wait()


def test_state_lives_in_a_private_folder(tmp_path, state_home):
    folder = jobs.private_dir("ray-sessions")
    assert folder.stat().st_mode & 0o777 == 0o700 and str(folder).startswith(str(state_home))
    assert ray_backend.private_temp_dir(str(tmp_path)) is False


def test_batches_inside_held_ray_share_one_instance_recorded_for_the_holder(tmp_path, state_home, monkeypatch):
    """A study's steps: the first batch starts the private Ray, the next ones use it, the block's end stops it; the
    holder's record names its temp dir while it runs (a killed study's next run reaps it) and is gone after."""
    calls = []
    monkeypatch.setattr(ray_backend, "start", lambda address=None, temp_dir=None: calls.append(("start", temp_dir))
                        or True)
    monkeypatch.setattr(ray_backend, "stop", lambda: calls.append(("stop", None)))
    holder = jobs.session_file(tmp_path / "runs", "study-s")
    batches = [jobs.session_file(tmp_path / "runs", f"sweep-{k}") for k in range(2)]
    with jobs.held_ray(holder):
        assert calls == [] and not holder.exists()  # nothing to run yet: no instance
        folders = []
        for record in batches:
            with jobs.ray_instance(record) as scheduler:
                folders.append(scheduler)
                recorded = ray_backend.SessionRecord.parse(holder.read_bytes())
                assert recorded.temp_dir == str(scheduler.parent) and not record.exists()
        assert calls == [("start", str(folders[0].parent))] and folders[0] == folders[1]
        assert folders[0].parent.is_dir()
    assert calls[-1] == ("stop", None) and len(calls) == 2
    assert not holder.exists() and not folders[0].parent.exists()
    with jobs.ray_instance(batches[0]) as scheduler:  # outside the block: one instance a batch, as before
        assert batches[0].exists()
    assert [c[0] for c in calls] == ["start", "stop", "start", "stop"] and not batches[0].exists()
