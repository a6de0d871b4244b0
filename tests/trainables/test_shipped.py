"""The tiny BERT that ships with lnsub: its files match their recorded sha256, a changed file is refused,
and it is what the smoke grid's cells load, with no pretraining on the way."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from lnsub.orchestrator.grid import plan
from lnsub.trainables import providers
from lnsub.trainables.testbed import shipped, tinybert
from lnsub.trainables.testbed.generate import TestbedConfig

SMOKE = plan("smoke").cells[0].spec
FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "testbed_layout.json",
         "pretrain.json"}


def shipped_smoke() -> Path:
    folder = shipped.shipped_folder(SMOKE.model_revision)
    assert folder is not None, f"no shipped model for the smoke grid's {SMOKE.model_revision}"
    return folder


def test_the_smoke_grid_names_a_shipped_model_whose_files_match_their_sums():
    folder = shipped_smoke()
    assert {p.name for p in folder.iterdir()} == FILES | {shipped.SUMS}
    # the reference is coreutils' sha256sum, not the module's own hashing
    if shutil.which("sha256sum"):
        done = subprocess.run(["sha256sum", "--check", "--strict", shipped.SUMS], cwd=folder,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.count(": OK") == len(FILES)
    assert set(shipped.verify(folder)) == FILES
    assert sum(p.stat().st_size for p in folder.iterdir()) < 5e6  # a few MB in the repository, no more
    assert tinybert.read_json(folder / tinybert.PRETRAIN_REPORT)["id"] == SMOKE.model_revision


def _tampered_copy(tmp_path: Path, name: str) -> Path:
    root = tmp_path / "shipped"
    shutil.copytree(shipped_smoke(), root / SMOKE.model_revision)
    target = root / SMOKE.model_revision / name
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit
    target.write_bytes(bytes(data))
    return root


@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json"])
def test_a_changed_file_is_refused(tmp_path, caplog, name):
    root = _tampered_copy(tmp_path, name)
    with pytest.raises(shipped.TamperedModel, match=f"{name} fails its sha256 check"):
        shipped.verify(root / SMOKE.model_revision)
    into = tmp_path / "into"
    into.mkdir()
    with caplog.at_level(logging.ERROR, logger=shipped.__name__):
        assert not shipped.copy_shipped(SMOKE.model_revision, into, root=root)
    assert list(into.iterdir()) == []  # nothing of the refused copy is left to be trusted
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "\n" not in record.getMessage() and name in record.getMessage()


def test_an_extra_or_missing_file_is_refused(tmp_path):
    root = tmp_path / "shipped"
    folder = root / SMOKE.model_revision
    shutil.copytree(shipped_smoke(), folder)
    (folder / "vocab.txt").write_text("x\n")
    with pytest.raises(shipped.TamperedModel, match="vocab.txt"):
        shipped.verify(folder)
    (folder / "vocab.txt").unlink()
    (folder / "tokenizer.json").unlink()
    with pytest.raises(shipped.TamperedModel, match="tokenizer.json"):
        shipped.verify(folder)


def test_a_refused_model_is_pretrained_instead(tmp_path, monkeypatch):
    root = _tampered_copy(tmp_path, "model.safetensors")
    monkeypatch.setattr(tinybert, "copy_shipped", lambda model_id, into: shipped.copy_shipped(model_id, into, root))
    calls = []

    def pretrain(config, out):
        calls.append(config.id)
        (out / "model.safetensors").write_bytes(b"rebuilt")

    monkeypatch.setattr(tinybert, "pretrain", pretrain)
    folder = tinybert.ensure_tiny_model(_smoke_config(), root=tmp_path / "cache")
    assert calls == [SMOKE.model_revision]
    assert (folder / "model.safetensors").read_bytes() == b"rebuilt"


def _smoke_config():
    from lnsub.trainables.testbed.provider import bert_config

    return bert_config(SMOKE)


def _link_testbed(cache: Path, spec) -> None:
    """The cached twins' data (no model in it) into a fresh cache, so that the test generates nothing."""
    from lnsub.trainables.testbed.generate import cache_root

    config = TestbedConfig(seed=spec.testbed_seed, noise=spec.testbed_noise, anchor_fraction=spec.testbed_anchor_fraction)
    built = cache_root() / config.id
    if tinybert.is_built(built):
        (cache / config.id).symlink_to(built)


def test_the_smoke_grid_loads_the_shipped_model_without_pretraining(tmp_path, monkeypatch):
    from transformers import AutoModelForMaskedLM
    from safetensors.torch import load_file

    specs = [c.spec for c in plan("smoke").cells]
    assert {s.model_revision for s in specs} == {SMOKE.model_revision}
    cache = tmp_path / "cache"
    cache.mkdir()
    _link_testbed(cache, SMOKE)
    monkeypatch.setenv("LNSUB_CACHE", str(cache))

    def no_pretraining(config, out):
        raise AssertionError(f"pretrained {config.id}")

    monkeypatch.setattr(tinybert, "pretrain", no_pretraining)
    providers.prepare(specs)
    path = Path(providers.model_provider(SMOKE.model).path(SMOKE))
    assert path == cache / SMOKE.model_revision
    for name in FILES:
        assert (path / name).read_bytes() == (shipped_smoke() / name).read_bytes(), name
    model = AutoModelForMaskedLM.from_pretrained(path)
    weights = load_file(shipped_smoke() / "model.safetensors")
    state = model.state_dict()
    assert all(state[k].equal(v) for k, v in weights.items() if k in state)
    assert sum(k in state for k in weights) >= len(weights) - 1  # the tied decoder may be stored once
