"""The suite runs in two pytest-xdist workers (pyproject's addopts). tests/conftest.py gives every test a group, its
file's or, for the smoke sweep's readers, "smoke", so that a module's fixtures and the session's smoke sweep are each
built once; xdist keeps a group in one worker by suffixing the node ids with it. Lose that (pytest 9's node ids drop
the suffix) and each worker builds its own smoke sweep and analyses: these tests fail instead."""

import pytest


def _in_worker(request) -> bool:
    return hasattr(request.config, "workerinput")


def test_a_test_runs_in_the_group_of_its_file(request):
    if not _in_worker(request):
        pytest.skip("one process (-n 0): nothing to group")
    assert request.node.nodeid.endswith("::test_a_test_runs_in_the_group_of_its_file@tests/test_workers.py")


def test_the_smoke_sweeps_readers_share_one_group(request):
    if not _in_worker(request):
        pytest.skip("one process (-n 0): nothing to group")
    readers = [i for i in request.session.items if "smoke_sweep" in i.fixturenames]
    if not readers:
        pytest.skip("no reader of the smoke sweep selected")
    assert all(i.nodeid.endswith("@smoke") for i in readers), [i.nodeid for i in readers][:3]
    # ... and they come first, so one worker starts the sweep while the other starts on the slow files
    assert request.session.items[:len(readers)] == readers
