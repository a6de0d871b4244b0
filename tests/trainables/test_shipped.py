"""The tiny models that ship with lnsub (the smoke grid's tiny BERT; the one-shot decoder grids' tiny decoder and
its decoupled control): their files match their recorded sha256, a changed file is refused, and they are what
the grids' cells load, with no pretraining on the way."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from lnsub.orchestrator.grid import plan
from lnsub.trainables import providers
from lnsub.trainables.testbed import shipped, tinybert, tinydecoder
from lnsub.trainables.testbed.generate import TestbedConfig

SMOKE = plan("smoke").cells[0].spec
FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "testbed_layout.json",
         "pretrain.json"}
DECODER_GRIDS = ("oneshot-decoder", "oneshot-decoder-control")
DECODER_FILES = FILES | {"generation_config.json"}


def shipped_smoke() -> Path:
    folder = shipped.shipped_folder(SMOKE.model_revision)
    assert folder is not None, f"no shipped model for the smoke grid's {SMOKE.model_revision}"
    return folder


def _revision(grid: str) -> str:
    if grid == "tests":  # the tests' tiny_model fixture: the default configuration (1500 steps)
        return tinybert.TinyBertConfig().id
    [revision] = {c.spec.model_revision for c in plan(grid).cells}
    return revision


@pytest.mark.parametrize("grid", ["smoke", "tests", *DECODER_GRIDS])
def test_each_grid_names_a_shipped_model_whose_files_match_their_sums(grid):
    revision = _revision(grid)
    folder = shipped.shipped_folder(revision)
    assert folder is not None, f"no shipped model for the {grid} grid's {revision}"
    files = DECODER_FILES if grid in DECODER_GRIDS else FILES
    assert {p.name for p in folder.iterdir()} == files | {shipped.SUMS}
    # the reference is coreutils' sha256sum, not the module's own hashing
    if shutil.which("sha256sum"):
        done = subprocess.run(["sha256sum", "--check", "--strict", shipped.SUMS], cwd=folder,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.count(": OK") == len(files)
    assert set(shipped.verify(folder)) == files
    assert sum(p.stat().st_size for p in folder.iterdir()) < 5e6  # a few MB in the repository, no more
    assert tinybert.read_json(folder / tinybert.PRETRAIN_REPORT)["id"] == revision


def _tampered_copy(tmp_path: Path, name: str, model_id: str = SMOKE.model_revision) -> Path:
    root = tmp_path / "shipped"
    shutil.copytree(shipped.shipped_folder(model_id), root / model_id)
    target = root / model_id / name
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


@pytest.mark.parametrize("family", ["tinybert", "tinydecoder"])
def test_a_refused_model_is_pretrained_instead(tmp_path, monkeypatch, family):
    module = {"tinybert": tinybert, "tinydecoder": tinydecoder}[family]
    config = _smoke_config() if family == "tinybert" else tinydecoder.TinyDecoderConfig()
    root = _tampered_copy(tmp_path, "model.safetensors", config.id)
    copy = shipped.copy_shipped
    monkeypatch.setattr(shipped, "copy_shipped", lambda model_id, into: copy(model_id, into, root))
    calls = []

    def pretrain(config, out):
        calls.append(config.id)
        (out / "model.safetensors").write_bytes(b"rebuilt")

    monkeypatch.setattr(module, "pretrain", pretrain)
    ensure = tinybert.ensure_tiny_model if family == "tinybert" else tinydecoder.ensure_tiny_decoder
    folder = ensure(config, root=tmp_path / "cache")
    assert calls == [config.id]
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


def test_the_decoder_grids_load_the_shipped_decoders_without_pretraining(tmp_path, monkeypatch):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    specs = [c.spec for grid in DECODER_GRIDS for c in plan(grid).cells]
    cache = tmp_path / "cache"
    cache.mkdir()
    _link_testbed(cache, specs[0])
    monkeypatch.setenv("LNSUB_CACHE", str(cache))

    def no_pretraining(config, out):
        raise AssertionError(f"pretrained {config.id}")

    monkeypatch.setattr(tinydecoder, "pretrain", no_pretraining)
    providers.prepare(specs)
    models = {s.model: s for s in specs}
    assert set(models) == {"testbed-decoder", "testbed-decoder-decoupled"}
    for spec in models.values():
        path = Path(providers.model_provider(spec.model).path(spec))
        assert path == cache / spec.model_revision
        source = shipped.shipped_folder(spec.model_revision)
        for name in DECODER_FILES:
            assert (path / name).read_bytes() == (source / name).read_bytes(), (spec.model, name)
        state = AutoModelForCausalLM.from_pretrained(path).state_dict()
        weights = load_file(source / "model.safetensors")
        assert all(state[k].equal(v) for k, v in weights.items())
        assert tinybert.read_json(path / tinybert.PRETRAIN_REPORT)["config"]["decoupled"] == \
            (spec.model == "testbed-decoder-decoupled")
