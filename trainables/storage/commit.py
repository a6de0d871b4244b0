"""DONE, a stage's commit record: written last, it names the SHA-256 of every file the stage commits.

A reader trusts a stage only if its DONE parses as a commit record, and (where files came from
elsewhere: a pull from an object store, a resume) only if every file it names is there with that
checksum. Anything else (an empty file, `{}`, `null`, a path that leaves the folder) is damage.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from lnsub.trainables.storage.layout import DONE, NEVER_PULLED, safe_relative, sha256_file

log = logging.getLogger(__name__)


def committed_files(folder: Path) -> list[Path]:
    """What a DONE in `folder` commits: its files, except work in progress (checkpoints, quarantine) and
    the insides of sub-folders with a DONE of their own (their DONE stands for them)."""
    out: list[Path] = []

    def walk(d: Path, top: bool) -> None:
        if not top and (d / DONE).is_file():
            out.append(d / DONE)
            return
        for p in sorted(d.iterdir()):
            if p.is_symlink():  # never followed: a link to /etc must not commit /etc
                log.warning("%s is a symbolic link; not committed", p)
            elif p.is_dir():
                if p.name not in NEVER_PULLED and not p.name.startswith("."):
                    walk(p, False)
            elif p.is_file() and p.name != DONE and not p.name.startswith("."):
                out.append(p)

    walk(folder, True)
    return out


def done_record(folder: Path) -> dict:
    return {"files": {p.relative_to(folder).as_posix(): sha256_file(p) for p in committed_files(folder)}}


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def read_done(done: Path) -> dict[str, str]:
    """The files a DONE commits, {relative path: SHA-256}; ValueError for anything else (an empty file, `{}`,
    `null`, the plain "ok" of a cache folder, a path that leaves the folder): such a DONE is damage."""
    try:
        record = json.loads(done.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{done}: not a commit record ({type(e).__name__})") from None
    files = record.get("files") if isinstance(record, dict) and set(record) == {"files"} else None
    if not isinstance(files, dict):
        raise ValueError(f"{done}: not a commit record (no files)")
    for rel, digest in files.items():
        if not (isinstance(rel, str) and isinstance(digest, str) and _SHA256.match(digest) and safe_relative(rel)):
            raise ValueError(f"{done}: not a commit record (entry {rel!r})")
    return files


def verify_done(done: Path) -> bool:
    """Whether a DONE is a commit record and every file it names is here with its checksum."""
    try:
        files = read_done(done)
    except (ValueError, OSError):
        return False
    folder = done.parent
    for rel, digest in files.items():
        p = folder / rel
        if p.is_symlink() or not p.is_file() or sha256_file(p) != digest:
            return False
    return True
