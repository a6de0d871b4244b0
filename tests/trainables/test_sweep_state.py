"""The stored sweep: a typed, versioned plan; running told from interrupted; clear errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from lnsub.trainables.errors import LnsubError
from lnsub.trainables.spec import make_spec
from lnsub.trainables.store import CellStore
from lnsub.analysis.sweeps import (Resources, VERSION, PlannedCell, SweepState, cell_statuses, check_name, load_state,
                                          save_state, state_path)

SCHEDULE = {"steps": 4, "levels": 1, "prune_fraction": 0.2}


def a_state(name: str = "s") -> SweepState:
    specs = [make_spec("ner", "syn-en", **SCHEDULE), make_spec("xnli", "syn-fr", **SCHEDULE)]
    return SweepState(name=name, grid_name="g", grid_source="g.yaml", grid={"levels": 1},
                      cells=[PlannedCell(s, 0.5) for s in specs], skipped=[], tracking_uri="sqlite:///x.db",
                      resources=Resources())


def test_round_trip_keeps_every_field_and_the_version(tmp_path):
    state = a_state()
    save_state(tmp_path, state)
    raw = json.loads(state_path(tmp_path, "s").read_text())
    assert raw["version"] == VERSION and [c["id"] for c in raw["cells"]] == [c.id for c in state.cells]
    back = load_state(tmp_path, "s")
    assert back == state
    assert [s.id for s in back.specs] == [c.id for c in state.cells]


def test_a_version_1_file_without_a_version_key_still_reads(tmp_path):
    save_state(tmp_path, a_state())
    path = state_path(tmp_path, "s")
    raw = json.loads(path.read_text())
    del raw["version"]
    path.write_text(json.dumps(raw))
    assert load_state(tmp_path, "s").cells == a_state().cells


@pytest.mark.parametrize("damage, words", [
    (lambda raw: "{not json", "damaged sweep file"),
    (lambda raw: json.dumps({**raw, "version": VERSION + 1}), "newer lnsub"),
    (lambda raw: json.dumps({k: v for k, v in raw.items() if k != "cells"}), "not a sweep file"),
    (lambda raw: json.dumps({**raw, "cells": [{**raw["cells"][0], "id": "ner-syn-en-0000000000000000"}]}),
     "whose id is"),
    (lambda raw: json.dumps([1, 2]), "not a JSON object"),
    (lambda raw: "\udcff", "damaged sweep file"),
])
def test_damaged_sweep_files_are_one_clear_error(tmp_path, damage, words):
    save_state(tmp_path, a_state())
    path = state_path(tmp_path, "s")
    text = damage(json.loads(path.read_text()))
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(LnsubError, match=words):
        load_state(tmp_path, "s")


def test_unknown_sweep_and_missing_storage(tmp_path):
    with pytest.raises(LnsubError, match="no sweep named 'nope'"):
        load_state(tmp_path, "nope")
    with pytest.raises(LnsubError, match="does not exist"):
        load_state(tmp_path / "absent", "s")


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", "..", ".hidden", "", "a" * 101, "x..y"])
def test_names_cannot_leave_the_storage_folder(name):
    with pytest.raises(LnsubError, match="sweep name"):
        check_name(name)


def test_status_tells_running_from_interrupted(tmp_path):
    state = a_state()
    save_state(tmp_path, state)
    CellStore(tmp_path, state.specs[0]).write_spec()  # a cell that began and did not finish
    assert [s.state for s in cell_statuses(tmp_path, state)] == ["interrupted", "pending"]  # no driver
    assert [s.state for s in cell_statuses(tmp_path, state, driver_alive=True)] == ["running", "pending"]
