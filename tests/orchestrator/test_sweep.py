"""The sweep end to end: CLI, kill-and-resume, trial and node failures, a tracking server that goes away."""

from __future__ import annotations

import json
import os
import shutil
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
import yaml

from orchestrator import tracking
from orchestrator.sweep import load_state, run_sweep, state_specs
from trainables.store import CellStore

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

TINY_TASK = {"steps": 16, "lr": 1.0e-3, "batch_size": 16, "max_length": 32, "train_size": 400, "valid_size": 96}


def tiny_grid(tmp_path: Path, languages=("syn-en", "syn-ar"), tasks=("ner",), steps=16, levels=2) -> Path:
    grid = {"name": "tiny", "model": "testbed", "languages": list(languages),
            "tasks": {t: {**TINY_TASK, "steps": steps} for t in tasks}, "seeds": [0], "levels": levels,
            "prune_fraction": 0.2, "resources": {"workers_per_cell": 1, "cpus_per_worker": 1, "gpus_per_worker": 0}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def lnsub(*args, cwd, **kw):
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], cwd=cwd,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def assert_complete_in_storage_and_mlflow(storage: Path, name: str, tracking_uri: str | None = None):
    state = load_state(storage, name)
    specs = state_specs(state)
    for spec in specs:
        store = CellStore(storage, spec)
        assert store.finished(), spec.id
        for k in range(spec.levels + 1):
            assert store.level_done(k) and (store.level_dir(k) / "mask.npz").exists(), (spec.id, k)
    uri = tracking_uri or state["tracking_uri"]
    runs = tracking.find_cell_runs(name, uri)
    assert set(runs) == {s.id for s in specs}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    for spec in specs:
        assert len(runs[spec.id]) == 1, f"duplicate MLflow runs for {spec.id}"
        run = runs[spec.id][0]
        tags = run.data.tags
        assert tags["lnsub.sweep"] == name and tags["lnsub.cell_id"] == spec.id
        assert (tags["lnsub.model"], tags["lnsub.task"], tags["lnsub.language"], tags["lnsub.seed"]) == \
            (spec.model, spec.task, spec.language, str(spec.seed))
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "sparsity"))
        assert steps == list(range(spec.levels + 1)), (spec.id, steps)  # every level exactly once
        scores = sorted(m.step for m in client.get_metric_history(run.info.run_id, "score"))
        assert scores == steps
        for k in range(spec.levels + 1):
            names = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, f"masks/level_{k}")}
            assert names == {"mask.npz", "mask.json"}, (spec.id, k)
        assert run.data.params["task"] == spec.task and run.info.status == "FINISHED"
    return specs


def test_smoke_sweep_through_the_cli(smoke_sweep):
    cwd, proc = smoke_sweep
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:]
    storage = cwd / "lnsub-runs"
    specs = assert_complete_in_storage_and_mlflow(storage, "smoke")
    assert len(specs) == 9 and {s.task for s in specs} == {"mlm", "ner", "xnli"}
    assert "9/9 cells done" in out and "lnsub ui --name smoke" in out and "mlflow.db" in out
    status = lnsub("status", "--name", "smoke", cwd=cwd)
    text, _ = status.communicate(timeout=120)
    assert status.returncode == 0 and "9 done, 0 running, 0 failed, 0 pending" in text
    again = lnsub("sweep", "--grid", "smoke", cwd=cwd)  # same name without --resume: refused
    text, _ = again.communicate(timeout=120)
    assert again.returncode == 2 and "add --resume" in text


def test_driver_sigkill_then_resume(tmp_path, tiny_model):
    import psutil

    grid = tiny_grid(tmp_path, tasks=("ner", "xnli"), steps=30)
    storage = tmp_path / "runs"
    driver = lnsub("sweep", "--grid", str(grid), "--name", "killed", "--storage", str(storage), cwd=tmp_path)
    deadline = time.time() + 600
    specs = None
    while time.time() < deadline:
        assert driver.poll() is None, driver.stdout.read()[-3000:]
        if (storage / "sweeps/killed/sweep.json").exists():
            specs = state_specs(load_state(storage, "killed"))
            stores = [CellStore(storage, s) for s in specs]
            finished = [s for s in stores if s.finished()]
            partial = [s for s in stores if not s.finished() and s.level_done(0)]
            if finished and partial:
                break
        time.sleep(0.2)
    session = json.loads((storage / "sweeps/killed/ray_session.json").read_text())
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    done_files = {p: p.stat().st_mtime_ns for s in specs for k in range(s.levels + 1)
                  if CellStore(storage, s).level_done(k) for p in CellStore(storage, s).level_dir(k).iterdir()}
    assert done_files
    grid.unlink()  # a resume runs the stored plan, not the grid file
    resumed = lnsub("sweep", "--name", "killed", "--storage", str(storage), "--resume", cwd=tmp_path)
    out, _ = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, out[-3000:]
    assert_complete_in_storage_and_mlflow(storage, "killed")
    for path, stamp in done_files.items():  # finished levels untouched
        assert path.stat().st_mtime_ns == stamp, path
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if session["temp_dir"] in " ".join(p.info["cmdline"] or [])]
    assert not leftovers  # the killed driver's Ray daemons were reaped


def test_a_trial_that_dies_mid_round_resumes_from_its_checkpoint(tmp_path, tiny_model):
    grid = tiny_grid(tmp_path, languages=("syn-en",), steps=12)
    storage = tmp_path / "runs"
    from orchestrator.grid import plan

    victim = plan(str(grid)).cells[0].spec
    marker = tmp_path / "crashed"
    result = run_sweep(str(grid), name="crash", storage=str(storage), checkpoint_every=3, sync_interval=2,
                       inject_crash={"cell": victim.id, "level": 1, "step": 7, "marker": str(marker)})
    assert marker.exists()
    assert all(err is None for err in result.errors.values())
    assert CellStore(storage, victim).metrics(1)["resumed_from_step"] == 6  # the last checkpoint before the crash
    assert_complete_in_storage_and_mlflow(storage, "crash")


def test_a_node_removed_mid_sweep_loses_nothing(tmp_path, tiny_model):
    import ray
    from ray.cluster_utils import Cluster

    ray_tmp = Path(tempfile.mkdtemp(prefix="lnr-", dir="/tmp"))  # AF_UNIX socket paths must stay < 108 bytes
    os.environ["RAY_TMPDIR"] = str(ray_tmp)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "temp_dir": str(ray_tmp / "ray"),
                                                             "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=1, resources={"fake_gpu": 1}) for _ in range(3)]
    cluster.wait_for_nodes()
    grid = tiny_grid(tmp_path, languages=("syn-en", "syn-ar", "syn-ur"), tasks=("ner",), steps=24)
    storage = tmp_path / "runs"
    outcome = {}

    def sweep():
        outcome["result"] = run_sweep(str(grid), name="nodes", storage=str(storage), address=cluster.address,
                                      extra_resources={"fake_gpu": 1}, checkpoint_every=4, sync_interval=2)

    thread = threading.Thread(target=sweep)
    try:
        thread.start()
        deadline = time.time() + 600
        while time.time() < deadline:
            if (storage / "sweeps/nodes/sweep.json").exists():
                stores = [CellStore(storage, s) for s in state_specs(load_state(storage, "nodes"))]
                if sum(s.level_done(0) for s in stores) >= 1:
                    break
            time.sleep(0.2)
        cluster.remove_node(nodes[1])  # three cells run at once, one per node: one of them dies here
        thread.join(timeout=900)
        assert not thread.is_alive()
    finally:
        ray.shutdown()
        cluster.shutdown()
        os.environ.pop("RAY_TMPDIR", None)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert all(err is None for err in outcome["result"].errors.values())
    assert_complete_in_storage_and_mlflow(storage, "nodes")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_mlflow(port: int, folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                             "--artifacts-destination", str(folder / "artifacts"), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            assert proc.poll() is None, "mlflow server exited"
            time.sleep(0.5)
    raise TimeoutError("mlflow server did not come up")


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_tracking_server_stopped_and_restarted_mid_sweep(tmp_path, tiny_model):
    port, folder = _free_port(), tmp_path / "mlflow"
    folder.mkdir()
    uri = f"http://127.0.0.1:{port}"
    server = _start_mlflow(port, folder)
    grid = tiny_grid(tmp_path, tasks=("ner", "xnli"), steps=60)
    storage = tmp_path / "runs"
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("result", run_sweep(
        str(grid), name="flaky", storage=str(storage), tracking_uri=uri, sync_interval=1)))
    try:
        thread.start()

        def levels_done() -> int:
            if not (storage / "sweeps/flaky/sweep.json").exists():
                return 0
            return sum(CellStore(storage, s).level_done(k) for s in state_specs(load_state(storage, "flaky"))
                       for k in range(s.levels + 1))

        deadline = time.time() + 600
        while levels_done() < 1 and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(2)  # let one sync reach the server
        _stop(server, signal.SIGKILL)  # dies at once; a graceful stop can outlast the rest of the sweep
        down_at = levels_done()
        while levels_done() < down_at + 1 and time.time() < deadline and thread.is_alive():
            time.sleep(0.2)
        assert thread.is_alive(), "the sweep ended while the server was down: make the grid longer"
        server = _start_mlflow(port, folder)  # the same store comes back, mid-sweep
        thread.join(timeout=900)
        assert not thread.is_alive()
        assert outcome["result"].mlflow_synced
        assert_complete_in_storage_and_mlflow(storage, "flaky", tracking_uri=uri)
    finally:
        _stop(server)
