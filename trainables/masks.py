"""Mask files: one bit per prunable weight, readable with numpy alone, no pickle.

`mask.npz` (a compressed npz) holds three arrays:
    "names"   str,   the prunable parameters, in order
    "shapes"  int64, one row per parameter: its 2-D shape
    "bits"    uint8, np.packbits of every parameter's flattened mask, concatenated in
              that order (numpy's default big-endian bit order; 1 = kept)
`mask.json` beside it records the format, density, kept/total counts, the
parameter names in order, and the SHA-256 of mask.npz; a mask whose checksum
does not match is never trusted. Read one back with numpy alone:

    z = np.load("mask.npz", allow_pickle=False)
    sizes = z["shapes"].prod(axis=1)
    flat = np.unpackbits(z["bits"], count=int(sizes.sum())).astype(bool)
    masks = {n: m.reshape(s) for n, s, m in zip(z["names"], z["shapes"], np.split(flat, np.cumsum(sizes)[:-1]))}
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import torch

from lnsub.trainables.storage import Storage, read_json
from lnsub.trainables.storage.layout import sha256_file

FORMAT = "lnsub-mask/2"
MASK_FILE, MASK_META = "mask.npz", "mask.json"


class CorruptMask(Exception):
    """A mask file that is missing, truncated or does not match its checksum."""


def pack(masks: dict[str, torch.Tensor]) -> bytes:
    names = list(masks)
    shapes = np.asarray([tuple(masks[n].shape) for n in names], dtype=np.int64)
    if shapes.ndim != 2 or shapes.shape[1] != 2:
        raise ValueError("mask files hold 2-D weight matrices only")
    flat = np.concatenate([masks[n].detach().cpu().numpy().astype(bool).ravel() for n in names])
    buf = io.BytesIO()
    # deflate: the names shrink ~10x, and sparse masks carry less than a bit per weight
    np.savez_compressed(buf, names=np.asarray(names, dtype=str), shapes=shapes, bits=np.packbits(flat))
    return buf.getvalue()


def digest(masks: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the packed mask: equal digests, the same kept weights in the same parameters."""
    return hashlib.sha256(pack(masks)).hexdigest()


def save_masks(storage: Storage, folder: str | Path, masks: dict[str, torch.Tensor], **extra) -> dict:
    """Write mask.npz then mask.json through `storage`, each atomically; the json (with the checksum) comes last."""
    folder = Path(folder)
    data = pack(masks)
    storage.write_bytes(folder / MASK_FILE, data)
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    meta = {"format": FORMAT, "density": kept / total, "sparsity": 1 - kept / total, "kept": kept, "total": total,
            "names": list(masks), "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
            "bits_per_weight": 8 * len(data) / total, **extra}
    storage.write_json(folder / MASK_META, meta)
    return meta


def mask_meta(folder: str | Path) -> dict:
    return read_json(Path(folder) / MASK_META)


def verify(folder: str | Path) -> dict:
    """The mask's metadata, if the file exists and matches its checksum; else CorruptMask.

    A transient read error (an OSError other than a missing file) propagates as itself.
    """
    folder = Path(folder)
    try:
        meta = mask_meta(folder)
        ok = meta.get("format") == FORMAT and sha256_file(folder / MASK_FILE) == meta["sha256"]
    except (FileNotFoundError, ValueError, KeyError) as e:  # other OSErrors are the storage's, not the file's
        raise CorruptMask(f"{folder}: {e}") from e
    if not ok:
        raise CorruptMask(f"{folder / MASK_FILE} does not match its checksum")
    return meta


def iter_masks(folder: str | Path, check: bool = True):
    """Yield (name, bool ndarray) in the file's order."""
    folder = Path(folder)
    if check:
        verify(folder)
    with np.load(folder / MASK_FILE, allow_pickle=False) as z:
        names, shapes, bits = [str(n) for n in z["names"]], z["shapes"], z["bits"]
    sizes = shapes.prod(axis=1)
    flat = np.unpackbits(bits, count=int(sizes.sum())).astype(bool)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    for i, name in enumerate(names):
        yield name, flat[offsets[i]:offsets[i + 1]].reshape(tuple(int(d) for d in shapes[i]))


def load_masks(folder: str | Path, check: bool = True) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(m) for name, m in iter_masks(folder, check)}


def load_packed(folder: str | Path, check: bool = True) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(names, shapes, packed bits of the whole prunable set) without unpacking, for popcount analyses."""
    folder = Path(folder)
    if check:
        verify(folder)
    with np.load(folder / MASK_FILE, allow_pickle=False) as z:
        return [str(n) for n in z["names"]], z["shapes"], z["bits"]
