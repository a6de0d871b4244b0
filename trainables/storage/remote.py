"""Object storage (s3://, gs://, any URI pyarrow's or fsspec's file systems know) as lnsub's storage.

An object store has no rename, so the POSIX recipe of storage.local (write a temporary
file, rename it) cannot run there. lnsub keeps that recipe on local disk and adds a
commit protocol on top (a Storage opened on a store's URI holds one Mirror):

- Every process works in a scratch copy of its own, on its own node's disk
  (`$LNSUB_SCRATCH`, default the system temp dir; never shared, never trusted by
  anyone else). Nothing assumes a path is shared between nodes.
- Write-through: every write through the Storage is uploaded right after its
  local rename, as one whole object (a PUT, or a completed multipart upload, is
  atomic: readers see the old object or the new one, never a part). Writes go up in
  the order they are made, so a DONE object goes up last.
- DONE carries the SHA-256 of every file it commits (storage.commit). A pull trusts
  a DONE only if the files it names arrived with those checksums; otherwise the DONE
  is dropped and the stage counts as unfinished (and is redone), like a damaged file.
- A pull brings a prefix of the store into the scratch copy; what the store no longer
  holds (a DONE withdrawn, an old checkpoint) is removed from the copy too.
- A transient error (a refused connection, a timeout, a 5xx) is retried with backoff
  for up to LNSUB_STORE_RETRY_SECONDS (default 300); a missing object is not
  transient; a request that moves no bytes for LNSUB_STORE_TIMEOUT_SECONDS (default 30)
  counts as failed. When the time is up the OSError propagates: the trial fails and Ray Tune
  retries it, with everything committed still in the store.

Credentials and endpoints come from the store client's own environment and config
(for S3: AWS_ACCESS_KEY_ID, AWS_PROFILE, instance roles, AWS_ENDPOINT_URL for an
S3-compatible server); lnsub never writes them anywhere.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from lnsub.trainables.storage.commit import verify_done
from lnsub.trainables.storage.layout import DONE, safe_relative

log = logging.getLogger(__name__)

SCRATCH_ENV = "LNSUB_SCRATCH"
RETRY_ENV = "LNSUB_STORE_RETRY_SECONDS"
TIMEOUT_ENV = "LNSUB_STORE_TIMEOUT_SECONDS"
FRESH_WRITE_SECONDS = 600.0  # a file this process wrote is kept this long even if the store lacks it
_CHUNK = 8 * 1024 * 1024


def is_remote(location: str | os.PathLike) -> bool:
    """Whether a --storage value names an object store (a URI with a scheme other than file://)."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


# --- the store: a pyarrow file system and a base path, every call retried ------------------------

def _filesystem(uri: str):
    """(pyarrow file system, base path) for a URI; S3 reads its endpoint from AWS_ENDPOINT_URL(_S3)."""
    import pyarrow.fs as pafs

    parsed = urlparse(uri)
    if parsed.scheme in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        # a request that moves no bytes for this long fails (and our own loop retries it); S3FileSystem built
        # directly reads no endpoint from the environment, so it is passed here
        timeout = float(os.environ.get(TIMEOUT_ENV, "30"))
        kwargs = {"connect_timeout": min(timeout, 10.0), "request_timeout": timeout,
                  "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=2)}
        if endpoint:
            ep = urlparse(endpoint)
            kwargs.update(endpoint_override=ep.netloc or ep.path, scheme=ep.scheme or "https")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs), f"{parsed.netloc}{parsed.path}".rstrip("/")
    try:
        return pafs.FileSystem.from_uri(uri)
    except ValueError:  # pyarrow's ArrowInvalid: a scheme it does not know
        import fsspec  # a scheme pyarrow does not know natively: fsspec's, wrapped for pyarrow

        fs, path = fsspec.core.url_to_fs(uri)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path.rstrip("/")


class DiskFull(OSError):
    """This machine's disk (or quota) is full: not the store's outage, so never retried as one."""


@contextlib.contextmanager
def disk_full_named(path: Path):
    """Turn a full local disk while writing `path` into DiskFull, which says so in one line."""
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            where = SCRATCH_ENV if scratch_base() in Path(path).absolute().parents else "that folder"
            raise DiskFull(e.errno, f"disk full writing {path} (free space there, or point {where} at a larger "
                                    f"disk)") from e
        raise


_UPLOADING = re.compile(r"\.lnsub-upload-[0-9a-f]{16}$")  # a temporary key of an upload in flight (or abandoned)


def _s3_client():
    """boto3's S3 client, configured from the environment as pyarrow's is (AWS_ENDPOINT_URL, AWS_PROFILE, roles)."""
    keys = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION",
            "AWS_ACCESS_KEY_ID", TIMEOUT_ENV)
    return _s3_client_for(tuple(os.environ.get(k) for k in keys))


@functools.lru_cache(maxsize=8)
def _s3_client_for(environment: tuple) -> object:
    import boto3
    from botocore.config import Config

    timeout = float(os.environ.get(TIMEOUT_ENV, "30"))
    return boto3.client("s3", config=Config(connect_timeout=min(timeout, 10.0), read_timeout=timeout,
                                            retries={"max_attempts": 1, "mode": "standard"}))  # our loop retries


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=64 * 1024 * 1024, multipart_chunksize=16 * 1024 * 1024)


_PERMANENT = ("NO_SUCH_BUCKET", "NoSuchBucket", "ACCESS_DENIED", "AccessDenied", "INVALID_ACCESS_KEY_ID",
              "InvalidAccessKeyId", "SIGNATURE_DOES_NOT_MATCH", "SignatureDoesNotMatch", "HTTP status 403")


def _permanent(e: OSError) -> bool:
    """Errors no retry can fix (a wrong bucket, missing rights); all others are taken as transient."""
    return any(marker in str(e) for marker in _PERMANENT)


@dataclass
class Remote:
    uri: str
    fs: object
    base: str
    retry_seconds: float = field(default_factory=lambda: float(os.environ.get(RETRY_ENV, "300")))

    @classmethod
    def open(cls, uri: str) -> "Remote":
        fs, base = _filesystem(uri)
        return cls(uri.rstrip("/"), fs, base)

    def key(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def _retry(self, what: str, fn):
        start = time.monotonic()
        deadline, delay, warned = start + self.retry_seconds, 0.5, False
        while True:
            try:
                return fn()
            except (FileNotFoundError, DiskFull):
                raise  # a missing object is not transient, and a full local disk is not the store's outage
            except OSError as e:
                if _permanent(e):
                    raise OSError(f"{what} on {self.uri}: {str(e).splitlines()[0][:300]}") from e
                if time.monotonic() + delay > deadline:
                    raise OSError(f"{what} on {self.uri} failed for {time.monotonic() - start:.0f}s: {e}") from e
                if not warned:
                    log.warning("%s on %s failed (%s); retrying for up to %.0fs", what, self.uri,
                                str(e).splitlines()[0][:200], self.retry_seconds)
                    warned = True
                time.sleep(delay)
                delay = min(2 * delay, 10.0)

    def list(self, rel: str) -> dict[str, tuple[int, int]]:
        """Every object under `rel`: relative key -> (size, mtime in ns)."""
        import pyarrow.fs as pafs

        def go():
            infos = self.fs.get_file_info(pafs.FileSelector(self.key(rel), recursive=True, allow_not_found=True))
            cut = len(self.base) + 1
            return {i.path[cut:]: (i.size, i.mtime_ns or 0) for i in infos if i.type == pafs.FileType.File}

        return self._retry(f"listing {rel or '/'}", go)

    def put(self, rel: str, local: Path) -> None:
        """Upload a file so that the object appears whole or not at all, however the upload is interrupted.

        A stream's close commits whatever it holds, even on an exception, so nothing is streamed to its final
        key: S3 gets boto3's managed upload (one PUT, or a multipart upload that is aborted, never completed,
        when interrupted); any other store gets a temporary key, copied to the final key once whole.
        """
        if urlparse(self.uri).scheme in ("s3", "s3a"):
            self._retry(f"writing {rel}", lambda: self._s3_upload(rel, local))
            return
        tmp = f"{rel}.lnsub-upload-{secrets.token_hex(8)}"

        def go():
            try:
                with open(local, "rb") as src, self.fs.open_output_stream(self.key(tmp)) as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
                self.fs.copy_file(self.key(tmp), self.key(rel))
            finally:
                with contextlib.suppress(OSError):
                    self.fs.delete_file(self.key(tmp))

        self._retry(f"writing {rel}", go)

    def _s3_upload(self, rel: str, local: Path) -> None:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, _, key = self.key(rel).partition("/")
        try:
            _s3_client().upload_file(str(local), bucket, key, Config=_transfer_config())
        except (BotoCoreError, ClientError, S3UploadFailedError) as e:
            raise OSError(f"{type(e).__name__}: {e}") from e  # the retry loop's kind of error

    def get(self, rel: str, local: Path) -> None:
        """Download to a temporary file beside `local`, then rename: a copy is whole or absent."""
        local.parent.mkdir(parents=True, exist_ok=True)

        def go():
            fd, tmp = tempfile.mkstemp(prefix=f".{local.name}.", suffix=".part", dir=local.parent)
            try:
                with os.fdopen(fd, "wb") as dst, self.fs.open_input_stream(self.key(rel)) as src:
                    with disk_full_named(local):
                        shutil.copyfileobj(src, dst, _CHUNK)
                os.replace(tmp, local)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

        self._retry(f"reading {rel}", go)

    def delete(self, rel: str) -> None:
        def go():
            with contextlib.suppress(FileNotFoundError):
                self.fs.delete_file(self.key(rel))

        self._retry(f"deleting {rel}", go)

    def delete_tree(self, rel: str) -> None:
        for name in sorted(self.list(rel)):  # objects one by one: a prefix is not a folder everywhere
            self.delete(name)

    def check(self) -> None:
        """One listing, retried briefly: a wrong bucket or missing credentials fail now, in one line."""
        import pyarrow.fs as pafs

        deadline = time.monotonic() + min(self.retry_seconds, 20.0)
        while True:
            try:
                bucket = self.base.split("/")[0]
                if self.fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                    raise OSError(f"NoSuchBucket: {bucket} does not exist (create it first)")
                self.fs.get_file_info(pafs.FileSelector(self.base, recursive=False, allow_not_found=True))
                return
            except OSError as e:
                if _permanent(e) or time.monotonic() > deadline:
                    raise OSError(f"cannot reach {self.uri}: {str(e).splitlines()[0][:300]}") from e
                time.sleep(1.0)


# --- scratch copies: one per process and store --------------------------------------------------

@dataclass
class Mirror:
    """This process's scratch copy of one store."""

    remote: Remote
    root: Path
    lock: threading.Lock = field(default_factory=threading.Lock)
    seen: dict[str, tuple[int, int]] = field(default_factory=dict)  # rel -> the remote (size, mtime) we hold
    rejected: dict[str, tuple[int, int]] = field(default_factory=dict)  # DONEs that did not verify, by stamp

    def rel(self, path: Path) -> str:
        return Path(path).absolute().relative_to(self.root).as_posix()

    def pull(self, path: Path, exclude: tuple[str, ...] = ()) -> int:
        """Bring the store's objects under `path` into the copy; returns how many were downloaded.

        Files the store does not hold are removed from the copy (so the copy never trusts
        more than the store). A DONE that came down now is kept only if its checksums match.
        """
        prefix = self.rel(path)
        with self.lock:
            listed = {k: v for k, v in self.remote.list(prefix).items()
                      if not _excluded(k, prefix, exclude) and self._safe_key(k)}
            fresh = []
            for key in sorted(listed, key=lambda k: (k.endswith(DONE), -k.count("/"))):  # DONE last, deepest first
                local = self.root / key
                if self.rejected.get(key) == listed[key]:
                    continue  # a DONE found wanting before, unchanged since: still not trusted, not re-warned
                if self.seen.get(key) != listed[key] or not local.is_file():
                    try:
                        self.remote.get(key, local)
                    except FileNotFoundError:  # gone since the listing (an old checkpoint, say): as if never listed
                        listed.pop(key)
                        continue
                    self.seen[key] = listed[key]
                    fresh.append(key)
            local_root = self.root / prefix
            if local_root.is_dir():
                for p in list(local_root.rglob("*")):
                    key = self.rel(p)
                    if p.is_file() and key not in listed and not _excluded(key, prefix, exclude) \
                            and not p.name.endswith((".tmp", ".part")) and self._came_from_store(key, p):
                        p.unlink(missing_ok=True)
                        self.seen.pop(key, None)
            # a DONE that came down now, or whose files did, is checked against what it commits (deepest first)
            suspects = {key for key in fresh if key.endswith(DONE)}
            for key in fresh:
                parts = key.split("/")[:-1]
                suspects.update("/".join(parts[:i] + [DONE]) for i in range(len(parts), 0, -1))
            for key in sorted(suspects, key=lambda k: -k.count("/")):
                if (self.root / key).is_file() and not verify_done(self.root / key):
                    log.warning("%s/%s does not match the files it commits; not trusted", self.remote.uri, key)
                    (self.root / key).unlink(missing_ok=True)
                    if key in listed:
                        self.rejected[key] = listed[key]
        return len(fresh)

    def _safe_key(self, key: str) -> bool:
        """A key that names a file inside this copy; any other (`a/../../x`, `/etc/x`) is skipped, with a warning."""
        if safe_relative(key) and not _UPLOADING.search(key):
            return True
        if not _UPLOADING.search(key):
            log.warning("%s holds the key %r, which would leave the storage folder; ignored", self.remote.uri, key)
        return False

    def _came_from_store(self, key: str, path: Path) -> bool:
        """A file a pull brought (so the store's word goes), or an old one; never one this process has just
        written and may still be uploading (another thread's pull must not take it from under the upload)."""
        return key in self.seen or path.stat().st_mtime < time.time() - FRESH_WRITE_SECONDS

    def fresh(self, path: Path) -> None:
        """Start a unit of work (a cell, a transfer job) from what the store holds, not from an older copy."""
        self.drop(path)
        self.pull(path)

    def drop(self, path: Path) -> None:
        """Free a finished unit's scratch copy (the store holds all of it)."""
        shutil.rmtree(path, ignore_errors=True)
        with self.lock:
            for key in [k for k in self.seen if k.startswith(self.rel(Path(path)) + "/")]:
                del self.seen[key]

    def wrote(self, path: Path) -> None:
        key = self.rel(path)
        self.remote.put(key, path)
        self.seen.pop(key, None)  # the next pull fetches its stamp (one download, of our own bytes)

    def removed(self, path: Path) -> None:
        self.remote.delete(self.rel(path))
        self.seen.pop(self.rel(path), None)

    def removed_tree(self, path: Path) -> None:
        self.remote.delete_tree(self.rel(path))


def _excluded(key: str, prefix: str, exclude: tuple[str, ...]) -> bool:
    parts = key[len(prefix):].strip("/").split("/") if prefix else key.split("/")
    return any(part in exclude for part in parts[:-1])


def scratch_base() -> Path:
    return Path(os.environ.get(SCRATCH_ENV) or Path(tempfile.gettempdir()) / f"lnsub-scratch-{os.getuid()}")


def open_mirror(uri: str) -> Mirror:
    """This process's scratch copy of the store at `uri` (checked reachable first: one line if it is not)."""
    remote = Remote.open(uri)
    remote.check()
    base = scratch_base() / hashlib.sha256(uri.encode()).hexdigest()[:12]
    _reap_dead(base)
    root = (base / f"p{os.getpid()}").absolute()
    root.mkdir(parents=True, exist_ok=True)
    (root.parent / "STORE").write_text(uri + "\n")  # for a person looking at the scratch folder
    return Mirror(remote, root)


def _reap_dead(base: Path) -> None:
    """Scratch copies of processes that are gone: the store holds all they committed."""
    import psutil

    if not base.is_dir():
        return
    for d in base.glob("p*"):
        with contextlib.suppress(ValueError, OSError):
            pid = int(d.name[1:])
            if pid != os.getpid() and not psutil.pid_exists(pid):
                shutil.rmtree(d, ignore_errors=True)
