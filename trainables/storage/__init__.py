"""Storage: where lnsub keeps its state, opened once and handed down; every read, write, pull and commit goes
through it.

A Storage is a folder (local disk, NFS, EFS), or an object store (s3://, gs://, any URI pyarrow's or
fsspec's file systems know) that this process reads and writes through a scratch copy of its own
(storage.remote). Either way its methods are the same:

- writes are atomic (storage.local) and, on an object store, uploaded whole as soon as they are made;
- `mark_done` commits a folder with a DONE record of its files' checksums (storage.commit), written last;
- `pull` brings what the store holds under a folder into the scratch copy (a no-op on a folder), trusting
  a DONE only if its files arrived with its checksums; `fresh` and `drop` start and free a unit of work.

Every path handed to a Storage must lie inside it (a name read back from storage never leads outside).
Another process or node gets `storage.location` (the store's URI, or the folder's absolute path) and
opens its own.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
from pathlib import Path
from typing import Any, Iterator

from lnsub.trainables.storage import commit, local
from lnsub.trainables.storage.layout import DONE
from lnsub.trainables.storage.remote import Mirror, is_remote, open_mirror

_OPEN: dict[str, "Storage"] = {}  # one scratch copy per store and process
_LOCK = threading.Lock()


class Storage:
    """A folder, or an object store through this process's scratch copy of it (`mirror`)."""

    def __init__(self, location: str, root: Path, mirror: Mirror | None = None):
        self.location, self.root, self.mirror = location, root, mirror

    @classmethod
    def open(cls, where: "str | Path | Storage") -> "Storage":
        """The storage at a folder or URI (a Storage is returned as it is); a store is checked reachable once."""
        if isinstance(where, Storage):
            return where
        text = str(where)
        if not is_remote(text):
            root = Path(text.removeprefix("file://")).resolve()
            return cls(str(root), root)
        uri = text.rstrip("/")
        with _LOCK:
            if uri not in _OPEN:
                mirror = open_mirror(uri)
                _OPEN[uri] = cls(uri, mirror.root, mirror)
            return _OPEN[uri]

    @property
    def remote(self) -> bool:
        return self.mirror is not None

    def __repr__(self) -> str:
        return f"Storage({self.location!r})"

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def _inside(self, path: str | Path) -> Path:
        path = Path(path).absolute()
        if path != self.root and self.root not in path.parents:
            raise ValueError(f"{path} is not inside {self.location}")
        return path

    # --- writes: atomic here, and through to the store ------------------------------------------------
    @contextlib.contextmanager
    def atomic_path(self, final: str | Path) -> Iterator[Path]:
        """A temporary path beside `final`; once the block ends it is `final`, whole (and in the store)."""
        final = self._inside(final)
        with local.atomic_path(final) as tmp:
            yield tmp
        if self.mirror is not None:
            self.mirror.wrote(final)

    def write_bytes(self, final: str | Path, data: bytes) -> None:
        with self.atomic_path(final) as tmp:
            tmp.write_bytes(data)

    def write_text(self, final: str | Path, text: str) -> None:
        self.write_bytes(final, text.encode())

    def write_json(self, final: str | Path, obj: Any) -> None:
        self.write_text(final, json.dumps(obj, indent=2, sort_keys=True) + "\n")

    def remove(self, path: str | Path) -> None:
        path = self._inside(path)
        path.unlink(missing_ok=True)
        if self.mirror is not None:
            self.mirror.removed(path)

    def remove_tree(self, path: str | Path) -> None:
        path = self._inside(path)
        shutil.rmtree(path, ignore_errors=True)
        if self.mirror is not None:
            self.mirror.removed_tree(path)

    def move(self, src: str | Path, dst: str | Path) -> None:
        """Move a folder of files: on a folder a rename; on a store (no rename) copies whole at `dst`, then `src`
        goes."""
        src, dst = self._inside(src), self._inside(dst)
        if self.mirror is None:
            dst.parent.mkdir(parents=True, exist_ok=True)
            src.rename(dst)
            return
        for p in sorted(q for q in src.rglob("*") if q.is_file()):
            with self.atomic_path(dst / p.relative_to(src)) as tmp:
                shutil.copyfile(p, tmp)
        self.remove_tree(src)

    def push(self, folder: str | Path) -> None:
        """Upload every file under `folder` (an analysis's output, written with plain atomic writes)."""
        folder = self._inside(folder)
        if self.mirror is None or not folder.is_dir():
            return
        for p in sorted(q for q in folder.rglob("*") if q.is_file() and not q.name.startswith(".")):
            self.mirror.wrote(p)

    # --- commits ----------------------------------------------------------------------------------------
    def mark_done(self, folder: str | Path) -> None:
        """Commit a folder: DONE, written last, with the SHA-256 of every file it commits."""
        folder = self._inside(folder)
        self.write_json(folder / DONE, commit.done_record(folder))

    @staticmethod
    def is_done(folder: str | Path) -> bool:
        """Whether a folder is committed: its DONE is a commit record (anything else is damage)."""
        try:
            commit.read_done(Path(folder) / DONE)
            return True
        except (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return False

    # --- reads: what the store holds, into this process's copy ------------------------------------------
    def pull(self, path: str | Path, exclude: tuple[str, ...] = ()) -> int:
        """Bring the store's files under `path` (not under folders named in `exclude`); how many came down."""
        return self.mirror.pull(self._inside(path), exclude) if self.mirror is not None else 0

    def fresh(self, path: str | Path) -> None:
        """Start a unit of work (a cell, a transfer job) from what the store holds, not from an older copy."""
        if self.mirror is not None:
            self.mirror.fresh(self._inside(path))

    def drop(self, path: str | Path) -> None:
        """Free a finished unit's scratch copy (the store holds all of it)."""
        if self.mirror is not None:
            self.mirror.drop(self._inside(path))


def read_json(path: str | Path) -> Any:
    return local.read_json(path)


__all__ = ["Storage", "read_json", "is_remote"]
