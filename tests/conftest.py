"""Shared fixtures: an offline Hub, a project-local cache, the testbed and the tiny model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Generated artefacts are keyed by a hash of their configuration, so a cache shared
# across test runs can only ever return the same thing the test would build.
os.environ.setdefault("LNSUB_CACHE", str(ROOT / ".cache" / "lnsub-test"))


SMOKE_FIXTURES = {"smoke_sweep", "analysed"}


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`--dist loadgroup`, pyproject's addopts), keep each file on one worker, so its
    module fixtures run once, and every test of the README's smoke sweep on one worker, so it runs once."""
    path = lambda item: item.nodeid.split("::")[0]  # noqa: E731
    smoke = {path(i) for i in items if SMOKE_FIXTURES & set(getattr(i, "fixturenames", ()))}
    for item in items:
        item.add_marker(pytest.mark.xdist_group("smoke" if path(item) in smoke else path(item)))


@pytest.fixture
def fault_plan(tmp_path, monkeypatch):
    """`fault_plan([{unit, level, step, action, marker}, ...])`: the plan every process of this test reads.

    Set before Ray starts, so local workers inherit it (and ray_backend hands it to every node).
    """
    from lnsub.trainables import faults

    path = tmp_path / "faults.json"
    monkeypatch.setenv(faults.ENV, str(path))

    def write(entries: list[dict]) -> Path:
        return faults.write_plan(path, entries)

    return write


def wait_for(predicate, what: str, timeout: float = 600, poll: float = 0.1):
    """Poll until predicate() is truthy (bounded); the bound only turns a hang into a failure."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f} s")


@pytest.fixture(scope="session")
def waiter():
    return wait_for


@pytest.fixture(scope="session")
def testbed_dir() -> Path:
    from lnsub.trainables.testbed.generate import ensure_testbed

    return ensure_testbed()


@pytest.fixture(scope="session")
def tiny_model(testbed_dir) -> Path:
    from lnsub.trainables.testbed.tinybert import ensure_tiny_model

    return ensure_tiny_model()


def lnsub(*args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """The `lnsub` command line in a subprocess, as a user runs it (stdout and stderr together)."""
    return subprocess.run([sys.executable, "-m", "lnsub.orchestrator.cli", *args], cwd=cwd, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory, tiny_model) -> tuple[Path, subprocess.CompletedProcess]:
    """`lnsub sweep --grid smoke` exactly as the README's first command runs it, once per test session."""
    cwd = tmp_path_factory.mktemp("smoke")
    return cwd, lnsub("sweep", "--grid", "smoke", cwd=cwd)


@pytest.fixture(scope="session")
def lnsub_cli():
    """`lnsub(*args, cwd=..., timeout=...)` for tests in any folder (a conftest is not importable by name)."""
    return lnsub


@pytest.fixture(scope="session")
def hub_data(tmp_path_factory) -> Path:
    """Local copies of wikimedia/wikipedia, WikiANN and XNLI in the hub's layout and schema (tests/hub_fixtures.py)."""
    from hub_fixtures import write_hub_fixtures

    return write_hub_fixtures(tmp_path_factory.mktemp("hub-data"))
