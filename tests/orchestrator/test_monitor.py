"""The sweep's monitor outlives any failure of a read, a render or a sync, and says what failed, once."""

from __future__ import annotations

import logging

from lnsub.orchestrator import sweep as sweep_module
from lnsub.orchestrator.sweep import Monitor
from lnsub.trainables.spec import make_spec
from lnsub.analysis.sweeps import Resources, PlannedCell, SweepState, save_state


def a_monitor(tmp_path, render) -> Monitor:
    spec = make_spec("ner", "syn-en", steps=4, levels=1, prune_fraction=0.2)
    state = SweepState(name="m", grid_name="g", grid_source="g.yaml", grid={}, cells=[PlannedCell(spec, 0.1)],
                       skipped=[], tracking_uri="http://127.0.0.1:9", resources=Resources())
    save_state(tmp_path, state)
    return Monitor(tmp_path, state, state.tracking_uri, render)


def test_every_failure_is_reported_once_with_its_type_and_the_monitor_goes_on(tmp_path, monkeypatch, caplog):
    calls = {"render": 0, "sync": 0}

    def render(statuses, estimate):
        calls["render"] += 1
        if calls["render"] <= 2:
            raise PermissionError(13, "Permission denied", "cells/x/level_0/DONE")

    def broken_sync(*args, **kwargs):
        calls["sync"] += 1
        raise KeyError("cells")  # a bug in sync, not an unreachable server

    monkeypatch.setattr(sweep_module.tracking, "sync", broken_sync)
    monitor = a_monitor(tmp_path, render)
    with caplog.at_level(logging.WARNING, logger="lnsub.orchestrator.sweep"):
        for _ in range(4):
            monitor.tick()
    assert calls == {"render": 4, "sync": 4}  # every tick tried again
    messages = [r.getMessage() for r in caplog.records]
    progress = [m for m in messages if m.startswith("reading progress failed")]
    sync = [m for m in messages if m.startswith("MLflow sync") and "failed" in m]
    assert len(progress) == 1 and "PermissionError" in progress[0]  # once, with its type
    assert len(sync) == 1 and "KeyError" in sync[0] and "unreachable" not in sync[0]
    assert not monitor.synced
