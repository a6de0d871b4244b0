"""The cluster rehearsal (bench/cluster_rehearsal.py) rehearses the shipped config, and its `ray stop` picks only
one Ray's processes.

The rehearsal itself takes 281 s on 2 idle cores, 496 to 576 s beside other jobs (two fresh installs of lnsub
are most of it): a benchmark, not a test. These check what it rests on.
"""

from __future__ import annotations

import contextlib
import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

import fake_hosts
from cluster_rehearsal import LNSUB_RAY, TEMPLATE, rehearsal_config

SHARED = Path("/srv/shared")


def _validate(cfg: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cfg)))


def test_the_rehearsal_runs_the_shipped_config_with_only_this_machines_addresses_user_key_and_paths():
    shipped = yaml.safe_load(TEMPLATE.read_text())
    cfg = rehearsal_config("10.9.9.2", ["10.9.9.3"], Path("/keys/id"), SHARED)
    _validate(cfg)
    assert cfg["provider"] == {**shipped["provider"], "head_ip": "10.9.9.2", "worker_ips": ["10.9.9.3"]}
    assert cfg["auth"] == {"ssh_user": "root", "ssh_private_key": "/keys/id"}
    mlflow = [c.replace(str(SHARED), "/mnt/lnsub") for c in cfg["head_setup_commands"]]
    assert mlflow == shipped["head_setup_commands"] and str(SHARED) in " ".join(cfg["head_setup_commands"])
    same = set(shipped) - {"provider", "auth", "head_setup_commands"}
    assert same >= {"file_mounts", "setup_commands", "head_start_ray_commands", "worker_start_ray_commands",
                    "rsync_filter"}
    assert {k: cfg[k] for k in same} == {k: shipped[k] for k in same}


def test_the_failure_check_changes_only_which_ray_the_start_commands_run():
    ok = rehearsal_config("10.9.9.2", ["10.9.9.3"], Path("/keys/id"), SHARED)
    bad = rehearsal_config("10.9.9.2", ["10.9.9.3"], Path("/keys/id"), SHARED, ray=Path("/venvs/rayonly/bin/ray"))
    _validate(bad)
    starts = ("head_start_ray_commands", "worker_start_ray_commands")
    assert {k: v for k, v in bad.items() if k not in starts} == {k: v for k, v in ok.items() if k not in starts}
    for key in starts:
        assert [c.replace("/venvs/rayonly/bin/ray start", LNSUB_RAY) for c in bad[key]] == ok[key]
        assert all("/venvs/rayonly/bin/ray start" in c and LNSUB_RAY not in c for c in bad[key])


DAEMON = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # a worker: its session, no session dir
time.sleep(120)
"""


def test_a_hosts_ray_stop_selects_the_sessions_that_name_a_ray_session_dir_and_nothing_else():
    """A `ray start` daemon names its session dir; its workers retitle themselves but keep its session. The
    selection takes both and leaves a process of another session alone (nothing is signalled here)."""
    import psutil

    daemon = subprocess.Popen([sys.executable, "-c", DAEMON, f"--session-dir={fake_hosts.RAY_SESSION_MARK}x"],
                              start_new_session=True)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        deadline = time.time() + 30
        while not psutil.Process(daemon.pid).children() and time.time() < deadline:
            time.sleep(0.1)
        worker = psutil.Process(daemon.pid).children()[0].pid
        picked = fake_hosts.ray_pids(fake_hosts.netns_of(os.getpid()))
        assert daemon.pid in picked and worker in picked
        assert bystander.pid not in picked and os.getpid() not in picked
    finally:
        for p in (daemon, bystander):
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(p.pid).children():
                    child.kill()
            p.kill()
            p.wait()


def test_a_hosts_sshd_refuses_a_ray_stop_called_by_its_path(tmp_path):
    """The shim on PATH catches `ray stop`; a `ray stop` by its path would pass it, so the host's sshd refuses it
    (the command here is `echo`: nothing is stopped either way)."""
    guard = tmp_path / "guard.sh"
    guard.write_text(fake_hosts.GUARD.format(name="head", log=tmp_path / "commands.log"))

    def ssh(command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(guard)], env={**os.environ, "SSH_ORIGINAL_COMMAND": command},
                              capture_output=True, text=True, timeout=30)

    for command in ("~/lnsub/.venv/bin/ray stop", "bash --login -c -i 'source ~/.bashrc && (/opt/x/bin/ray stop -f)'"):
        refused = ssh(command)
        assert refused.returncode == 1 and "refusing" in refused.stderr, refused
    passed = ssh("echo ray stop goes to the shim")
    assert passed.returncode == 0 and passed.stdout == "ray stop goes to the shim\n"
    assert len((tmp_path / "commands.log").read_text().splitlines()) == 3
