"""Pretrained tiny models that ship inside the package, so the smoke grid's first run (the tiny BERT) and the
one-shot decoder grids' (the tiny decoder and its decoupled control) pretrain nothing.

A shipped model is a folder `shipped/<config id>/` holding exactly what `tinybert.pretrain` (or
`tinydecoder.pretrain`) writes (weights as safetensors, config, tokenizer, layout, pretraining report) and
`SHA256SUMS` (the format `sha256sum -c` reads). `ensure_tiny_model` (and `ensure_tiny_decoder`) copies it
into the cache when the configuration's hash names it; a file whose sha256 differs from the list is refused
with a one-line error, and the model is pretrained from its configuration instead.
`scripts/ship_tiny_model.py` writes one.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from lnsub.trainables.errors import LnsubError
from lnsub.trainables.storage.local import atomic_dir, build_lock, is_built

SHIPPED = Path(__file__).parent / "shipped"
SUMS = "SHA256SUMS"
log = logging.getLogger(__name__)


class TamperedModel(LnsubError):
    """A shipped model's file does not match its recorded sha256."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_sums(folder: Path) -> dict[str, str]:
    """{file name: sha256} from a folder's SHA256SUMS."""
    sums = {}
    for line in (folder / SUMS).read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.lstrip("*")] = digest
    return sums


def verify(folder: Path) -> dict[str, str]:
    """Check every file SHA256SUMS lists, and that it lists every file; raise `TamperedModel` otherwise."""
    folder = Path(folder)
    if not (folder / SUMS).is_file():
        raise TamperedModel(f"shipped model {folder.name} has no {SUMS}: rebuild it with scripts/ship_tiny_model.py")
    sums = read_sums(folder)
    present = {p.name for p in folder.iterdir() if p.is_file() and p.name != SUMS}
    if present != set(sums):
        raise TamperedModel(f"shipped model {folder.name}: files {sorted(present ^ set(sums))} are not as "
                            f"{SUMS} lists them")
    for name, digest in sums.items():
        if sha256(folder / name) != digest:
            raise TamperedModel(f"shipped model {folder.name}: {name} fails its sha256 check")
    return sums


def shipped_folder(model_id: str, root: Path = SHIPPED) -> Path | None:
    folder = Path(root) / model_id
    return folder if folder.is_dir() else None


def copy_shipped(model_id: str, into: Path, root: Path = SHIPPED) -> bool:
    """Copy the verified shipped model `model_id` into the folder `into`; False when none ships or it fails its check.

    The check runs on the copies, so a file changed between checking and copying is caught too.
    """
    folder = shipped_folder(model_id, root)
    if folder is None:
        return False
    into = Path(into)
    names = read_sums(folder) if (folder / SUMS).is_file() else {}
    for name in names:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, into / name)
    if (folder / SUMS).is_file():
        shutil.copyfile(folder / SUMS, into / SUMS)
    try:
        verify(folder)
        verify(into)
    except TamperedModel as e:
        log.error("%s; pretraining it instead", e)
        for p in into.iterdir():
            p.unlink()
        return False
    (into / SUMS).unlink()  # the cache folder is what pretraining would have written, nothing more
    return True


def write_sums(folder: Path) -> Path:
    """Record every file of a model folder in its SHA256SUMS (what `verify` checks), and check it."""
    folder = Path(folder)
    files = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != SUMS)
    (folder / SUMS).write_text("".join(f"{sha256(folder / name)}  {name}\n" for name in files))
    verify(folder)
    return folder


def ensure_model(final: Path, model_id: str, pretrain: Callable[[Path], object], what: str) -> Path:
    """The model folder `final`: built once (under its build lock, written atomically) from the verified shipped
    copy of `model_id` when one ships, else by `pretrain(folder)`; `what` names the model in the log."""
    if is_built(final):
        return final
    with build_lock(final):  # a second process (a parallel test worker, a trial) waits for the first
        if not is_built(final):
            with atomic_dir(final) as tmp:
                if copy_shipped(model_id, tmp):
                    log.info("%s %s: the shipped weights (sha256 checked), in %s", what, model_id, final)
                else:
                    log.info("pretraining the %s %s (once; cached in %s)", what, model_id, final)
                    pretrain(tmp)
    return final
