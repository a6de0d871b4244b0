"""Every bad input to `plan` and `sweep`, through the command line's entry point: exit status 2, one line
naming the problem, no traceback, nothing written, and no Ray started.

The battery calls `main()` in this process (each subprocess would spend seconds importing torch); a few
cases also run as a real subprocess, the way a user meets them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lnsub.orchestrator.cli import main
from lnsub.orchestrator.grid import grid_path


@pytest.fixture
def lnsub_cli(monkeypatch, capsys):
    """`lnsub_cli(*args, cwd=...)` -> (returncode, stdout and stderr together), run in this process."""

    def run(*args: str, cwd: Path, timeout: float = 0) -> subprocess.CompletedProcess:
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", ["lnsub", *args])
        with pytest.raises(SystemExit) as exit_info:
            main()
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, exit_info.value.code, captured.out + captured.err)

    return run

SMOKE = grid_path("smoke").read_text()
GOOD = yaml.safe_load(SMOKE)


def _yaml(**changes) -> bytes:
    return yaml.safe_dump({**GOOD, **changes}).encode()


def _replace(old: str, new: str) -> bytes:
    assert old in SMOKE
    return SMOKE.replace(old, new).encode()


# (id, the grid file's bytes, what the one line must say)
BAD_GRIDS = [
    ("utf-16", SMOKE.encode("utf-16"), "not UTF-8 text"),
    ("utf-16-no-bom", SMOKE.encode("utf-16-le"), "a binary file"),
    ("binary", bytes(range(256)) * 8, "not UTF-8 text"),
    ("binary-valid-utf8", b"\x00\x01\x02model: testbed\n", "a binary file"),
    ("empty", b"", "the grid is empty"),
    ("only-comments", b"# nothing here\n\n", "the grid is empty"),
    ("huge", b"# " + b"x" * (2 << 20) + b"\n", "is not a grid"),
    ("malformed-yaml", b"languages: [syn-en\ntasks: {", "malformed YAML"),
    ("list", b"- model\n- testbed\n", "must be a YAML mapping, got list"),
    ("scalar-string", b"smoke\n", "must be a YAML mapping, got str"),
    ("scalar-number", b"42\n", "must be a YAML mapping, got int"),
    ("deep-nesting", b"[" * 5000 + b"]" * 5000, "YAML nested too deeply"),
    ("tasks-as-list", _yaml(tasks=["ner", "xnli"]), "tasks: must be dict, got list"),
    ("tasks-null", _yaml(tasks=None), "tasks: must be dict, got null"),
    ("task-overrides-as-list", _yaml(tasks={"ner": [1, 2]}), "tasks.ner: must be dict, got list"),
    ("languages-as-mapping", _yaml(languages={"syn-en": 1}), "languages: must be list, got dict"),
    ("seeds-as-scalar", _yaml(seeds=0), "seeds: must be list, got int"),
    ("resources-as-list", _yaml(resources=[1]), "resources: must be dict, got list"),
    ("cost-as-list", _yaml(cost_hours=[1]), "cost_hours: must be dict, got list"),
    ("non-string-key", SMOKE.encode() + b"1: 2\n", "1: unknown field"),
    ("model-as-number", _yaml(model=3), "model: must be str, got int"),
    ("nan-prune-fraction", _replace("prune_fraction: 0.1", "prune_fraction: .nan"),
     "prune_fraction: must be a finite number, got nan"),
    ("nan-lr", _replace("lr: 1.0e-3, batch_size: 32, max_length: 64", "lr: .nan, batch_size: 32, max_length: 64"),
     "tasks.mlm.lr: must be a finite number, got nan"),
    ("inf-lr", _replace("lr: 6.0e-3, batch_size: 32, max_length: 32", "lr: .inf, batch_size: 32, max_length: 32"),
     "tasks.ner.lr: must be a finite number, got inf"),
    ("inf-levels", _replace("levels: 3", "levels: .inf"), "levels: must be int, got float inf"),
    ("nan-steps", _replace("steps: 80, lr: 2.0e-3, batch_size: 32, max_length: 48",
                           "steps: .nan, lr: 2.0e-3, batch_size: 32, max_length: 48"), "tasks.xnli.steps: must be int"),
    ("nan-cost", _replace("ner: 0.003", "ner: .nan"), "cost_hours.ner: must be a finite number"),
    ("inf-cost", _replace("ner: 0.003", "ner: .inf"), "cost_hours.ner: must be a finite number"),
    ("nan-cpus", _replace("cpus_per_worker: 1", "cpus_per_worker: .nan"),
     "resources.cpus_per_worker: must be a finite number"),
    ("negative-inf-gpus", _replace("gpus_per_worker: 0", "gpus_per_worker: -.inf"),
     "resources.gpus_per_worker: must be a finite number"),
    ("fractional-steps", _replace("steps: 20, lr: 6.0e-3, batch_size: 32, max_length: 32",
                                  "steps: 2.5, lr: 6.0e-3, batch_size: 32, max_length: 32"),
     "tasks.ner.steps: must be int"),
    ("bool-levels", _replace("levels: 3", "levels: true"), "levels: must be int, got bool True"),
    ("text-number", _replace("lr: 6.0e-3, batch_size: 32, max_length: 32", "lr: 6e-3, batch_size: 32, max_length: 32"),
     "tasks.ner.lr: must be float, got str '6e-3'"),
    ("levels-x-fraction-is-1", _yaml(levels=10, prune_fraction=0.1), "levels: levels x prune_fraction"),
    ("levels-x-fraction-is-1-again", _yaml(levels=5, prune_fraction=0.2), "levels: levels x prune_fraction"),
    ("levels-x-fraction-above-1", _yaml(levels=3, prune_fraction=0.4), "levels: levels x prune_fraction"),
    ("huge-levels", _replace("levels: 3", "levels: " + "9" * 400), "levels: levels x prune_fraction"),
    ("name-parent", _yaml(name="../x"), "name '../x'"),
    ("name-absolute", _yaml(name="/abs"), "name '/abs'"),
    ("name-separator", _yaml(name="a/b"), "name 'a/b'"),
    ("name-dots", _yaml(name="a..b"), "name 'a..b'"),
    ("name-backslash", _yaml(name="a\\b"), "name 'a\\\\b'"),
    ("name-newline", _yaml(name="x\n"), "name 'x\\n'"),
    ("name-number", _yaml(name=7), "name 7"),
    # limits: what a grid may expand to and ask of a cluster
    ("alias-bomb", SMOKE.encode() + b"description:\n" + b"".join(
        b"  - &a%d [%s]\n" % (i, b", ".join([b"*a%d" % (i - 1) if i else b"lol"] * 9)) for i in range(7)),
     "expands to more than 20,000 YAML values"),
    ("seed-beyond-32-bits", _yaml(seeds=[4294967296]), "seeds[0]: must lie in [0, 2**32), got 4294967296"),
    ("too-many-seeds", _yaml(seeds=list(range(101))), "seeds: 101 seeds; at most 100"),
    ("huge-cpus", _replace("cpus_per_worker: 1", "cpus_per_worker: 100000"),
     "resources.cpus_per_worker: at most 256"),
    ("huge-workers", _yaml(resources={"workers_per_cell": 5000}), "resources.workers_per_cell: at most 1024"),
    ("long-description", _yaml(description="x" * 20_000), "a value of 20,000 characters"),
]


def _check(result, message: str, storage: Path) -> None:
    out = result.stdout
    lines = out.strip().splitlines()
    assert result.returncode == 2, out
    assert "Traceback" not in out, out
    assert len(lines) == 1 and lines[0].startswith("lnsub: error: ") and len(lines[0]) > len("lnsub: error: "), out
    assert message in lines[0], lines[0]
    assert not storage.exists() or not any(storage.iterdir()), f"{storage} was written to"


@pytest.fixture(params=["plan", "sweep"])
def command(request, tmp_path) -> list[str]:
    return ["sweep", "--storage", str(tmp_path / "runs")] if request.param == "sweep" else ["plan"]


@pytest.mark.parametrize("content,message", [g[1:] for g in BAD_GRIDS], ids=[g[0] for g in BAD_GRIDS])
def test_bad_grid_file(lnsub_cli, tmp_path, command, content, message):
    path = tmp_path / "grid.yaml"
    path.write_bytes(content)
    result = lnsub_cli(*command, "--grid", str(path), cwd=tmp_path, timeout=120)
    _check(result, message, tmp_path / "runs")
    assert str(path) in result.stdout


def test_missing_file_and_directory(lnsub_cli, tmp_path, command):
    result = lnsub_cli(*command, "--grid", str(tmp_path / "missing.yaml"), cwd=tmp_path, timeout=120)
    _check(result, "neither a shipped grid", tmp_path / "runs")
    (tmp_path / "folder").mkdir()
    result = lnsub_cli(*command, "--grid", str(tmp_path / "folder"), cwd=tmp_path, timeout=120)
    _check(result, "is a directory", tmp_path / "runs")


BAD_NAMES = ["../x", "/abs", "a/b", "..", ".", "a..b", "x/../y", "a\\b", ".hidden", "-dash", "", "x\n", "a" * 101,
             "sp ace"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=[repr(n) for n in BAD_NAMES])
def test_sweep_name_cannot_leave_storage(lnsub_cli, tmp_path, name):
    storage = tmp_path / "runs"
    result = lnsub_cli("sweep", "--grid", "smoke", "--name", name, "--storage", str(storage), cwd=tmp_path,
                       timeout=120)
    _check(result, f"--name {name!r}", storage)
    assert not (tmp_path / "x").exists() and not Path("/abs").exists()


def test_grid_named_by_an_unusable_file_name(lnsub_cli, tmp_path, command):
    path = tmp_path / "my grid.yaml"
    path.write_text(SMOKE.replace("name: smoke\n", ""))
    _check(lnsub_cli(*command, "--grid", str(path), cwd=tmp_path, timeout=120), "name (from the file name",
           tmp_path / "runs")


BAD_OPTIONS = [(["--workers-per-cell", "abc"], "Invalid value for '--workers-per-cell'"),
               (["--gpus-per-worker", "nan"], "--gpus-per-worker must lie in [0, 16], got nan"),
               (["--gpus-per-worker", "1e9"], "--gpus-per-worker must lie in [0, 16], got 1000000000.0"),
               (["--bogus"], "No such option: --bogus")]


@pytest.mark.parametrize("options,message", BAD_OPTIONS, ids=[m for _, m in BAD_OPTIONS])
def test_bad_options_are_one_line(lnsub_cli, tmp_path, command, options, message):
    _check(lnsub_cli(*command, "--grid", "smoke", *options, cwd=tmp_path, timeout=120), message, tmp_path / "runs")


def test_a_sweep_that_cannot_start_on_this_machine_is_refused_before_anything_is_written(lnsub_cli, tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_bytes(_replace("cpus_per_worker: 1", "cpus_per_worker: 200"))  # allowed, but no laptop has it
    _check(lnsub_cli("sweep", "--grid", str(path), "--storage", str(tmp_path / "runs"), cwd=tmp_path),
           "a cell asks for 200 CPUs", tmp_path / "runs")


@pytest.mark.parametrize("options,message", [
    (["--gpus", "100000000000000"], "--devices must lie in [1, 100,000]"),
    (["--gpus", "0"], "--devices must lie in [1, 100,000]"),
    (["--gpus", "8", "--max-concurrent", "1000000"], "--max-concurrent must lie in [1, 100,000]")])
def test_plan_bounds_what_it_simulates(lnsub_cli, tmp_path, options, message):
    _check(lnsub_cli("plan", "--grid", "smoke", *options, cwd=tmp_path), message, tmp_path / "runs")


@pytest.mark.parametrize("args,message", [
    (["ui", "--port", "99999"], "--port 99999: a port lies in 1..65535"),
    (["status", "--name", "s", "--storage", ""], "--storage is empty"),
    (["sweep", "--grid", "smoke", "--storage", ""], "--storage is empty")])
def test_more_bad_options_are_one_line(lnsub_cli, tmp_path, args, message):
    _check(lnsub_cli(*args, cwd=tmp_path), message, tmp_path / "runs")


def test_a_port_in_use_is_one_line(lnsub_cli, tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        _check(lnsub_cli("ui", "--port", str(port), cwd=tmp_path), f"127.0.0.1:{port} is in use", tmp_path / "runs")


def test_lnsub_ui_on_a_tracking_server_is_one_line(lnsub_cli, tmp_path):
    """A sweep that logs to a server (a cluster's head) is browsed on that server: MLflow cannot serve a server."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _check(lnsub_cli("ui", "--tracking-uri", "http://127.0.0.1:5000", "--port", str(port), cwd=tmp_path),
           "http://127.0.0.1:5000 is an MLflow server: browse it there", tmp_path / "runs")


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("case", ["utf-16", "binary"])
def test_a_user_meets_a_bad_encoding_as_one_line(tmp_path, case):
    """The two inputs that used to end in a 64-line UnicodeDecodeError, through a real `lnsub` process."""
    content, message = next((c, m) for name, c, m in BAD_GRIDS if name == case)
    path = tmp_path / "grid.yaml"
    path.write_bytes(content)
    result = subprocess.run([sys.executable, "-m", "lnsub.orchestrator.cli", "sweep", "--grid", str(path), "--storage",
                             str(tmp_path / "runs")], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    _check(result, message, tmp_path / "runs")
