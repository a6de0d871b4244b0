"""`lnsub ui` on the finished smoke sweep, browsed as a user does: headless Chromium and the UI's own endpoints.

Each case is one way of serving a finished sweep (BACKENDS); the checks are the same
for all: the experiment page, rendered by the browser, lists one run per cell, and
every mask downloads through the UI's artifact endpoint byte for byte as storage
holds it. Two cases: the README's local store (SQLite, mask files on disk), and a sweep
on S3 (moto on 127.0.0.1) served by `lnsub ui --storage s3://...`, the tracking server
whose artifacts go to the same bucket.
"""

from __future__ import annotations

import contextlib
import html
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest

from lnsub.orchestrator import tracking
from lnsub.orchestrator.ui import runs_page
from lnsub.trainables.spec import CellSpec
from lnsub.trainables.store import CellStore
from lnsub.analysis.sweeps import load_state

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,2400"]  # tall enough that the runs table renders every row
BY_NAME = urlencode({"orderByKey": "tags.`mlflow.runName`", "orderByAsc": "true"})  # the UI's "Sort: Run Name"


@dataclass
class Served:
    """A finished sweep and how `lnsub ui` is pointed at it; storage's files are what the UI must show."""

    cwd: Path
    storage: Path
    name: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    after_start: object = None  # called with the server's URL once it answers (to log the sweep to it)
    tracking: str | None = None  # the tracking URI, where it is not the one the sweep's plan names
    artifacts: object = None  # () -> the keys of the artifacts in the object store, where there is one
    printed: str = ""  # what `lnsub ui` printed

    @property
    def specs(self) -> list[CellSpec]:
        return load_state(self.storage, self.name).specs

    @property
    def tracking_uri(self) -> str:
        return self.tracking or load_state(self.storage, self.name).tracking_uri


@contextlib.contextmanager
def local_store(smoke_sweep, tmp: Path):
    """The smoke sweep as the README leaves it: SQLite and artifacts under lnsub-runs/, `lnsub ui --name smoke`."""
    cwd, proc = smoke_sweep
    assert proc.returncode == 0, proc.stdout[-3000:]
    storage = cwd / "lnsub-runs"
    yield Served(cwd, storage, "smoke", ["--name", "smoke", "--storage", str(storage)])


@contextlib.contextmanager
def s3_store(smoke_sweep, tmp: Path):
    """The smoke sweep's cells and plan in an S3 bucket; `lnsub ui --storage s3://...` serves runs whose
    artifacts it keeps in that bucket, and `lnsub sync` logs the sweep to it from the bucket."""
    from s3_server import S3Server

    from lnsub.trainables.storage.remote import SCRATCH_ENV

    cwd, proc = smoke_sweep
    assert proc.returncode == 0, proc.stdout[-3000:]
    local = cwd / "lnsub-runs"
    with S3Server() as server:
        client = server.client()
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            rel = path.relative_to(local).as_posix()
            if rel.startswith(("cells/", "sweeps/smoke/")) and "/tune/" not in rel:
                client.upload_file(str(path), server.bucket, f"runs/{rel}")
        storage = f"s3://{server.bucket}/runs"
        env = {**server.env(), SCRATCH_ENV: str(tmp / "scratch")}
        served = Served(tmp, local, "smoke", ["--storage", storage, "--tracking-uri", f"sqlite:///{tmp / 'ui.db'}"],
                        env=env, artifacts=lambda: server.list("runs/mlartifacts/"))

        def log_sweep(url: str) -> None:
            sync = subprocess.run([sys.executable, "-m", "lnsub.orchestrator.cli", "sync", "--name", "smoke",
                                   "--storage", storage, "--tracking-uri", url], cwd=tmp, capture_output=True,
                                  text=True, timeout=600, env={**os.environ, **env, "PYTHONPATH": str(ROOT)})
            assert sync.returncode == 0, (sync.stdout + sync.stderr)[-3000:]
            served.tracking = url

        served.after_start = log_sweep
        yield served


BACKENDS = {"local": local_store, "s3": s3_store}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError):
        return False


def group_members(pgid: int) -> list:
    import psutil

    out = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
    return out


def stop_group(proc: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM the server's process group (lnsub, mlflow, uvicorn), SIGKILL whatever is left after `grace` s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline and group_members(proc.pid):
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@contextlib.contextmanager
def lnsub_ui(served: Served, log: Path, waiter, timeout: float = 300):
    """`lnsub ui ... --port P` in its own process group; yields its URL once it answers, stops the group after."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lnsub.orchestrator.cli", "ui", *served.args,
                                 "--port", str(port)], cwd=served.cwd, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **served.env, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    try:
        waiter(lambda: proc.poll() is not None or answers(f"{url}/health"), "lnsub ui to answer", timeout, 0.5)
        assert proc.poll() is None, log.read_text()[-3000:]
        assert url in log.read_text()  # it told the user where to look
        served.printed = log.read_text()
        yield url
    finally:
        stop_group(proc)
    assert not group_members(proc.pid)


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def served(request, smoke_sweep, tmp_path_factory, waiter):
    if CHROMIUM is None:
        if os.environ.get("LNSUB_REQUIRE_BROWSER"):  # .ci/run could install it: its absence is a failure
            pytest.fail("chromium is missing although .ci/run installs it (LNSUB_REQUIRE_BROWSER is set)")
        pytest.skip("Debian's chromium is not installed here (.ci/run installs it with apt-get)")
    tmp = tmp_path_factory.mktemp(f"ui-{request.param}")
    with BACKENDS[request.param](smoke_sweep, tmp) as sweep, lnsub_ui(sweep, tmp / "lnsub-ui.log", waiter) as url:
        if sweep.after_start:
            sweep.after_start(url)
        yield sweep, url


def render(url: str, profile: Path) -> str:
    """The page's DOM after Chromium ran its scripts (virtual time waits for pending fetches)."""
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=30000",
                          "--dump-dom", url], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    return dom.stdout


def text_of(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom)))


def listed_runs(dom: str, experiment_id: str) -> tuple[int, list[tuple[str, str]]]:
    """(the page's "N matching runs", [(run id, run name)] of the rows the runs table rendered)."""
    found = re.search(r"(\d+) matching runs", text_of(dom))
    assert found, f"the runs page did not render: {text_of(dom)[:1000]}"
    rows = re.findall(rf'href="#/experiments/{experiment_id}/runs/([0-9a-f]{{32}})"[^>]*>\s*<span[^>]*>([^<]*)</span>',
                      dom)
    return int(found.group(1)), [(run_id, html.unescape(name)) for run_id, name in rows]


def cell_runs(served: Served) -> dict[str, object]:
    """Cell id -> its MLflow run, read from the tracking store itself (not through the UI)."""
    runs = tracking.find_cell_runs(served.name, served.tracking_uri)
    assert {cell: len(r) for cell, r in runs.items()} == {s.id: 1 for s in served.specs}
    return {cell: r[0] for cell, r in runs.items()}


def test_experiment_page_lists_one_run_per_cell(served, tmp_path):
    sweep, url = served
    runs = cell_runs(sweep)
    experiment_id = next(iter(runs.values())).info.experiment_id
    client = tracking._client(sweep.tracking_uri)
    everything = {r.info.run_id for r in client.search_runs([experiment_id], max_results=10_000)}
    total, rows = listed_runs(render(f"{url}/#/experiments/{experiment_id}/runs?{BY_NAME}", tmp_path / "p1"),
                              experiment_id)
    # every run of the experiment is a row (sorted by name, cells are not folded under the sweep's run) ...
    assert total == len(everything) and {run_id for run_id, _ in rows} == everything, (total, rows)
    # ... and each cell is exactly one row, named as a person reads it (task/language/seed), linking to its run
    cells = {tracking.run_name(s): s.id for s in sweep.specs}
    named = [(run_id, name) for run_id, name in rows if name in cells]
    assert sorted(name for _, name in named) == sorted(cells)
    assert {cells[name]: run_id for run_id, name in named} == {c: r.info.run_id for c, r in runs.items()}
    # the same reading of an experiment without runs (MLflow's "Default") finds none: the rows above came
    # from the sweep's runs, not from anything every page shows
    total, rows = listed_runs(render(f"{url}/#/experiments/0/runs?{BY_NAME}", tmp_path / "p0"), "0")
    assert total == 0 and rows == []


def test_the_printed_page_shows_the_runs_to_a_browser_that_never_saw_mlflow(served, tmp_path):
    """The URL `lnsub ui` prints, opened in a fresh browser profile (no stored "GenAI / Model training" choice),
    is the sweep's runs table: every cell a row of its own, each analysis folded under the sweep's run."""
    sweep, url = served
    runs = cell_runs(sweep)
    experiment_id = next(iter(runs.values())).info.experiment_id
    folder = tmp_path / "browser-check"
    folder.mkdir()
    (folder / "note.txt").write_text("an analysis run, logged as every analysis logs its files\n")
    analysis = tracking.log_analysis(sweep.name, sweep.storage, sweep.tracking_uri, "browser-check", folder)
    page = runs_page(url, experiment_id)
    if sweep.artifacts is None:  # the README's case, storage on local disk: lnsub ui printed this page
        assert f"open {page} " in sweep.printed, sweep.printed
    client = tracking._client(sweep.tracking_uri)
    everything = client.search_runs([experiment_id], max_results=10_000)
    parent = next(r for r in everything if r.data.tags.get(tracking.TAG_ROLE) == "sweep")
    folded = {r.info.run_id for r in everything if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert analysis in folded
    dom = render(page, tmp_path / "fresh-profile")
    total, rows = listed_runs(dom, experiment_id)
    assert total == len(everything), (total, len(everything))
    shown = {run_id for run_id, _ in rows}
    assert {r.info.run_id for r in runs.values()} <= shown  # every cell is a row, not under an expander
    assert parent.info.run_id in shown and not folded & shown  # analyses sit under the sweep's run
    assert "Model training" in text_of(dom)
    # the same browser without the page's view parameter lands on MLflow's GenAI overview, not on runs:
    # what the parameter is there for
    bare = text_of(render(f"{url}/#/experiments/{experiment_id}", tmp_path / "fresh-profile-2"))
    assert "matching runs" not in bare and "Overview" in bare, bare[:1000]


def test_masks_download_through_the_ui_artifact_endpoint(served, tmp_path):
    sweep, url = served
    runs = cell_runs(sweep)
    spec = sweep.specs[0]
    run = runs[spec.id]
    last = f"masks/level_{spec.levels}"
    # the run's artifact page, rendered: the browser lists the mask the UI would download
    dom = render(f"{url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/artifacts/{last}/mask.npz",
                 tmp_path / "p2")
    assert 'artifact-name="mask.npz"' in dom and f"{last}/mask.npz" in dom, text_of(dom)[:1000]

    def download(run_id: str, path: str) -> bytes:  # the URL the UI's download button builds
        with urllib.request.urlopen(f"{url}/get-artifact?path={quote(path, safe='')}&run_uuid={run_id}",
                                    timeout=60) as r:
            return r.read()

    for s in sweep.specs:  # every level's mask of every cell, byte for byte as storage holds it
        store = CellStore(sweep.storage, s)
        for k in range(s.levels + 1):
            assert download(runs[s.id].info.run_id, f"masks/level_{k}/mask.npz") == \
                (store.level_dir(k) / "mask.npz").read_bytes(), (s.id, k)
    if sweep.artifacts:  # the bytes came from the object store: every mask is an object there
        masks = [k for k in sweep.artifacts() if k.endswith("/mask.npz")]
        assert len(masks) == sum(s.levels + 1 for s in sweep.specs), masks
    with pytest.raises(urllib.error.HTTPError) as missing:  # the endpoint answers for what was logged only
        download(run.info.run_id, f"masks/level_{spec.levels + 1}/mask.npz")
    # MLflow 3's proxy to an S3 artifact store answers a missing object with 500 (boto3's NoSuchKey), not 404
    assert missing.value.code == (500 if sweep.artifacts else 404)
