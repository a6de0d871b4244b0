"""Before the first trial on a cluster someone else started, the driver asks every node what it runs lnsub with,
and refuses, in one line naming the node and the fix, a node that does not run it as the driver does."""

from __future__ import annotations

import pytest

from lnsub.orchestrator import jobs, ray_backend
from lnsub.trainables.errors import LnsubError

MINE = {"python": "3.11.7", "ray": "2.60.0", "lnsub": "0.1.0", "schema": 4, "host": "driver"}


def test_a_node_that_runs_lnsub_as_the_driver_does_passes():
    jobs.check_cluster({"10.0.1.6": dict(MINE, python="3.11.9"), "10.0.1.7": dict(MINE)}, MINE)


@pytest.mark.parametrize("node, words", [
    ({"python": "3.11.7", "ray": "2.60.0", "error": "ModuleNotFoundError: No module named 'lnsub'"},
     "node 10.0.1.7: lnsub not importable (ModuleNotFoundError: No module named 'lnsub'); start Ray from lnsub's "
     "environment"),
    (dict(MINE, ray="2.59.0"), "node 10.0.1.7: Ray 2.59.0, this driver 2.60.0"),
    (dict(MINE, python="3.12.1"), "node 10.0.1.7: Python 3.12, this driver 3.11"),
    (dict(MINE, lnsub="0.0.9"), "node 10.0.1.7: lnsub 0.0.9, this driver 0.1.0"),
    (dict(MINE, schema=3), "node 10.0.1.7: spec schema 3, this driver 4")])
def test_a_node_that_differs_is_named_with_the_fix(node, words):
    with pytest.raises(LnsubError) as e:
        jobs.check_cluster({"10.0.1.6": dict(MINE), "10.0.1.7": node}, MINE)
    assert words in str(e.value) and 'README "On a cluster"' in str(e.value)


@pytest.mark.slow
def test_the_probe_runs_on_every_node_of_a_real_instance(tmp_path, monkeypatch):
    import ray

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    with jobs.ray_instance(tmp_path / "session.json"):
        answers = ray_backend.probe_nodes(timeout=120)
        assert len(answers) == len([n for n in ray.nodes() if n["Alive"]]) == 1
        (answer,) = answers.values()
        mine = ray_backend.node_report()
        assert {k: answer[k] for k in ("python", "ray", "lnsub", "schema")} == \
            {k: mine[k] for k in ("python", "ray", "lnsub", "schema")}
        jobs.check_cluster(answers, mine)
