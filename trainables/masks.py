"""Mask files: one bit per prunable weight, readable with numpy alone, no pickle.

`mask.npz` holds, for each prunable parameter in order, two arrays:
    "<name>.bits"   uint8, np.packbits(mask.flatten()) (big-endian bit order, numpy's default)
    "<name>.shape"  int64, the parameter's shape
`mask.json` beside it records the format, density, kept/total counts, the
parameter names in order, and the SHA-256 of mask.npz; a mask whose checksum
does not match is never trusted. Read one back with:

    z = np.load("mask.npz", allow_pickle=False)
    bits = np.unpackbits(z[name + ".bits"], count=int(np.prod(z[name + ".shape"])))
    mask = bits.reshape(z[name + ".shape"]).astype(bool)
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import torch

from trainables.atomic import read_json, write_bytes, write_json

FORMAT = "lnsub-mask/1"
MASK_FILE, MASK_META = "mask.npz", "mask.json"


class CorruptMask(Exception):
    """A mask file that is missing, truncated or does not match its checksum."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pack(masks: dict[str, torch.Tensor]) -> bytes:
    arrays = {}
    for name, m in masks.items():
        arrays[f"{name}.bits"] = np.packbits(m.detach().cpu().numpy().astype(bool).ravel())
        arrays[f"{name}.shape"] = np.asarray(m.shape, dtype=np.int64)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def save_masks(folder: str | Path, masks: dict[str, torch.Tensor], **extra) -> dict:
    """Write mask.npz then mask.json, each atomically; the json (with the checksum) comes last."""
    folder = Path(folder)
    data = pack(masks)
    write_bytes(folder / MASK_FILE, data)
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    meta = {"format": FORMAT, "density": kept / total, "sparsity": 1 - kept / total, "kept": kept, "total": total,
            "names": list(masks), "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
            "bits_per_weight": 8 * len(data) / total, **extra}
    write_json(folder / MASK_META, meta)
    return meta


def mask_meta(folder: str | Path) -> dict:
    return read_json(Path(folder) / MASK_META)


def verify(folder: str | Path) -> dict:
    """The mask's metadata, if the file exists and matches its checksum; else CorruptMask."""
    folder = Path(folder)
    try:
        meta = mask_meta(folder)
        ok = meta.get("format") == FORMAT and sha256_file(folder / MASK_FILE) == meta["sha256"]
    except (OSError, ValueError, KeyError) as e:
        raise CorruptMask(f"{folder}: {e}") from e
    if not ok:
        raise CorruptMask(f"{folder / MASK_FILE} does not match its checksum")
    return meta


def iter_masks(folder: str | Path, check: bool = True):
    """Yield (name, bool ndarray) one parameter at a time, so large masks stream."""
    folder = Path(folder)
    meta = verify(folder) if check else mask_meta(folder)
    with np.load(folder / MASK_FILE, allow_pickle=False) as z:
        for name in meta["names"]:
            shape = tuple(int(s) for s in z[f"{name}.shape"])
            bits = np.unpackbits(z[f"{name}.bits"], count=int(np.prod(shape)))
            yield name, bits.reshape(shape).astype(bool)


def load_masks(folder: str | Path, check: bool = True) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(m) for name, m in iter_masks(folder, check)}


def load_packed(folder: str | Path, check: bool = True) -> dict[str, np.ndarray]:
    """The packed bits of each parameter, without unpacking (for popcount-based analyses)."""
    folder = Path(folder)
    meta = verify(folder) if check else mask_meta(folder)
    with np.load(folder / MASK_FILE, allow_pickle=False) as z:
        return {name: z[f"{name}.bits"] for name in meta["names"]}
