"""A sweep on S3 (a real S3-compatible server, moto, on 127.0.0.1) across nodes that share no directory.

One run carries every fault the storage must survive: a trial killed mid-round, and the
S3 server stopped mid-sweep (SIGSTOP: unreachable, data kept) until a cell has failed to
write, then started again. MLflow is a real `mlflow server` (started by `lnsub ui
--storage s3://...`) whose artifacts go to the same S3 server; every analysis command
then reads the sweep from S3 in a process with a scratch folder of its own.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from s3_server import s3_server  # noqa: F401 (the fixture)
from test_sweep import tiny_grid

from lnsub.orchestrator import tracking
from lnsub.orchestrator.grid import plan
from lnsub.trainables import storage as storage_module
from lnsub.trainables.storage import remote as objectstore
from lnsub.trainables.store import CellStore
from lnsub.analysis.sweeps import load_state, open_storage, pull_cells

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str, scratch: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), objectstore.SCRATCH_ENV: str(scratch)}
    return subprocess.Popen([sys.executable, "-m", "lnsub.orchestrator.cli", *args], env=env, cwd=scratch.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _serve_mlflow(storage: str, db: Path, scratch: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = _cli("ui", "--storage", storage, "--tracking-uri", f"sqlite:///{db}", "--port", str(port),
                scratch=scratch, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.5)
    raise TimeoutError("lnsub ui did not come up")


def _stop_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_sweep_on_s3_across_nodes_with_no_shared_directory_survives_a_kill_and_an_outage(
        tmp_path, tiny_model, fault_plan, waiter, s3_server, monkeypatch, ray_token):  # noqa: F811
    import ray
    from ray.cluster_utils import Cluster

    storage = f"s3://{s3_server.bucket}/runs"
    grid = tiny_grid(tmp_path, languages=("syn-en", "syn-ar"), tasks=("ner",), steps=14)
    crashed, stalled = [c.spec for c in plan(str(grid)).cells]
    crash_marker, pause_marker = tmp_path / "crashed", tmp_path / "paused"
    before_crash = tmp_path / "before-crash"
    # the crash comes once the step-4 checkpoint, written behind training, is on the store (a pause first, then
    # the crash at the same step): a crash inside a write's window would lose that checkpoint, which is right
    # but not what this test is about
    fault_plan([{"unit": crashed.id, "level": 1, "step": 7, "action": "pause", "marker": str(before_crash)},
                {"unit": crashed.id, "level": 1, "step": 7, "action": "crash", "marker": str(crash_marker)},
                {"unit": stalled.id, "level": 1, "step": 9, "action": "pause", "marker": str(pause_marker)}])

    def stored(spec, step: int) -> bool:
        return f"runs/cells/{spec.id}/level_1/checkpoint/step_{step:08d}/meta.json" in s3_server.list(
            f"runs/cells/{spec.id}/level_1/checkpoint/")

    # an outage is noticed within seconds here (the defaults give a real cluster minutes)
    monkeypatch.setenv(objectstore.TIMEOUT_ENV, "2")
    monkeypatch.setenv(objectstore.RETRY_ENV, "2")
    scratch = {name: tmp_path / name / "scratch" for name in ("driver", "node1", "node2", "ui")}
    scratch.update({name: tmp_path / f"analysis-{name}" / "scratch" for name in ("analyze", "transfer", "similarity",
                                                                             "report")})
    for folder in scratch.values():
        folder.mkdir(parents=True)

    ui, tracking_uri = _serve_mlflow(storage, tmp_path / "ui" / "mlflow.db", scratch["ui"])
    ray_tmp = Path(tempfile.mkdtemp(prefix="lns3-", dir="/tmp"))  # AF_UNIX socket paths must stay < 108 bytes
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "temp_dir": str(ray_tmp / "ray"),
                                                             "include_dashboard": False})
    try:
        for name in ("node1", "node2"):  # each node's processes get a scratch folder of their own
            cluster.add_node(num_cpus=1, env_vars={objectstore.SCRATCH_ENV: str(scratch[name])})
        cluster.wait_for_nodes()
        sweep = _cli("sweep", "--grid", str(grid), "--name", "s3", "--storage", storage, "--tracking-uri",
                     tracking_uri, "--address", cluster.address, "--checkpoint-every", "4", "--max-failures", "10",
                     scratch=scratch["driver"])
        out = []
        reader = threading.Thread(target=lambda: out.append(sweep.stdout.read()), daemon=True)
        reader.start()
        waiter(lambda: before_crash.exists() or sweep.poll() is not None, "a cell at level 1, step 7")
        waiter(lambda: stored(crashed, 4), "its step-4 checkpoint on the store")
        Path(str(before_crash) + ".release").write_text("go")  # ... and now it crashes
        waiter(lambda: pause_marker.exists() or sweep.poll() is not None, "a cell paused at level 1, step 9")
        waiter(lambda: stored(stalled, 8), "its step-8 checkpoint on the store")
        s3_server.pause()  # the store goes away while that cell is mid-round ...
        Path(str(pause_marker) + ".release").write_text("go")
        # ... and it trains on to its next checkpoint, which it cannot write (the write fails behind training and
        # fails the round at its end): its trial fails (noted locally)
        waiter(lambda: any(tmp_path.rglob(f"failures/{stalled.id}.txt")),
               "the stalled cell to fail for want of storage", timeout=120)
        s3_server.resume()
        sweep.wait(timeout=600)
        reader.join(timeout=30)
        text = out[0] if out else ""
        assert sweep.returncode == 0, text[-3000:]
        runs = tracking.find_cell_runs("s3", tracking_uri)
        assert sorted(runs) == sorted([crashed.id, stalled.id]) and all(len(r) == 1 for r in runs.values())
        ray.shutdown()
        cluster.shutdown()
        # every analysis command, in a process (and scratch folder) of its own, reads the sweep from S3: the
        # three that read only the cells at once, then the report, which reads what they wrote
        for batch in ([["analyze"], ["transfer", "--level", "2"], ["similarity", "--sentences", "20"]], [["report"]]):
            procs = [(args, _cli(*args, "--name", "s3", "--storage", storage,
                                 scratch=scratch[args[0]])) for args in batch]
            for args, proc in procs:
                said = proc.communicate(timeout=600)[0]
                assert proc.returncode == 0, (args, said[-3000:])
        analysis = s3_server.list("runs/sweeps/s3/analysis/")
        for name in ("overlap/overlap.csv", "transfer/transfer_matrix_level2.csv", "similarity/similarity.csv",
                     "similarity/similarity_cka.png", "report/report.html"):
            assert f"runs/sweeps/s3/analysis/{name}" in analysis, (name, analysis)
        assert [k for k in s3_server.list("runs/transfer/") if k.endswith("/result.json")]
    finally:
        ray.shutdown()
        cluster.shutdown()
        _stop_group(ui)
        import shutil

        shutil.rmtree(ray_tmp, ignore_errors=True)

    assert "2/2 cells done" in text and storage in text
    assert json.loads(crash_marker.read_text())["step"] == 7  # both faults fired where they were put
    assert json.loads(pause_marker.read_text())["step"] == 9

    # what the store holds, read back through a scratch copy of a new "process"
    monkeypatch.setenv(objectstore.SCRATCH_ENV, str(tmp_path / "reader"))
    monkeypatch.setattr(storage_module, "_OPEN", {})
    root = open_storage(storage)
    state = load_state(root, "s3")
    pull_cells(root, state.specs)
    stores = {s.id: CellStore(root, s) for s in state.specs}
    assert all(st.finished() and all(st.level_done(k) for k in range(3)) for st in stores.values())
    assert stores[crashed.id].metrics(1)["resumed_from_step"] == 4  # killed at 7: resumed from its checkpoint
    assert stores[stalled.id].metrics(1)["resumed_from_step"] == 8  # step 12 never reached the store: from 8

    keys = s3_server.list("runs/")
    assert not [k for k in keys if "/checkpoint/" in k and not k.endswith("/")]  # finished rounds leave none
    assert not [k for k in keys if k.endswith((".tmp", ".part"))]
    for spec in state.specs:
        for k in range(3):
            assert keys.count(f"runs/cells/{spec.id}/level_{k}/DONE") == 1
    # MLflow's artifacts went to the same S3 server, through the tracking server: one run per cell, every mask
    masks = [k for k in keys if k.startswith("runs/mlartifacts/") and k.endswith("mask.npz")]
    assert len(masks) == 2 * 3, masks

    # nodes share no directory: every cell file written locally lies in a node's own scratch folder
    written = {p for p in tmp_path.rglob("*") if p.is_file() and "cells" in p.relative_to(tmp_path).parts}
    for path in written:
        assert any(folder in path.parents for folder in scratch.values()) or (tmp_path / "reader") in path.parents, path
    worked = [name for name in ("node1", "node2") if any(scratch[name].rglob("cells"))]
    assert worked == ["node1", "node2"], worked
    assert not (tmp_path / "driver" / "lnsub-runs").exists()
