"""Every command that reads a sweep: an unknown sweep, a damaged sweep.json, unusable storage or a name that
leaves the storage folder is one line on stderr, exit status 2, and nothing written."""

from __future__ import annotations

import sys

import pytest

from lnsub.orchestrator.cli import main
from lnsub.trainables.spec import make_spec
from lnsub.analysis.sweeps import Resources, PlannedCell, SweepState, save_state

READERS = [("status",), ("sync",), ("analyze",), ("similarity",), ("report",), ("transfer", "--level", "1"),
           ("sweep", "--resume")]


def run(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["lnsub", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def tree(folder) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def a_sweep(storage) -> None:
    spec = make_spec("ner", "syn-en", steps=4, levels=1, prune_fraction=0.2)
    save_state(storage, SweepState(name="s", grid_name="g", grid_source="g.yaml", grid={},
                                   cells=[PlannedCell(spec, 0.1)], skipped=[],
                                   tracking_uri=f"sqlite:///{storage / 'mlflow.db'}",
                                   resources=Resources()))


def bad_storages(tmp_path):
    """(case, storage, name, words the one line must hold)."""
    damaged = tmp_path / "damaged"
    a_sweep(damaged)
    (damaged / "sweeps/s/sweep.json").write_text('{"name": "s", "cells": [')
    wrong = tmp_path / "wrong"
    a_sweep(wrong)
    (wrong / "sweeps/s/sweep.json").write_text('{"name": "s"}')
    known = tmp_path / "known"
    a_sweep(known)
    afile = tmp_path / "a-file"
    afile.write_text("not a folder")
    return [("unknown sweep", known, "other", "no sweep named 'other'"),
            ("damaged json", damaged, "s", "damaged sweep file"),
            ("wrong shape", wrong, "s", "not a sweep file"),
            ("storage is a file", afile, "s", "is a file, not a folder"),
            ("name leaves storage", known, "../known", "'../known': use letters"),
            ("absolute name", known, "/tmp/x", "'/tmp/x': use letters")]


@pytest.mark.parametrize("command", READERS, ids=lambda c: c[0])
def test_sweep_readers_refuse_bad_input_in_one_line(tmp_path, monkeypatch, capsys, command):
    cases = bad_storages(tmp_path)
    before = tree(tmp_path)
    for case, storage, name, words in cases:
        code, out, err = run(monkeypatch, capsys, *command, "--name", name, "--storage", str(storage))
        lines = err.strip().splitlines()
        assert code == 2, (case, out, err)
        assert len(lines) == 1 and lines[0].startswith("lnsub: error:") and words in lines[0], (case, err)
        assert "Traceback" not in out + err
    assert tree(tmp_path) == before  # nothing written anywhere


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing answers there


def test_sync_with_the_tracking_server_down_is_one_line(tmp_path, monkeypatch, capsys):
    a_sweep(tmp_path)
    code, out, err = run(monkeypatch, capsys, "sync", "--name", "s", "--storage", str(tmp_path), "--tracking-uri",
                         f"http://127.0.0.1:{_free_port()}")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "did not take the sync" in lines[0], err
    assert "Traceback" not in out + err


def test_similarity_checks_its_level_before_building_anything(tmp_path, monkeypatch, capsys):
    a_sweep(tmp_path / "runs")
    monkeypatch.setenv("LNSUB_CACHE", str(tmp_path / "cache"))
    before = tree(tmp_path)
    for level in ("-3", "0", "2"):
        code, out, err = run(monkeypatch, capsys, "similarity", "--name", "s", "--storage", str(tmp_path / "runs"),
                             "--level", level)
        assert code == 2 and f"--level {level}: the sweep's sub-networks are levels 1..1" in err, err
    assert tree(tmp_path) == before  # no testbed, no model, no analysis folder


def test_a_password_in_the_tracking_uri_is_never_stored_nor_printed(tmp_path, monkeypatch, capsys):
    from lnsub.orchestrator.sweep import open_or_plan
    from lnsub.analysis.sweeps import load_state

    secret = f"http://alice:s3cr3t@127.0.0.1:{_free_port()}"
    state = open_or_plan(tmp_path, "smoke", "s", False, secret, {})
    stored = (tmp_path / "sweeps/s/sweep.json").read_text()
    assert "s3cr3t" not in stored and "alice:***@127.0.0.1" in stored
    assert load_state(tmp_path, "s").tracking(secret) == secret  # the one given now is used, in this process
    code, out, err = run(monkeypatch, capsys, "status", "--name", "s", "--storage", str(tmp_path))
    assert code == 0 and "alice:***@" in out and "s3cr3t" not in out + err
    code, out, err = run(monkeypatch, capsys, "sync", "--name", "s", "--storage", str(tmp_path))
    assert code == 2 and "password is never stored: give --tracking-uri again" in err, err
    assert state.name == "s"
