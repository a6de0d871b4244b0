"""`lnsub ui` leaves nothing behind: a SIGTERM (or SIGINT, SIGHUP) to lnsub stops the MLflow server and its
workers, and the port stops answering."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
        return True
    except OSError:
        return False


def test_a_signal_to_lnsub_ui_stops_the_whole_server(tmp_path, sig=signal.SIGTERM):
    port = _free_port()
    ui = subprocess.Popen([sys.executable, "-m", "lnsub.orchestrator.cli", "ui", "--storage", str(tmp_path / "runs"),
                           "--port", str(port)], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 180
        while not _answers(port):
            assert ui.poll() is None, ui.stdout.read()
            assert time.time() < deadline, "the UI never answered"
            time.sleep(0.5)
        server = psutil.Process(ui.pid).children(recursive=True)
        assert server  # the MLflow server and its workers run as lnsub's children: what must not be left behind
        ui.send_signal(sig)
        assert ui.wait(timeout=60) == 0
        gone, alive = psutil.wait_procs(server, timeout=30)
        assert not alive, [p.cmdline() for p in alive]
        assert not _answers(port)
    finally:
        if ui.poll() is None:
            ui.kill()
            ui.wait()
