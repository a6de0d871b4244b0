"""Shared fixtures: an offline Hub, a project-local cache, the testbed and the tiny model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from prebuild import MODELS

ROOT = Path(__file__).resolve().parents[1]
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Generated artefacts are keyed by a hash of their configuration, so a cache shared
# across test runs can only ever return the same thing the test would build.
os.environ.setdefault("LNSUB_CACHE", str(ROOT / ".cache" / "lnsub-test"))
# Drivers keep private state (their local Ray's record) under XDG_STATE_HOME: the tests keep theirs here.
os.environ.setdefault("XDG_STATE_HOME", str(ROOT / ".cache" / "state"))
# In a pytest-xdist worker (the suite runs in two), torch runs on one thread, here and in every process started
# from here: its default, a thread per core in each worker, spun two workers' threads against each other (the
# quick tests took 183 s in two workers with it, 103 s without).
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _threads in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_threads, "1")
# A private Ray prestarts a worker per CPU for its first driver, in the driver's runtime environment; a test's trials
# carry its fault plan in theirs, so never use them: 36 idle workers, 28 CPU-seconds a suite, counted with /proc.
for _prestart in ("RAY_enable_worker_prestart", "RAY_prestart_worker_first_driver"):
    os.environ.setdefault(_prestart, "0")


# Builds the models the slow tests need (the tiny BERT, and the mT5 end-to-end test's tiny mT5: tests/prebuild.py),
# each in a process of its own with one thread, while the first tests run (in one process the quick tests, which end
# before the tiny BERT is ready, so the mT5 takes the core the waiting tests would leave idle; in two workers, the
# first worker starts them). Each build holds its folder's build lock, so a test that needs a model meanwhile waits
# for it, and if a build process fails the test builds the model itself (tests/test_prebuild.py keeps them working).


def _needs_bert(item) -> bool:
    return "tiny_model" in getattr(item, "fixturenames", ())


def _needs_models(item) -> bool:  # the slow tests without the tiny_model fixture: the mT5 one, the rehearsal
    return item.get_closest_marker("slow") is not None or _needs_bert(item)


def _uses_smoke(item) -> bool:
    return "smoke_sweep" in getattr(item, "fixturenames", ())


def _in_worker(config) -> bool:
    """Whether this process is one of pytest-xdist's workers (the suite runs in two: pyproject's addopts)."""
    return hasattr(config, "workerinput")


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which turns the groups into node ids
def pytest_collection_modifyitems(config, items):
    """In one process: files that need no tiny model first, while the models are built beside them (`_prebuild`,
    and the smoke sweep: `_start_smoke_sweep`); then the slow files that do without the tiny BERT; then the rest.

    In two workers (pytest-xdist): the smoke sweep's readers first, as one unit (`xdist_group`), so one worker runs
    the sweep and its readers while the other starts on the slow files; then the other slow files; the quick files
    last, to even out the two workers' ends. Every other test runs in the worker of its file, so a module's
    fixtures are built once."""
    path = lambda item: item.nodeid.split("::")[0]  # noqa: E731
    heavy = {path(i) for i in items if _needs_models(i)}
    if _in_worker(config):
        items.sort(key=lambda i: 0 if _uses_smoke(i) else 1 if path(i) in heavy else 2)
    else:
        bert = {path(i) for i in items if _needs_bert(i)}
        items.sort(key=lambda i: (path(i) in heavy) + (path(i) in bert))  # stable: each part keeps its order
    for item in items:
        item.add_marker(pytest.mark.xdist_group("smoke" if _uses_smoke(item) else path(item)))


def pytest_collection_finish(session):
    """Once the items are final (after -m and -k): build the models the selected tests need, start the smoke sweep
    (in two workers the first builds the models, and the smoke sweep starts when its first reader asks for it)."""
    items, config = session.items, session.config
    builds = not _in_worker(config) or config.workerinput["workerid"] == "gw0"
    if builds and any(_needs_models(i) for i in items):
        _prebuild(config)
    if not _in_worker(config) and any(_uses_smoke(i) for i in items):
        _start_smoke_sweep(config, one_core=True)


def _prebuild(config) -> None:
    cache = Path(os.environ["LNSUB_CACHE"])
    cache.mkdir(parents=True, exist_ok=True)
    config._lnsub_prebuild = []
    for name in MODELS:
        with open(cache / f"prebuild-{name}.log", "a") as log:
            config._lnsub_prebuild.append(subprocess.Popen(
                [sys.executable, str(ROOT / "tests" / "prebuild.py"), name], stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(ROOT)}))


def _start_smoke_sweep(config, one_core: bool) -> None:
    """The session's smoke sweep (the `smoke_sweep` fixture). In one process it starts at once, beside the quick
    tests, on one core (--max-concurrent 1: the quick tests keep the other), and its readers come last."""
    cwd = config._tmp_path_factory.mktemp("smoke")
    log = open(cwd.parent / "smoke-sweep.log", "w")
    config._lnsub_smoke = (cwd, log, subprocess.Popen(
        [sys.executable, "-m", "lnsub.orchestrator.cli", "sweep", "--grid", "smoke"]
        + (["--max-concurrent", "1"] if one_core else []),
        cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)}))


def pytest_unconfigure(config):
    for proc in getattr(config, "_lnsub_prebuild", []):
        if proc.poll() is None:
            proc.terminate()  # a build it leaves unfinished is never trusted: DONE is written last
            proc.wait(timeout=60)
    if getattr(config, "_lnsub_smoke", None):
        _, log, proc = config._lnsub_smoke
        if proc.poll() is None:  # a session that ended before its readers ran (-x, Ctrl-C): a Ctrl-C, as a user's
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


@pytest.fixture
def fault_plan(tmp_path, monkeypatch):
    """`fault_plan([{unit, level, step, action, marker}, ...])`: the plan every process of this test reads.

    Set before Ray starts, so local workers inherit it (and ray_backend hands it to every node).
    """
    from lnsub.orchestrator import faults

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
def smoke_sweep(request, tiny_model) -> tuple[Path, subprocess.CompletedProcess]:
    """`lnsub sweep --grid smoke`, the sweep step of the README's first command (`lnsub study --grid smoke`), once per
    test session: started at collection (`_start_smoke_sweep`), awaited here; in a worker, started here."""
    if not hasattr(request.config, "_lnsub_smoke"):
        _start_smoke_sweep(request.config, one_core=False)
    cwd, log, proc = request.config._lnsub_smoke
    proc.wait(timeout=1800)
    log.flush()
    said = Path(log.name).read_text(encoding="utf-8")
    return cwd, subprocess.CompletedProcess(proc.args, proc.returncode, stdout=said)


@pytest.fixture(scope="session")
def lnsub_cli():
    """`lnsub(*args, cwd=..., timeout=...)` for tests in any folder (a conftest is not importable by name)."""
    return lnsub


@pytest.fixture(scope="session")
def hub_data(tmp_path_factory) -> Path:
    """Local copies of wikimedia/wikipedia, WikiANN and XNLI in the hub's layout and schema (tests/hub_fixtures.py)."""
    from hub_fixtures import write_hub_fixtures

    return write_hub_fixtures(tmp_path_factory.mktemp("hub-data"))


@pytest.fixture
def ray_token(tmp_path):
    """Token authentication for a Ray cluster a test starts itself (ray.cluster_utils.Cluster), as every node of a
    real cluster is started: RAY_AUTH_MODE=token and a 0600 token file, in this process's environment (which the
    cluster's processes inherit, and lnsub's driver presents). Put back afterwards."""
    from ray._raylet import AuthenticationTokenLoader, Config

    from lnsub.orchestrator.ray_backend import new_token

    keys = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    saved = {k: os.environ.get(k) for k in keys}
    folder = tmp_path / "ray-token"
    folder.mkdir(mode=0o700)
    path = new_token(folder)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=path)
    os.environ.pop("RAY_AUTH_TOKEN", None)
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
    yield path
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
