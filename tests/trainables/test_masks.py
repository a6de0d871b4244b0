"""Mask files: one bit per weight, numpy-readable without pickle, checksummed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lnsub.trainables import masks as maskio
from lnsub.trainables.storage import Storage


def _random_masks(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"enc.q.weight": torch.rand(64, 48, generator=g) > 0.3, "enc.o.weight": torch.rand(37, 5, generator=g) > 0.5}


def test_round_trip_and_metadata(tmp_path):
    m = _random_masks()
    meta = maskio.save_masks(Storage.open(tmp_path), tmp_path, m, level=2)
    back = maskio.load_masks(tmp_path)
    assert list(back) == list(m)
    assert all(torch.equal(back[n], m[n]) for n in m)
    kept = sum(int(v.sum()) for v in m.values())
    assert meta["kept"] == kept and meta["total"] == 64 * 48 + 37 * 5
    assert json.loads((tmp_path / "mask.json").read_text())["density"] == pytest.approx(kept / meta["total"])


def test_readable_with_numpy_alone_as_the_readme_says(tmp_path):
    m = _random_masks(1)
    maskio.save_masks(Storage.open(tmp_path), tmp_path, m)
    z = np.load(tmp_path / "mask.npz", allow_pickle=False)  # the recipe of the README, verbatim
    sizes = z["shapes"].prod(axis=1)
    flat = np.unpackbits(z["bits"], count=int(sizes.sum())).astype(bool)
    masks = {n: x.reshape(s) for n, s, x in zip(z["names"], z["shapes"], np.split(flat, np.cumsum(sizes)[:-1]))}
    assert list(masks) == list(m)
    for name, expected in m.items():
        assert np.array_equal(masks[name], expected.numpy())


def test_about_one_bit_per_weight(tmp_path):
    shapes = [(64, 64)] * 4 + [(128, 64), (64, 128)]  # the tiny model's six matrices per layer, 4 layers
    small = {f"layer{i}.m{j}.weight": torch.rand(s) > 0.5 for i in range(4) for j, s in enumerate(shapes)}
    meta = maskio.save_masks(Storage.open(tmp_path), tmp_path / "small", small)
    assert meta["bits_per_weight"] == pytest.approx(8 * (tmp_path / "small/mask.npz").stat().st_size / meta["total"])
    assert 1.0 <= meta["bits_per_weight"] < 1.1
    big = {f"layer{i}.weight": torch.rand(768, 3072) > 0.5 for i in range(2)}  # an mBERT layer's MLP
    assert 1.0 <= maskio.save_masks(Storage.open(tmp_path), tmp_path / "big", big)["bits_per_weight"] < 1.002
    sparse = {f"layer{i}.weight": torch.rand(768, 3072) > 0.9 for i in range(2)}  # 90% pruned: < 1 bit
    assert maskio.save_masks(Storage.open(tmp_path), tmp_path / "sparse", sparse)["bits_per_weight"] < 0.6


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_mask_is_detected(tmp_path, damage):
    maskio.save_masks(Storage.open(tmp_path), tmp_path, _random_masks())
    path = tmp_path / "mask.npz"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:-10] + bytes([data[-10] ^ 1]) + data[-9:])
    else:
        path.unlink()
    with pytest.raises(maskio.CorruptMask):
        maskio.load_masks(tmp_path)


def test_atomic_writes_follow_the_umask_not_mkstemps_0600(tmp_path):
    """Results on shared storage are read by other users: files get 0666 & ~umask, folders 0777 & ~umask."""
    import os
    import stat

    from lnsub.trainables.storage.local import atomic_dir, write_text

    umask = os.umask(0o022)
    os.umask(umask)
    write_text(tmp_path / "a.txt", "x")
    maskio.save_masks(Storage.open(tmp_path), tmp_path / "m", _random_masks())
    with atomic_dir(tmp_path / "d") as d:
        (d / "f").write_text("y")
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "m" / "mask.npz").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o777 & ~umask
