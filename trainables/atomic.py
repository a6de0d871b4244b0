"""Atomic writes: a killed process never leaves a half-written file that a later run trusts.

Every write goes to a temporary name in the same folder, is flushed to disk, then
renamed over the final name (rename is atomic on POSIX filesystems). Folders that
must appear whole are built under a temporary name and renamed into place; a DONE
marker written last says a stage finished, and carries the checksums of what it
commits. Under a scratch copy of an object store (objectstore.py) every write, and
every removal, goes through to the store as soon as it is made here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from lnsub.trainables import objectstore

DONE = "DONE"
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
        objectstore.after_write(final)  # whole, and only once it is whole here
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


def is_done(path: str | os.PathLike) -> bool:
    """Whether a stage of storage committed: its DONE is a commit record (mark_done). An empty, `{}`, `null` or
    otherwise unreadable DONE is damage, and the stage counts as unfinished (its checksums are checked on pulls
    and when a cell resumes)."""
    try:
        objectstore.read_done(Path(path) / DONE)
        return True
    except (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return False


def mark_done(path: str | os.PathLike) -> None:
    """Write DONE last, with the SHA-256 of every file it commits (objectstore.done_record)."""
    write_json(Path(path) / DONE, objectstore.done_record(Path(path)))


def remove(path: str | os.PathLike) -> None:
    """Remove a file here and, under a store's scratch copy, in the store."""
    Path(path).unlink(missing_ok=True)
    objectstore.after_remove(path)


def remove_tree(path: str | os.PathLike) -> None:
    """Remove a folder here and, under a store's scratch copy, in the store."""
    shutil.rmtree(path, ignore_errors=True)
    objectstore.after_remove_tree(path)


def move(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Move a folder of files: copies whole at `dst` first, then `src` goes (an object store has no rename)."""
    src, dst = Path(src), Path(dst)
    if objectstore.mirror_of(src) is None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        src.rename(dst)
        return
    for p in sorted(q for q in src.rglob("*") if q.is_file()):
        with atomic_path(dst / p.relative_to(src)) as tmp:
            shutil.copyfile(p, tmp)
    remove_tree(src)
