"""Nobody without the sweep's token runs code on the Ray lnsub starts.

A private local Ray listens on every interface of the machine (Ray cannot be held to loopback), so token
authentication is what keeps other users of the host, and anyone who reaches it, out. An outsider process that
reaches the GCS port without the token is refused (and says why: the port answered); the same process with the
token runs a task (the control).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lnsub.orchestrator import jobs, ray_backend

pytestmark = pytest.mark.slow

PROBE = "import ray; ray.init(address={address!r}); print('ran', ray.get(ray.remote(lambda: 41 + 1).remote()))"


def _client(address: str, home: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    return subprocess.run([sys.executable, "-c", PROBE.format(address=address)], capture_output=True, text=True,
                          timeout=180, env={**clean, "HOME": str(home), **env})


def test_an_outsider_cannot_run_code_on_a_private_instance(tmp_path, monkeypatch):
    import ray

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    before = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
    with jobs.ray_instance(tmp_path / "session.json"):
        port = ray.get_runtime_context().gcs_address.rsplit(":", 1)[1]
        token = os.environ["RAY_AUTH_TOKEN_PATH"]
        assert os.environ["RAY_AUTH_MODE"] == "token" and Path(token).stat().st_mode & 0o777 == 0o600
        address = f"127.0.0.1:{port}"
        # refused at every try: two tries say so as well as Ray's default twenty (a second each)
        outsider = _client(address, tmp_path, RAY_NUM_REDIS_GET_RETRIES="2")
        assert outsider.returncode != 0 and "ran 42" not in outsider.stdout
        assert "Authentication token is missing or incorrect" in outsider.stderr, outsider.stderr[-2000:]  # reached it
        insider = _client(address, tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token)
        assert "ran 42" in insider.stdout, insider.stderr[-2000:]
    assert not Path(token).exists()  # the token went with the instance's temp dir ...
    assert {k: os.environ.get(k) for k in before} == before  # ... and nothing points at it any more


def test_joining_a_cluster_without_its_token_is_one_line(tmp_path, monkeypatch):
    from lnsub.trainables.errors import LnsubError

    for key in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token either
    with pytest.raises(LnsubError, match="joins a Ray cluster only with its token; set RAY_AUTH_TOKEN_PATH"):
        ray_backend.start(address="127.0.0.1:6379")
