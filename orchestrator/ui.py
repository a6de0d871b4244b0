"""`lnsub ui`: an MLflow server on 127.0.0.1 whose whole process group lives and dies with lnsub.

MLflow's server starts uvicorn (and, unless told not to, job runners) as children; a
signal to lnsub alone would leave them answering on the port. The server runs in a
process group of its own, and every way lnsub ends (SIGTERM, SIGINT, SIGHUP, an
exception) stops that group: SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

from lnsub.trainables.errors import LnsubError

HOST = "127.0.0.1"
GRACE_SECONDS = 10.0


def runs_page(base: str, experiment_id: str) -> str:
    """The URL of an experiment's runs table in MLflow's model-training view.

    MLflow 3's UI opens an experiment on its GenAI overview (traces, an assistant) unless the browser
    stored the other choice of its "GenAI / Model training" switch; `workflowType=machine_learning` in
    the page's query makes that choice for a browser that never saw MLflow (a fresh profile). The table
    keeps MLflow's default order (newest first), the one that lists cells as rows and folds each
    analysis under the sweep's run (sorting by name flattens the nesting).
    """
    return f"{base}/#/experiments/{experiment_id}/runs?{urlencode({'workflowType': 'machine_learning'})}"


def check_port(port: int) -> None:
    """A port lnsub can serve on: in range and free on 127.0.0.1 (one line otherwise)."""
    if not 1 <= port <= 65535:
        raise LnsubError(f"--port {port}: a port lies in 1..65535")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError as e:
            raise LnsubError(f"--port {port}: {HOST}:{port} is in use ({e.strerror}); choose another --port") from None


def _stop_group(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # children the leader left behind
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def serve(args: list[str], env: dict[str, str]) -> int:
    """Run `python -m mlflow <args>` until it ends or lnsub is told to stop; its whole group goes with lnsub.

    Returns 0 when stopped by a signal; a server that fails on its own is one line naming its last words.
    """
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", *args], env=env, start_new_session=True,
                            stdout=log, stderr=subprocess.STDOUT)
    stopped: list[int] = []

    def on_signal(signum, frame):
        stopped.append(signum)
        _stop_group(proc)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        while proc.poll() is None:
            time.sleep(0.2)
    finally:
        _stop_group(proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopped or proc.returncode == 0:
        return 0
    log.seek(0)
    lines = [line.strip() for line in log.read().splitlines() if line.strip()]
    raise LnsubError(f"the MLflow server stopped (exit {proc.returncode}): {lines[-1][:300] if lines else 'no output'}")


def artifact_root(storage: str) -> str:
    """Where a server for `storage` keeps artifacts: <storage>/mlartifacts (an object store's URI or a folder)."""
    return f"{storage.rstrip('/')}/mlartifacts" if "://" in storage else str(Path(storage).resolve() / "mlartifacts")
