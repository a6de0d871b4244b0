"""Atomic writes on local disk: a killed process never leaves a half-written file that a later run trusts.

Every write goes to a temporary name in the same folder, is flushed to disk, then
renamed over the final name (rename is atomic on POSIX filesystems). Folders that
must appear whole (a cached build: the testbed, a tiny model) are built under a
temporary name and renamed into place. These are the local half of `Storage`, which
adds the commit records and, on an object store, the uploads; state that storage
keeps is written through a `Storage`, never with these directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from lnsub.trainables.storage.layout import DONE

_UMASK = os.umask(0o022)  # read once, at import (os.umask can only be read by setting it)
os.umask(_UMASK)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success it is renamed to `final`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide results from the other users of shared storage
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, final)
        _fsync_dir(final.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def write_bytes(final: str | os.PathLike, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def write_text(final: str | os.PathLike, text: str) -> None:
    write_bytes(final, text.encode())


def write_json(final: str | os.PathLike, obj: Any) -> None:
    write_text(final, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Build a folder under a temporary name; it appears at `final` whole, with a DONE marker.

    If another process finished the same folder first, ours is discarded: the
    contents are a pure function of the job, so either copy is the same.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp.chmod(0o777 & ~_UMASK)
    try:
        yield tmp
        (tmp / DONE).write_text("ok\n")
        if final.exists() and not is_built(final):
            shutil.rmtree(final)  # a stale, unfinished copy: never trusted
        try:
            os.replace(tmp, final)
        except OSError:
            if not is_built(final):
                raise
        _fsync_dir(final.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def build_lock(final: str | os.PathLike) -> Iterator[None]:
    """One builder at a time for a cached folder on this machine: the others wait, then find it DONE."""
    import fcntl  # POSIX only, like the rest of the cache

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def is_built(path: str | os.PathLike) -> bool:
    """Whether a cached folder (atomic_dir: the testbed, a tiny model) was built whole."""
    return (Path(path) / DONE).is_file()
