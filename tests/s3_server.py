"""A local S3 (moto in server mode) for the tests of `--storage s3://...`.

`S3Server` runs `python -m moto.server` as a subprocess on 127.0.0.1 (a free port), waits until it
answers, and creates one bucket. Every client in the test reaches it through the environment
(`server.env()`): pyarrow's `FileSystem.from_uri("s3://...")` and boto3 read AWS_ENDPOINT_URL,
MLflow's artifact repository reads MLFLOW_S3_ENDPOINT_URL. `pause()`/`resume()` stop and continue
the process (SIGSTOP/SIGCONT): an outage that keeps moto's in-memory objects.

Tests import the fixture the way they import hub_fixtures (tests/ is on sys.path, no package):

    from s3_server import s3_server  # noqa: F401
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

HOST = "127.0.0.1"
# Variables that would point a client at a real account instead of the fake one.
_REAL_AWS_VARS = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                  "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class S3Server:
    """moto's S3 on 127.0.0.1:<free port> with one bucket; a context manager that always stops it."""

    def __init__(self, bucket: str = "lnsub-test", start_timeout: float = 60.0):
        self.bucket = bucket
        self.start_timeout = start_timeout
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.paused = False
        self._logdir = tempfile.TemporaryDirectory(prefix="moto-")
        self.log_path = Path(self._logdir.name) / "moto.log"

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        if self.port is None:
            raise RuntimeError("S3Server not started")
        return f"http://{HOST}:{self.port}"

    def start(self) -> S3Server:
        last_error: Exception | None = None
        for _ in range(3):  # a free port can be taken between probing and binding it
            try:
                self._spawn()
                self._wait_until_up()
                break
            except Exception as exc:  # noqa: BLE001 (retried, then re-raised)
                last_error = exc
                self._kill()
        else:
            raise RuntimeError(f"moto server did not start: {last_error}\n{self.log()}") from last_error
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def _spawn(self) -> None:
        self.port = _free_port()
        env = {k: v for k, v in os.environ.items() if k not in _REAL_AWS_VARS}
        env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                   AWS_DEFAULT_REGION="us-east-1")
        env.pop("AWS_ENDPOINT_URL", None)
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child holds it; closed below)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True)  # a Ctrl-C in the terminal goes to pytest, which stops it
        finally:
            log.close()

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"moto server did not answer on {self.endpoint} in {self.start_timeout:.0f} s")

    def pause(self) -> None:
        """An outage: the process stops answering (connections hang), its data stays."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        self._kill()
        self._logdir.cleanup()

    def _kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            os.kill(proc.pid, signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
        except ProcessLookupError:
            pass
        self.paused = False
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> S3Server:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- clients ---------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """What a client process needs to use this server (boto3, pyarrow, MLflow)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def list(self, prefix: str = "") -> list[str]:
        """Every key in the bucket under prefix, sorted."""
        keys: list[str] = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys.extend(o["Key"] for o in page.get("Contents", []))
        return sorted(keys)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


@pytest.fixture
def s3_server(monkeypatch):
    """A started S3Server whose env() is applied to this process (and inherited by its children)."""
    for name in _REAL_AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    with S3Server() as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        yield server
