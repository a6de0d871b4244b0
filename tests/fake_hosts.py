"""Hosts on this machine for Ray's cluster launcher: each a network namespace on a bridge, with its own sshd on
port 22, its own /root (the host's home) and /tmp, and a `ray` on its PATH whose `ray stop` stops only that host's Ray.

Ray listens on every interface of its host and uses fixed default ports (6379, 8265, 10001, ...): in a namespace
of its own a host runs a cluster config's commands unchanged, and nothing it opens is reachable from, or collides
with, the rest of this shared machine. A mount namespace gives the host its own /root and /tmp: ssh expands `~`
from the passwd entry (/root), not from $HOME, and Ray, pip and Tune keep their state in ~ and /tmp. Processes,
users and every other folder are shared with the machine, so a folder outside /root and /tmp is seen by every
host at the same path (the cluster's shared storage here).

`ray stop` ends every Ray process on the machine (it matches processes by name); Ray's `ray down` runs it on the
head. Each host's `ray` shim turns it into `stop_ray(<this host's network namespace>)` below, and the sshd
refuses a command that calls a `ray stop` by its path.

Needs root, iproute2, util-linux's unshare, OpenSSH's sshd and rsync. Standard library only: a host's `ray` shim
runs this file with the system's python3 (`python3 fake_hosts.py stop-ray`).
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

RAY_SESSION_MARK = "/tmp/ray/session_"  # in the command line of every gcs_server, raylet and Ray daemon
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"  # what sshd gives a session: no user's virtual environment
GRACE_SECONDS = 10.0


def run(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), check=check, text=True, capture_output=True, **kw)


# --- processes by network namespace ---------------------------------------------------------------------------

def netns_of(pid: int | str) -> str | None:
    """The network namespace of a process, as its /proc link names it ('net:[4026532...]'); None if it is gone."""
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def _session_and_cmdline(pid: int) -> tuple[int, str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[3]), cmdline  # after the name: state ppid pgrp session


def _ancestors(pid: int) -> set[int]:
    out = set()
    while pid > 1:
        out.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            break
    return out


def pids_in(netns: str) -> list[int]:
    """Every process in network namespace `netns` (zombies included until their parent reaps them)."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and netns_of(p) == netns]


def ray_pids(netns: str) -> list[int]:
    """The host's Ray: every process of the sessions whose members name a Ray session dir (ray start's daemons;
    its workers and agents retitle themselves `ray::...` but keep the session), in `netns` only, never the caller
    or its ancestors. Another Ray on the machine lives in another network namespace."""
    procs = {pid: info for pid in pids_in(netns) if (info := _session_and_cmdline(pid))}
    sessions = {sid for sid, cmdline in procs.values() if RAY_SESSION_MARK in cmdline}
    mine = _ancestors(os.getpid())
    return sorted(pid for pid, (sid, _) in procs.items() if sid in sessions and pid not in mine)


def terminate(pids: list[int], grace: float = GRACE_SECONDS) -> int:
    """SIGTERM, then SIGKILL what is left after `grace` seconds; how many were signalled."""
    alive = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            alive.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.time() + grace
    while alive and time.time() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if _running(p)]
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(pids)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_ray(netns: str) -> int:
    """What `ray stop` does on a host here: stop that host's Ray, and nothing else; how many processes."""
    return terminate(ray_pids(netns))


# --- the network ----------------------------------------------------------------------------------------------

def free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.200-250.x.0 that no interface or route of this machine uses."""
    used = run("ip", "-4", "route", "show", "table", "all").stdout + run("ip", "-4", "addr").stdout
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{random.randint(200, 250)}.{random.randint(0, 255)}.0/24")
        if f"10.{net.network_address.packed[1]}.{net.network_address.packed[2]}." not in used:
            return net
    raise RuntimeError("no free 10.x.y.0/24 subnet for the fake hosts")


@dataclass
class Network:
    """A bridge on this machine (its address: the launcher's side) that the hosts' namespaces plug into."""

    tag: str  # short and unique per run: interface names have at most 15 characters
    subnet: ipaddress.IPv4Network

    @property
    def bridge(self) -> str:
        return f"lrh{self.tag}br"

    @property
    def bridge_ip(self) -> str:
        return str(self.subnet.network_address + 1)

    def up(self) -> None:
        run("ip", "link", "add", self.bridge, "type", "bridge")
        run("ip", "addr", "add", f"{self.bridge_ip}/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")

    def add_host(self, index: int) -> tuple[str, str]:
        """A namespace with one interface on the bridge; (its name, its address)."""
        ns, ip = f"lnsub-rh-{self.tag}-{index}", str(self.subnet.network_address + 2 + index)
        outer, inner = f"lrh{self.tag}h{index}", f"lrh{self.tag}n{index}"
        run("ip", "netns", "add", ns)
        run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        run("ip", "link", "set", outer, "master", self.bridge, "up")
        run("ip", "link", "set", inner, "netns", ns)
        for args in (("link", "set", "lo", "up"), ("addr", "add", f"{ip}/24", "dev", inner),
                     ("link", "set", inner, "up"),
                     ("route", "add", "default", "via", self.bridge_ip)):  # Ray finds its address by the default route
            run("ip", "-n", ns, *args)
        return ns, ip

    def down(self, namespaces: list[str]) -> None:
        for i, ns in enumerate(namespaces):
            run("ip", "link", "del", f"lrh{self.tag}h{i}", check=False)  # the pair (the namespace would, later)
            run("ip", "netns", "del", ns, check=False)
        run("ip", "link", "del", self.bridge, check=False)

    def links_left(self) -> list[str]:
        return [line.split(":")[1].strip().split("@")[0] for line in run("ip", "-o", "link").stdout.splitlines()
                if f"lrh{self.tag}" in line]


# --- a host ---------------------------------------------------------------------------------------------------

SHIM = """#!/bin/bash
# {name}'s `ray` on PATH, the one `ray down` calls: `ray stop` would end every Ray on this shared machine, so here
# it stops only this host's Ray; anything else goes to lnsub's Ray, as if the user had it on PATH.
if [ "${{1:-}}" = stop ]; then
  echo "[rehearsal shim on {name}] 'ray stop' stops only this host's Ray" >&2
  exec /usr/bin/python3 {module} stop-ray
fi
exec ~/lnsub/.venv/bin/ray "$@"
"""

GUARD = """#!/bin/bash
# sshd's ForceCommand on {name}: log every command, refuse a `ray stop` called by its path (it would pass the shim)
echo "$(date +%T) ${{SSH_ORIGINAL_COMMAND:-<login shell>}}" >> {log}
case "${{SSH_ORIGINAL_COMMAND:-}}" in
  */ray\\ stop*) echo "rehearsal guard on {name}: refusing $SSH_ORIGINAL_COMMAND" >&2; exit 1;;
esac
[ -z "${{SSH_ORIGINAL_COMMAND:-}}" ] && exec bash -l
exec bash -c "$SSH_ORIGINAL_COMMAND"
"""

SSHD_CONFIG = """ListenAddress {ip}
Port 22
HostKey {dir}/host_key
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
ForceCommand {dir}/guard.sh
"""


@dataclass
class Host:
    """One host: namespace `netns` at `ip`; its files (home, /tmp, sshd's) under `folder`."""

    name: str
    netns: str
    ip: str
    folder: Path

    @property
    def home(self) -> Path:  # the host's /root
        return self.folder / "home"

    @property
    def tmp(self) -> Path:  # the host's /tmp
        return self.folder / "tmp"

    def prepare(self, public_key: str, env: dict[str, str]) -> None:
        """Its home (a login shell's PATH and `env`), its `ray` shim and its sshd's files."""
        for d in (self.home / ".ssh", self.tmp, self.folder / "bin"):
            d.mkdir(parents=True, exist_ok=True)
        self.tmp.chmod(0o1777)
        _write(self.folder / "bin" / "ray", SHIM.format(name=self.name, module=Path(__file__).resolve()), 0o755)
        _write(self.folder / "guard.sh", GUARD.format(name=self.name, log=self.folder / "commands.log"), 0o755)
        exports = " ".join(f"{k}={v}" for k, v in env.items())
        rc = f"# {self.name}: a host of the cluster rehearsal\nexport PATH={self.folder / 'bin'}:$PATH {exports}\n"
        _write(self.home / ".bashrc", rc, 0o644)
        _write(self.home / ".profile", "[ -f ~/.bashrc ] && . ~/.bashrc\n", 0o644)
        _write(self.folder / "authorized_keys", public_key, 0o600)
        _write(self.folder / "sshd_config", SSHD_CONFIG.format(ip=self.ip, dir=self.folder), 0o644)
        if not (self.folder / "host_key").exists():
            run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.folder / "host_key"))

    def start_sshd(self) -> None:
        """sshd in the host's namespaces: its own network, and its home and /tmp mounted over /root and /tmp."""
        Path("/run/sshd").mkdir(exist_ok=True)  # Debian's sshd wants its privilege-separation folder
        mounts = f"mount --rbind {self.home} /root && mount --bind {self.tmp} /tmp"
        sshd = f"exec /usr/sbin/sshd -D -e -f {self.folder / 'sshd_config'}"
        with open(self.folder / "sshd.log", "ab") as log:
            subprocess.Popen(["ip", "netns", "exec", self.netns, "unshare", "-m", "--propagation", "private",
                              "sh", "-c", f"{mounts} && {sshd}"], stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        wait_until(lambda: _accepts(self.ip, 22), f"{self.name}'s sshd on {self.ip}:22", 30)

    def netns_id(self) -> str:
        ns = netns_of(int((self.folder / "sshd.pid").read_text()))
        if ns is None:
            raise RuntimeError(f"{self.name}'s sshd is gone")
        return ns

    def processes(self) -> list[int]:
        out = run("ip", "netns", "pids", self.netns, check=False).stdout.split()
        return [int(p) for p in out]

    def stop_everything(self) -> int:
        """Every process in the host's namespace (Ray, MLflow, sshd, the sessions it served)."""
        return terminate(self.processes())

    def commands(self) -> list[str]:
        """Every command the host's sshd ran, in order."""
        path = self.folder / "commands.log"
        return path.read_text().splitlines() if path.exists() else []


def _write(path: Path, text: str, mode: int) -> None:
    path.write_text(text)
    path.chmod(mode)


def _accepts(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=1):
            return True
    except OSError:
        return False


def wait_until(predicate, what: str, timeout: float, poll: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f} s")


def ssh_key(folder: Path) -> Path:
    """The launcher's key pair (the cluster config's ssh_private_key); made once."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = folder / "id_ed25519"
    if not key.exists():
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "lnsub-cluster-rehearsal", "-f", str(key))
    return key


def missing_tools() -> list[str]:
    tools = {"ip": "iproute2", "unshare": "util-linux", "sshd": "openssh-server", "ssh": "openssh-client",
             "ssh-keygen": "openssh-client", "rsync": "rsync"}
    return sorted({pkg for tool, pkg in tools.items() if not shutil.which(tool, path=f"{SYSTEM_PATH}:/usr/sbin:/sbin")})


if __name__ == "__main__" and sys.argv[1:] == ["stop-ray"]:
    n = stop_ray(netns_of(os.getpid()))
    print(f"stopped {n} Ray process(es) of this host", file=sys.stderr)
