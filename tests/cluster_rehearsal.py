"""The cluster launcher rehearsed on this machine: `ray up` of docs/cluster-local.yaml on two hosts made here.

The config is generated from docs/cluster-local.yaml with only what must differ here substituted (the hosts'
addresses, the SSH user and key, /mnt/lnsub's path); its setup and start commands run as shipped: a fresh copy of
the repository (file_mounts `~/lnsub: .`) and `bash scripts/install.sh` in each host's own home, Ray started from
that environment with token authentication, the head's MLflow server. Then the README's cluster driver line runs a
2-cell grid through `--address`, `lnsub status` and `lnsub ui` read it, and `ray down` stops the cluster while
another Ray on this machine keeps running. Last, the same config with its start commands pointed at a Ray from an
environment without lnsub: the same driver line is refused in one line, before anything is scheduled.

The hosts are tests/fake_hosts.py's network namespaces. They reach no package index: `pip` on them installs from
a wheelhouse the launcher downloads once (PIP_NO_INDEX, PIP_FIND_LINKS in each host's environment).
Everything the rehearsal starts it stops (Ray, the sshds, MLflow, the namespaces, the bridge), also on failure.
bench/cluster_rehearsal.py runs it and prints each stage's wall time and checks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

import fake_hosts
from fake_hosts import Host, Network, run, wait_until

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "docs" / "cluster-local.yaml"
RAY_VERSION = "2.60.0"
LNSUB_RAY = "~/lnsub/.venv/bin/ray start"  # how the shipped config starts Ray on every host
HEAD_MLFLOW = "http://127.0.0.1:5000"  # the head's MLflow server (the config's head_setup_commands)
UI_PORT = 5001
GRID = {"name": "cluster-rehearsal", "model": "testbed", "languages": ["syn-en", "syn-ar"],
        "tasks": {"ner": {"steps": 10, "lr": 2.0e-3, "batch_size": 32, "max_length": 32, "train_size": 500,
                          "valid_size": 100}},
        "seeds": [0], "levels": 1, "prune_fraction": 0.1,
        # 2 CPUs a cell and 2 a host: one cell on each host at once, so the sweep needs both
        "resources": {"workers_per_cell": 1, "cpus_per_worker": 2, "gpus_per_worker": 0}}
APT_PACKAGES = ("openssh-server", "rsync")


class RehearsalFailed(Exception):
    """A check of the rehearsal did not hold (its message says which)."""


class CannotRehearse(Exception):
    """This machine cannot run the rehearsal (not root, no namespaces, tools missing): why, in one line."""


@dataclass
class Stage:
    name: str
    seconds: float = 0.0
    checks: list[str] = field(default_factory=list)


def check(ok, what: str, detail: str = "") -> None:
    if not ok:
        raise RehearsalFailed(f"{what}{': ' + detail if detail else ''}")


# --- what the machine needs -----------------------------------------------------------------------------------

def visible_to_hosts(path: Path) -> bool:
    """A host sees this machine's folders at the same paths, except /root and /tmp (its own)."""
    path = path.resolve()
    return not any(path == Path(p) or Path(p) in path.parents for p in ("/root", "/tmp"))


def cache_folder() -> Path:
    """Where the ray-only environment and the wheelhouse are kept between runs (the hosts must see it)."""
    base = Path(os.environ["LNSUB_CACHE"]) if os.environ.get("LNSUB_CACHE") else ROOT / ".cache" / "lnsub"
    if not visible_to_hosts(base):
        base = ROOT / ".cache" / "lnsub"
    return base.resolve() / "cluster-rehearsal"


def install_tools() -> None:
    """Debian's openssh-server and rsync, with apt, when they are missing and we are root (as .ci/run does); the
    package may not start a system sshd (a policy-rc.d that refuses, where none is in place)."""
    missing = fake_hosts.missing_tools()
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get") or not set(missing) <= set(APT_PACKAGES):
        raise CannotRehearse(f"missing {', '.join(missing)} (and no root apt-get to install them)")
    policy = Path("/usr/sbin/policy-rc.d")
    added = not policy.exists()
    if added:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *APT_PACKAGES], check=True, env=env, capture_output=True)
    finally:
        if added:
            policy.unlink()


def check_machine() -> str:
    """Root, namespaces, the tools, and the hosts' Python (the system's python3.11, which install.sh finds there)."""
    if os.geteuid() != 0:
        raise CannotRehearse("the rehearsal makes network and mount namespaces: it needs root")
    install_tools()
    probe = run("unshare", "-n", "-m", "true", check=False)
    if probe.returncode != 0:
        raise CannotRehearse(f"cannot make namespaces here: {probe.stderr.strip()[:200]}")
    python = shutil.which("python3.11", path=fake_hosts.SYSTEM_PATH)
    if not python:
        raise CannotRehearse(f"no python3.11 on the hosts' PATH ({fake_hosts.SYSTEM_PATH}): install.sh needs one")
    return python


def ensure_rayonly(cache: Path, python: str) -> Path:
    """A virtual environment with Ray and nothing of lnsub's, made with the hosts' Python (Ray refuses a driver
    whose Python differs in its patch version); its `ray`. Made once."""
    venv = cache / f"rayonly-{RAY_VERSION}"
    if not (venv / "ready").exists():
        shutil.rmtree(venv, ignore_errors=True)
        run(python, "-m", "venv", str(venv))
        run(str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"ray[default]=={RAY_VERSION}")
        (venv / "ready").write_text("")
    return venv / "bin" / "ray"


def ensure_wheelhouse(cache: Path) -> Path:
    """Wheels of everything the config's setup commands install (lnsub's dependencies, sdists such as seqeval built
    here, the build backend, the head's MLflow database driver), made once per pyproject.toml: the hosts reach no
    package index."""
    extra = ("setuptools>=68", "pip", "psycopg2-binary>=2.9")
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + "\0".join(("wheel", *extra)).encode()).hexdigest()
    house = cache / f"wheelhouse-{key[:12]}"
    if not (house / "ready").exists():
        run(sys.executable, "-m", "pip", "wheel", "-q", "-w", str(house), str(ROOT), *extra)
        for wheel in house.glob("lnsub-*.whl"):
            wheel.unlink()  # each host installs lnsub from its own copy of the repository
        (house / "ready").write_text("")
    return house


# --- the config -------------------------------------------------------------------------------------------------

def rehearsal_config(head_ip: str, worker_ips: list[str], key: Path, shared: Path, ray: Path | None = None) -> dict:
    """docs/cluster-local.yaml for the hosts here; with `ray`, every start command runs that `ray` instead of
    lnsub's (the failure check)."""
    text = TEMPLATE.read_text().replace("/mnt/lnsub", str(shared))  # the folder every host sees at the same path
    cfg = yaml.safe_load(text)
    cfg["provider"].update(head_ip=head_ip, worker_ips=worker_ips)
    cfg["auth"] = {"ssh_user": "root", "ssh_private_key": str(key)}
    if ray is not None:
        for name in ("head_start_ray_commands", "worker_start_ray_commands"):
            cfg[name] = [c.replace(LNSUB_RAY, f"{ray} start") for c in cfg[name]]
    return cfg


# --- the rehearsal ----------------------------------------------------------------------------------------------

class Rehearsal:
    """One run in `work` (a new folder the hosts see): `run()` returns its stages; it stops all it started."""

    def __init__(self, work: Path, workers: int = 1, out=print):
        work = work.resolve()
        if not visible_to_hosts(work):
            raise CannotRehearse(f"{work}: the hosts have their own /root and /tmp; give a folder elsewhere")
        self.work, self.workers, self.out = work, workers, out
        self.tag = secrets.token_hex(2)
        self.shared = work / "shared"  # the cluster's shared storage (/mnt/lnsub in the shipped config)
        self.launcher_home, self.launcher_tmp = work / "launcher" / "home", work / "launcher" / "tmp"
        self.logs = work / "logs"
        self.stages: list[Stage] = []
        self.network: Network | None = None
        self.hosts: list[Host] = []
        self.sentinel: subprocess.Popen | None = None
        self.ui: subprocess.Popen | None = None

    @contextlib.contextmanager
    def stage(self, name: str):
        stage = Stage(name)
        self.stages.append(stage)
        started = time.perf_counter()
        try:
            yield stage
        finally:
            stage.seconds = time.perf_counter() - started
            self.out(f"[{name}] {stage.seconds:.1f} s")
            for line in stage.checks:
                self.out(f"    {line}")

    def run(self) -> list[Stage]:
        for d in (self.shared, self.launcher_home, self.launcher_tmp, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        try:
            with self.stage("prerequisites") as s:
                self.prerequisites(s)
            with self.stage("hosts") as s:
                self.make_hosts(s)
            with self.stage("ray up") as s:
                self.ray_up(s, self.config_file("cluster.yaml"))
            with self.stage("sweep") as s:
                self.sweep(s)
            with self.stage("status and ui") as s:
                self.status_and_ui(s)
            with self.stage("ray down") as s:
                self.ray_down(s, self.config_file("cluster.yaml"), check_survivors=True)
            with self.stage("failure check") as s:
                self.failure_check(s)
        finally:
            with self.stage("teardown") as s:
                self.teardown(s)
        return self.stages

    # --- stages ---

    def prerequisites(self, s: Stage) -> None:
        self.python = python = check_machine()
        cache = cache_folder()
        self.rayonly = ensure_rayonly(cache, python)
        self.wheelhouse = ensure_wheelhouse(cache)
        self.model_cache = self.hosts_model_cache()
        s.checks.append(f"hosts' Python {python}; ray-only environment {self.rayonly.parent.parent}; "
                        f"wheelhouse {self.wheelhouse} ({len(list(self.wheelhouse.glob('*.whl')))} wheels)")
        s.checks.append(f"hosts' LNSUB_CACHE {self.model_cache}")

    def hosts_model_cache(self) -> Path:
        """The testbed's model cache the hosts use: this process's LNSUB_CACHE where they see it, else a new one
        (the driver's prepare step then builds the tiny model in it)."""
        mine = Path(os.environ.get("LNSUB_CACHE") or Path.home() / ".cache" / "lnsub")
        return mine.resolve() if visible_to_hosts(mine) else self.work / "model-cache"

    def make_hosts(self, s: Stage) -> None:
        self.start_sentinel()
        self.key = fake_hosts.ssh_key(self.work / "launcher" / "keys")
        self.network = Network(self.tag, fake_hosts.free_subnet())
        self.network.up()
        env = {"LNSUB_CACHE": str(self.model_cache), "HF_HUB_OFFLINE": "1", "PIP_NO_INDEX": "1",
               "PIP_FIND_LINKS": str(self.wheelhouse)}
        for i, name in enumerate(["head"] + [f"worker{k}" for k in range(1, self.workers + 1)]):
            ns, ip = self.network.add_host(i)
            host = Host(name, ns, ip, self.work / "hosts" / name)
            self.hosts.append(host)
            host.prepare(Path(f"{self.key}.pub").read_text(), env)
            host.start_sshd()
            s.checks.append(f"{name}: network namespace {ns}, {ip}, sshd on port 22, home {host.home}")
        head = self.hosts[0]
        mlflow_db = head.home / ".lnsub" / "mlflow_db_uri"  # what the head's admin writes (README, the config)
        mlflow_db.parent.mkdir(mode=0o700, exist_ok=True)
        mlflow_db.write_text("sqlite:////root/.lnsub/mlflow.db")
        mlflow_db.chmod(0o600)
        wait_until(lambda: self.sentinel_pids(), "the other Ray on this machine (the sentinel)", 180)
        s.checks.append(f"another Ray on this machine (the sentinel): pids {self.sentinel_pids()}")

    def config_file(self, name: str, ray: Path | None = None) -> Path:
        head, workers = self.hosts[0], self.hosts[1:]
        cfg = rehearsal_config(head.ip, [w.ip for w in workers], self.key, self.shared, ray)
        path = self.work / name
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def ray_up(self, s: Stage, config: Path, restart_only: bool = False) -> None:
        token = self.lnsub("ray-token", cwd=self.work)
        check(token.returncode == 0, "lnsub ray-token", token.stdout[-300:])
        started = time.perf_counter()
        up = self.ray_cli("up", "-y", "--no-config-cache", *(["--restart-only"] if restart_only else []), str(config),
                          log=self.logs / f"{config.stem}-up.log")
        check(up.returncode == 0, "ray up", self.tail(self.logs / f"{config.stem}-up.log"))
        s.checks.append(f"ray up: exit 0, head up in {time.perf_counter() - started:.1f} s")
        for host in self.hosts[1:]:
            wait_until(lambda: self.joined(host), f"{host.name}'s raylet to join", 900, poll=2)
            s.checks.append(f"{host.name} joined {time.perf_counter() - started:.1f} s after ray up began")
        if not restart_only:
            self.check_installs(s)

    def check_installs(self, s: Stage) -> None:
        token = (self.launcher_home / ".lnsub" / "ray_auth_token").read_text()
        for host in self.hosts:
            venv = host.home / "lnsub" / ".venv"
            check((venv / "bin" / "lnsub").exists(), f"{host.name}: setup_commands made ~/lnsub/.venv")
            cfg = (venv / "pyvenv.cfg").read_text()
            check(f"home = {Path(self.python).parent}\n" in cfg, f"{host.name}: ~/lnsub/.venv made by its Python", cfg)
            extra, missing = copy_differences(host.home / "lnsub")
            check(not extra and not missing, f"{host.name}: ~/lnsub is this checkout without what git ignores",
                  f"copied though ignored: {extra[:5]}; not copied: {missing[:5]}")
            mounted = host.home / ".ray" / "auth_token"
            check(mounted.read_text() == token and mounted.stat().st_mode & 0o777 == 0o600,
                  f"{host.name}: ~/.ray/auth_token is the launcher's token, mode 600")
            raylets = [c for c in map(cmdline, fake_hosts.ray_pids(host.netns_id())) if c and c[0].endswith("/raylet")]
            check(raylets and all(c[0].startswith("/root/lnsub/.venv/") for c in raylets),
                  f"{host.name}: Ray runs from ~/lnsub/.venv", str([c[:1] for c in raylets]))
            ran = [c for c in host.commands() if "install.sh" in c or "ray start" in c]
            s.checks.append(f"{host.name}: ~/lnsub = checkout minus ignored files, fresh ~/lnsub/.venv, token 600, "
                            f"Ray from ~/lnsub/.venv; "
                            f"{len(host.commands())} ssh commands, {len(ran)} of them install.sh or ray start")

    def joined(self, worker: Host) -> bool:
        """Whether the head's GCS (of the session `ray up` started last) has registered the worker's raylet."""
        head = self.hosts[0]
        latest = head.tmp / "ray" / "session_latest"  # a link to /tmp/ray/session_..., the head's own /tmp
        if not latest.is_symlink():
            return False
        log = head.tmp / Path(os.readlink(latest)).relative_to("/tmp") / "logs" / "gcs_server.out"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        return any("Registering new node" in line and f"node_name={worker.ip} " in line for line in lines)

    def driver_line(self, storage: Path) -> str:
        """The README's cluster driver line, run on the head, joining through --address with the token by path."""
        grid = self.shared / "grid.yaml"
        grid.write_text(yaml.safe_dump(GRID, sort_keys=False))
        return (f"cd ~/lnsub && RAY_AUTH_TOKEN_PATH=~/.ray/auth_token .venv/bin/lnsub sweep --grid {grid} "
                f"--address {self.hosts[0].ip}:6379 --storage {storage} --tracking-uri {HEAD_MLFLOW}")

    def sweep(self, s: Stage) -> None:
        watch = TrialWatch(self.hosts)
        with watch:
            out = self.ssh(self.hosts[0], self.driver_line(self.shared / "runs"), timeout=900)
        (self.logs / "sweep.log").write_text(out.stdout)
        check(out.returncode == 0, "the driver line", out.stdout[-1500:])
        statuses = self.statuses(self.shared / "runs")
        check(len(statuses) == 2 and all(st.state == "done" for st in statuses), "both cells done",
              str([(st.spec.id, st.state) for st in statuses]))
        cells = [(st.spec.language, st.state, st.levels_done) for st in statuses]
        s.checks.append(f"driver line: exit 0; cells (language, state, levels done): {cells}")
        busy = watch.hosts_seen()
        check(len(busy) == len(self.hosts), "a trial on every host", f"trials seen on {busy}")
        s.checks.append(f"trials ran on {sorted(busy)}")
        exp = self.mlflow_experiment(HEAD_MLFLOW)
        check(exp.get("experiment"), "the head's MLflow server has the sweep's experiment", str(exp))
        s.checks.append(f"the head's MLflow server ({HEAD_MLFLOW}) holds experiment {exp['experiment']['name']}")

    def status_and_ui(self, s: Stage) -> None:
        storage = self.shared / "runs"
        status = self.ssh(self.hosts[0], f"cd ~/lnsub && .venv/bin/lnsub status --name {GRID['name']} "
                                         f"--storage {storage}", timeout=300)
        check(status.returncode == 0 and status.stdout.count("done") >= 2, "lnsub status", status.stdout[-800:])
        s.checks.append("lnsub status on the head: " + " | ".join(status.stdout.split("\n")[-4:]).strip()[:200])
        refused = self.ssh(self.hosts[0], f"cd ~/lnsub && .venv/bin/lnsub ui --name {GRID['name']} --storage {storage} "
                                          f"--port {UI_PORT}", timeout=300)
        check(refused.returncode == 2 and "is an MLflow server: browse it there" in refused.stdout,
              "lnsub ui --name on a sweep that logs to the head's server: one line", refused.stdout[-800:])
        s.checks.append(f"lnsub ui --name: exit 2: {refused.stdout.strip()[:160]}")
        uri = "$(cat ~/.lnsub/mlflow_db_uri)"  # the head's MLflow database
        self.ui = self.ssh_background(self.hosts[0], f"cd ~/lnsub && exec .venv/bin/lnsub ui --tracking-uri {uri} "
                                                      f"--port {UI_PORT}", self.logs / "ui.log")
        url = f"http://127.0.0.1:{UI_PORT}"
        wait_until(lambda: self.mlflow_experiment(url).get("experiment"), "lnsub ui to answer", 240, poll=2)
        s.checks.append(f"lnsub ui answers on the head's {url} with experiment lnsub/{GRID['name']}")
        self.ui.terminate()  # the ssh client: its pseudo-terminal hangs up, and lnsub ui stops its server on SIGHUP
        self.ui.wait(timeout=60)
        wait_until(lambda: not self.answers(url), "lnsub ui to stop", 60)
        s.checks.append("lnsub ui stopped (hang-up): its port no longer answers")

    def ray_down(self, s: Stage, config: Path, check_survivors: bool = False) -> None:
        head = self.hosts[0]
        others = other_gcs_servers(self.hosts, self.sentinel_pids())
        down = self.ray_cli("down", "-y", str(config), log=self.logs / f"{config.stem}-down.log")
        text = (self.logs / f"{config.stem}-down.log").read_text()
        check(down.returncode == 0, "ray down", text[-800:])
        check("'ray stop' stops only this host's Ray" in text, "ray down's `ray stop` went to the head's shim",
              text[-800:])
        check(not fake_hosts.ray_pids(head.netns_id()), "the head's Ray stopped by ray down")
        s.checks.append("ray down: exit 0; its `ray stop` reached the head's shim; the head's Ray is gone")
        if check_survivors:
            check(self.sentinel_answers(), "the other Ray on this machine still runs tasks after ray down")
            alive = [p for p in others if psutil.pid_exists(p)]
            s.checks.append(f"the sentinel Ray answered a task after ray down; {len(alive)} of {len(others)} other "
                            f"Ray head(s) of this machine alive")
        for host in self.hosts[1:]:  # the local provider's ray down leaves workers running
            left = fake_hosts.stop_ray(host.netns_id())
            s.checks.append(f"{host.name}: ray down left {left} Ray process(es) running; stopped them")

    def failure_check(self, s: Stage) -> None:
        config = self.config_file("cluster-rayonly.yaml", ray=self.rayonly)
        self.ray_up(s, config, restart_only=True)
        storage = self.shared / "runs-rayonly"
        out = self.ssh(self.hosts[0], self.driver_line(storage), timeout=600)
        (self.logs / "sweep-rayonly.log").write_text(out.stdout)
        lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
        check(out.returncode == 2, "the driver line on a Ray without lnsub exits 2", out.stdout[-1500:])
        check(len(lines) == 1 and "lnsub not importable" in lines[0], "one line: lnsub not importable", out.stdout)
        s.checks.append(f"driver line: exit {out.returncode}: {lines[0]}")
        cells = [p for p in (storage / "cells").glob("*/*")] if (storage / "cells").exists() else []
        statuses = self.statuses(storage)
        check(not cells and all(st.state == "pending" for st in statuses), "nothing scheduled",
              f"{cells[:3]} {[(st.spec.id, st.state) for st in statuses]}")
        s.checks.append(f"nothing scheduled: no cell files, {len(statuses)} cells pending")
        self.ray_down(s, config)

    def teardown(self, s: Stage) -> None:
        if self.ui is not None and self.ui.poll() is None:
            self.ui.kill()
        pids = {h.name: h.processes() for h in self.hosts}  # all at once: Ray's daemons take their grace period
        fake_hosts.terminate([p for ps in pids.values() for p in ps])
        s.checks.append("stopped what was left in the hosts' namespaces: " +
                        ", ".join(f"{name} {len(ps)} process(es)" for name, ps in pids.items()))
        if self.network is not None:
            self.network.down([h.netns for h in self.hosts])
        self.stop_sentinel()
        remove_ssh_control_dirs(yaml.safe_load(TEMPLATE.read_text())["cluster_name"])
        left = [h.netns for h in self.hosts if h.netns in run("ip", "netns", "list").stdout]
        links = self.network.links_left() if self.network is not None else []
        s.checks.append(f"namespaces left: {left or 'none'}; interfaces left: {links or 'none'}; sentinel stopped")

    # --- helpers ---

    def launcher_env(self) -> dict[str, str]:
        """The launcher's environment: a private home (the config's ~/.lnsub/ray_auth_token is there) and temp
        dirs (the local provider's state, Ray's config cache), autoscaler v1 (v2 never launches a local worker)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(HOME=str(self.launcher_home), TMPDIR=str(self.launcher_tmp), RAY_TMPDIR=str(self.launcher_tmp),
                   RAY_UP_enable_autoscaler_v2="0", RAY_USAGE_STATS_ENABLED="0",
                   PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
        return env

    def ray_cli(self, *args: str, log: Path) -> subprocess.CompletedProcess:
        with open(log, "w") as f:  # from the repository: the config's `~/lnsub: .` copies this folder
            return subprocess.run([str(Path(sys.executable).parent / "ray"), *args], cwd=ROOT, env=self.launcher_env(),
                                  stdout=f, stderr=subprocess.STDOUT, timeout=1800)

    def lnsub(self, *args: str, cwd: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "lnsub.orchestrator.cli", *args], cwd=cwd, env=self.launcher_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)

    def ssh_args(self, host: Host, tty: bool = False) -> list[str]:
        return ["ssh", *(["-tt"] if tty else []), "-i", str(self.key), "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", f"root@{host.ip}"]

    def ssh(self, host: Host, command: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run([*self.ssh_args(host), f"source ~/.bashrc; {command}"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def ssh_background(self, host: Host, command: str, log: Path) -> subprocess.Popen:
        with open(log, "w") as f:
            return subprocess.Popen([*self.ssh_args(host, tty=True), f"source ~/.bashrc; {command}"],
                                    stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.PIPE)

    def remote_get(self, url: str) -> str:
        code = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=5).read().decode())"
        out = self.ssh(self.hosts[0], f"~/lnsub/.venv/bin/python -c {shell_quote(code)}", timeout=60)
        return out.stdout if out.returncode == 0 else ""

    def mlflow_experiment(self, base: str) -> dict:
        body = self.remote_get(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=lnsub/{GRID['name']}")
        with contextlib.suppress(ValueError):
            return json.loads(body)
        return {}

    def answers(self, base: str) -> bool:
        return bool(self.remote_get(f"{base}/health"))

    def statuses(self, storage: Path):
        from lnsub.orchestrator.sweep import sweep_status

        return sweep_status(GRID["name"], str(storage))[1]

    @staticmethod
    def tail(path: Path, n: int = 2000) -> str:
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    # --- another Ray on this machine: ray down must leave it alone ---

    def start_sentinel(self) -> None:
        """A private Ray of lnsub's own (ray_backend.start) in this machine's network namespace, as another user's
        would be; its temp dir is short, as Ray's socket paths must be (107 bytes)."""
        self.sentinel_dir = Path(tempfile.mkdtemp(prefix="lnsub-rh-"))
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, "HOME": str(self.sentinel_dir),
               "TMPDIR": str(self.sentinel_dir), "XDG_STATE_HOME": str(self.sentinel_dir / "state")}
        with open(self.logs / "sentinel.log", "w") as log:
            self.sentinel = subprocess.Popen([sys.executable, "-c", SENTINEL], env=env, stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, stderr=log, text=True)

    def sentinel_pids(self) -> list[int]:
        if self.sentinel is None:
            return []
        check(self.sentinel.poll() is None, "the sentinel Ray runs", self.tail(self.logs / "sentinel.log", 600))
        return sorted(p.pid for p in psutil.Process(self.sentinel.pid).children(recursive=True)
                      if p.name() in ("gcs_server", "raylet"))

    def sentinel_answers(self) -> bool:
        self.sentinel.stdin.write("ping\n")
        self.sentinel.stdin.flush()
        return self.sentinel.stdout.readline().strip() == "ok"

    def stop_sentinel(self) -> None:
        if self.sentinel is None:
            return
        with contextlib.suppress(OSError):
            self.sentinel.stdin.close()
        try:
            self.sentinel.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.sentinel.kill()
            self.sentinel.wait()
        shutil.rmtree(self.sentinel_dir, ignore_errors=True)


SENTINEL = """
import sys
import ray
from lnsub.orchestrator import ray_backend
ray_backend.start(num_cpus=1)
ping = ray.remote(num_cpus=0)(lambda: "ok")
for _ in sys.stdin:
    print(ray.get(ping.remote(), timeout=120), flush=True)
ray_backend.stop()
"""


def copy_differences(copy: Path) -> tuple[list[str], list[str]]:
    """How a host's copy of this checkout differs from what git tracks or would track (its own .venv, egg-info
    and bytecode aside): (files copied that git ignores, files not copied)."""
    listed = run("git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard").stdout.split("\n")
    wanted = {f for f in listed if f and (ROOT / f).is_file()}
    made_there = (".venv/", "__pycache__/", ".egg-info/")
    there = {p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file() or p.is_symlink()}
    there = {f for f in there if not any(m in f for m in made_there)}
    return sorted(there - wanted), sorted(wanted - there)


def remove_ssh_control_dirs(cluster_name: str) -> None:
    """The launcher's ssh control folders, /tmp/ray_ssh_<user hash>/<cluster hash> (a path Ray fixes), once empty:
    their masters exit 10 s after the last command (ControlPersist)."""
    cluster = hashlib.sha256(cluster_name.encode()).hexdigest()[:10]
    for folder in Path("/tmp").glob(f"ray_ssh_*/{cluster}"):
        with contextlib.suppress(OSError):  # not empty: a master still runs, or another launcher uses it
            wait_until(lambda: not any(folder.iterdir()), "ssh's control masters to exit", 20)
            folder.rmdir()
            folder.parent.rmdir()


def cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []


def shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def other_gcs_servers(hosts: list[Host], sentinel: list[int]) -> list[int]:
    """The GCS servers of every other Ray on this machine (other users' too): `ray down` must leave them alone."""
    ours = {h.netns_id() for h in hosts}
    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "gcs_server"
            and p.pid not in sentinel and fake_hosts.netns_of(p.pid) not in ours]


class TrialWatch:
    """Which hosts run a Tune trial (a `ray::ImplicitFunc` process) while the sweep runs, polled each second."""

    def __init__(self, hosts: list[Host]):
        self.hosts, self.seen, self.stop = hosts, set(), threading.Event()
        self.netns = {h.netns_id(): h.name for h in hosts}

    def __enter__(self):
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=10)

    def poll(self) -> None:
        while not self.stop.wait(1.0):
            for p in psutil.process_iter(["cmdline"]):
                if p.info["cmdline"] and p.info["cmdline"][0].startswith("ray::ImplicitFunc"):
                    name = self.netns.get(fake_hosts.netns_of(p.pid))
                    if name:
                        self.seen.add(name)

    def hosts_seen(self) -> set[str]:
        return set(self.seen)
