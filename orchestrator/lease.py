"""One driver per sweep: a lease taken atomically, renewed and released only by its holder.

    <storage>/sweeps/<name>/lease/<generation>.json     the holder of one generation

A driver takes the lease by *creating* the next generation's file, which only one
contender can do: `link()` onto a name that must not exist on a file system (POSIX
and NFS alike), a conditional PUT (`If-None-Match: *`) on S3. The highest generation
is the lease; a holder renews only its own file and, when it finds a higher
generation, knows it has lost the lease. Release deletes only the holder's own file
(and the older generations it superseded).

A lease is alive while its holder's process runs (same host: the pid exists and was
started when the lease says) or, seen from another host, while its file was written
less than TTL seconds ago *by the storage's own clock*: the age is the storage's now
(a probe file's mtime, or the S3 response's Date) minus the file's mtime, so two
hosts' clocks never enter it. Nothing in the file's body decides its age, so a
damaged or forged body can hold a sweep for at most TTL seconds.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from lnsub.trainables.errors import LnsubError
from lnsub.trainables.storage import Storage, is_remote

log = logging.getLogger(__name__)

LEASE_DIR = "lease"
TTL = 120.0  # seconds without renewal, by the storage's clock, after which a lease from another host is dead
RENEW_EVERY = 20.0
MAX_PID = 1 << 22  # Linux's pid_max ceiling
_GENERATION = re.compile(r"^(\d{8})\.json$")


class LeaseLost(LnsubError):
    """Another driver holds the sweep now (this one was presumed dead)."""


@dataclass(frozen=True)
class Lease:
    generation: int
    token: str  # this holder's secret: its file is recognised by it
    pid: int
    pid_started: float  # the process's start time (psutil), so a reused pid is not mistaken for the holder
    host: str
    started: float  # wall clock of the holder's host: shown to people, never used to judge age

    @classmethod
    def parse(cls, raw: bytes) -> "Lease":
        """A lease body, every field checked (ValueError otherwise): a huge pid or an infinite time is damage."""
        d = json.loads(raw.decode("utf-8"))
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        lease = cls(int(d["generation"]), str(d["token"]), int(d["pid"]), float(d["pid_started"]),
                    str(d["host"]), float(d["started"]))
        if not (0 < lease.pid < MAX_PID and 0 < lease.generation < 10**8 and len(lease.host) <= 255
                and re.fullmatch(r"[0-9a-f]{32}", lease.token)):
            raise ValueError("field out of range")
        if not all(map(lambda x: 0 <= x < 1e11, (lease.pid_started, lease.started))):
            raise ValueError("time out of range")
        return lease

    def body(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()


def _process_started(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError, OverflowError):
        return None


def pid_alive(pid: int, started: float | None = None) -> bool:
    """Whether process `pid` runs on this host (and, given `started`, is the one started then)."""
    if not 0 < pid < MAX_PID:
        return False
    found = _process_started(pid)
    if found is None:
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, OverflowError):
            return False
        except PermissionError:
            return started is None
        return started is None
    return started is None or abs(found - started) < 1.0


# --- where lease files live: a folder, or an S3 prefix ---------------------------------------

class FolderLeases:
    """Lease files in a local or network folder: exclusive creation by link()."""

    def __init__(self, folder: Path):
        self.folder = folder

    def generations(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.folder.iterdir() if (m := _GENERATION.match(p.name)))

    def _path(self, gen: int) -> Path:
        return self.folder / f"{gen:08d}.json"

    def create(self, gen: int, body: bytes) -> bool:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{gen:08d}.{secrets.token_hex(8)}.tmp"
        tmp.write_bytes(body)
        try:
            os.link(tmp, self._path(gen))  # atomic, and fails if the name exists: one winner
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def replace(self, gen: int, body: bytes) -> None:
        tmp = self.folder / f".{gen:08d}.{secrets.token_hex(8)}.tmp"
        tmp.write_bytes(body)
        os.replace(tmp, self._path(gen))

    def read(self, gen: int) -> tuple[bytes, float]:
        """The file's bytes and its age in seconds by the storage's clock (FileNotFoundError if gone)."""
        path = self._path(gen)
        raw, mtime = path.read_bytes(), path.stat().st_mtime
        return raw, max(0.0, self._now() - mtime)

    def _now(self) -> float:
        """The storage's clock: the mtime of a file written now (on NFS, the server's)."""
        probe = self.folder / f".clock.{secrets.token_hex(8)}"
        probe.write_bytes(b"")
        try:
            return probe.stat().st_mtime
        finally:
            probe.unlink(missing_ok=True)

    def delete(self, gen: int) -> None:
        self._path(gen).unlink(missing_ok=True)


class S3Leases:
    """Lease objects under an S3 prefix: exclusive creation by a conditional PUT (If-None-Match: *)."""

    def __init__(self, uri: str):
        import boto3
        from botocore.config import Config

        parsed = urlparse(uri)
        self.bucket, self.prefix = parsed.netloc, parsed.path.strip("/")
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        self.s3 = boto3.client("s3", endpoint_url=endpoint or None, config=Config(
            connect_timeout=5, read_timeout=10, retries={"max_attempts": 3, "mode": "standard"}))

    def _key(self, gen: int) -> str:
        return f"{self.prefix}/{gen:08d}.json"

    def generations(self) -> list[int]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + "/")
        names = [o["Key"].rsplit("/", 1)[-1] for page in pages for o in page.get("Contents", [])]
        return sorted(int(m.group(1)) for n in names if (m := _GENERATION.match(n)))

    def create(self, gen: int, body: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.s3.put_object(Bucket=self.bucket, Key=self._key(gen), Body=body, IfNoneMatch="*")
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict", "412",
                                                            "409"):
                return False
            raise

    def replace(self, gen: int, body: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=self._key(gen), Body=body)

    def read(self, gen: int) -> tuple[bytes, float]:
        from botocore.exceptions import ClientError

        try:
            got = self.s3.get_object(Bucket=self.bucket, Key=self._key(gen))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(self._key(gen)) from e
            raise
        server_now = email.utils.parsedate_to_datetime(got["ResponseMetadata"]["HTTPHeaders"]["date"])
        return got["Body"].read(), max(0.0, (server_now - got["LastModified"]).total_seconds())

    def delete(self, gen: int) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=self._key(gen))


def leases_for(storage: str | Path, name: str):
    """The lease files of sweep `name` where its storage keeps them (never in a process's scratch copy)."""
    where = Storage.open(storage).location
    rel = f"sweeps/{name}/{LEASE_DIR}"
    if not is_remote(where):
        return FolderLeases(Path(where) / rel)
    if urlparse(where).scheme in ("s3", "s3a"):
        return S3Leases(f"{where}/{rel}")
    raise LnsubError(f"--storage {where}: a sweep needs a store that can create an object only if it is absent "
                     f"(a file system or S3), so that two drivers can never run one sweep; run the sweep with "
                     f"--storage on S3 or a shared folder")


# --- the lease itself ------------------------------------------------------------------------

@dataclass(frozen=True)
class Holder:
    """What a reader learns of the current lease: its body (None if damaged) and its age by the storage's clock."""

    generation: int
    lease: Lease | None
    age: float

    def alive(self) -> bool:
        lease = self.lease
        if lease is not None and lease.host == socket.gethostname():
            return pid_alive(lease.pid, lease.pid_started)
        return self.age < TTL

    def describe(self) -> str:
        if self.lease is None:
            return f"a damaged lease (generation {self.generation}, written {self.age:.0f} s ago)"
        return f"pid {self.lease.pid} on {self.lease.host} (lease renewed {self.age:.0f} s ago)"


def current(leases) -> Holder | None:
    """The newest generation's holder, or None when no one ever held the sweep (or all released it)."""
    for gen in reversed(leases.generations()):
        try:
            raw, age = leases.read(gen)
        except FileNotFoundError:
            continue  # released between the listing and the read
        try:
            lease = Lease.parse(raw)
            lease = lease if lease.generation == gen else None
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, OverflowError):
            lease = None
        return Holder(gen, lease, age)
    return None


def read_holder(storage: str | Path, name: str) -> Holder | None:
    try:
        return current(leases_for(storage, name))
    except LnsubError:
        return None


def take(storage: str | Path, name: str) -> Lease:
    """Hold the sweep for this process, or raise LnsubError naming who holds it."""
    leases = leases_for(storage, name)
    for _ in range(5):
        held = current(leases)
        if held is not None and held.alive():
            raise LnsubError(f"sweep {name!r} is being run by {held.describe()}; stop it first, or wait for it")
        gen = (held.generation if held else max(leases.generations(), default=0)) + 1
        me = os.getpid()
        lease = Lease(gen, secrets.token_hex(16), me, _process_started(me) or 0.0, socket.gethostname(), time.time())
        if leases.create(gen, lease.body()):
            return lease
        # another driver created this generation first: look again (it is alive now, so we are refused)
    raise LnsubError(f"sweep {name!r}: could not take the lease (other drivers keep racing for it)")


def renew(storage: str | Path, name: str, lease: Lease) -> None:
    """Rewrite our own file (its mtime is the heartbeat); LeaseLost if a newer generation exists."""
    leases = leases_for(storage, name)
    newer = [g for g in leases.generations() if g > lease.generation]
    if newer:
        raise LeaseLost(f"sweep {name!r}: another driver took the lease (generation {newer[-1]}); this driver stops")
    try:
        raw, _ = leases.read(lease.generation)
        if Lease.parse(raw).token != lease.token:
            raise LeaseLost(f"sweep {name!r}: the lease file is no longer this driver's; this driver stops")
    except FileNotFoundError:
        raise LeaseLost(f"sweep {name!r}: this driver's lease was removed; this driver stops") from None
    except (ValueError, KeyError, TypeError):
        pass  # our own file, damaged on disk: rewriting it below mends it
    leases.replace(lease.generation, lease.body())


def release(storage: str | Path, name: str, lease: Lease) -> None:
    """Give the sweep up: our own file goes (and older generations we superseded); a newer holder's stays."""
    leases = leases_for(storage, name)
    for gen in leases.generations():
        if gen < lease.generation:
            leases.delete(gen)
    with contextlib.suppress(FileNotFoundError):
        raw, _ = leases.read(lease.generation)
        with contextlib.suppress(ValueError, KeyError, TypeError):
            if Lease.parse(raw).token != lease.token:
                return
        leases.delete(lease.generation)


class Keeper:
    """Renews the lease from a thread of its own, so a slow draw, a sync or a storage retry never delays it.

    When the lease is lost (another driver took over a lease presumed dead), `on_lost` is called once.
    """

    def __init__(self, storage: str | Path, name: str, lease: Lease, on_lost: Callable[[str], None],
                 every: float = RENEW_EVERY):
        self.storage, self.name, self.lease, self.on_lost, self.every = storage, name, lease, on_lost, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"lease-{name}", daemon=True)
        self.failing = ""

    def __enter__(self) -> "Keeper":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=30)

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                renew(self.storage, self.name, self.lease)
                if self.failing:
                    log.info("renewing the sweep's lease works again")
                self.failing = ""
            except LeaseLost as e:
                log.error("%s", e)
                self.on_lost(str(e))
                return
            except Exception as e:  # noqa: BLE001 - a store outage: try again at the next beat
                text = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                if text != self.failing:
                    log.warning("renewing the sweep's lease failed (%s); retrying every %.0f s", text, self.every)
                self.failing = text
