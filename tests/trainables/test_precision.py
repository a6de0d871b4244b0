"""The GPU path's precision choices, checked on the CPU: bf16 autocast keeps pruned weights at exactly zero,
bf16 falls back to fp32 where a GPU lacks it, and batches lose only an attention mask that masks nothing."""

from __future__ import annotations

import logging

import pytest
import torch

from lnsub.trainables import loading
from lnsub.trainables.imp import Hooks, run_cell
from lnsub.trainables.loading import make_accelerator, resolve_precision
from lnsub.trainables.masks import load_masks
from lnsub.trainables.spec import make_spec
from lnsub.trainables.store import CellStore
from lnsub.trainables.train import _UnpaddedMaskDropped

BF16 = {"lr": 1e-3, "batch_size": 16, "max_length": 32, "levels": 1, "prune_fraction": 0.5, "steps": 6,
        "train_size": 200, "valid_size": 32, "mixed_precision": "bf16"}


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one precision per process: start and leave the state blank around a bf16 run."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _record_linear_dtypes(model, seen: set) -> None:
    query = next(m for n, m in model.named_modules() if n.endswith("layer.0.attention.self.query"))
    if not getattr(query, "_dtype_hook", False):
        query.register_forward_hook(lambda mod, args, out: seen.add(out.dtype))
        query._dtype_hook = True


def test_bf16_autocast_keeps_pruned_weights_exactly_zero(tmp_path, tiny_model, fresh_accelerate_state):
    spec = make_spec("ner", "syn-en", **BF16)
    starts, trained, dtypes = {}, {}, set()

    def start(level, model):
        _record_linear_dtypes(model, dtypes)
        starts[level] = {n: p.detach().clone() for n, p in model.named_parameters()}

    hooks = Hooks(level_start=start,
                  level_trained=lambda k, m: trained.__setitem__(k, {n: p.detach().clone()
                                                                     for n, p in m.named_parameters()}))
    accelerator = make_accelerator(spec)
    assert accelerator.mixed_precision == "bf16"
    run_cell(spec, tmp_path, accelerator, hooks=hooks)
    assert torch.bfloat16 in dtypes  # the matmuls really ran in bf16 ...
    masks = load_masks(CellStore(tmp_path, spec).level_dir(1))
    pruned = sum(int((~m).sum()) for m in masks.values())
    assert pruned == sum(m.numel() for m in masks.values()) // 2
    for name, mask in masks.items():
        weight = trained[1][name]
        assert weight.dtype == torch.float32  # ... over fp32 master weights
        assert torch.equal(weight[~mask], torch.zeros_like(weight[~mask])), name  # exactly 0.0, not 1e-40
        assert not torch.equal(weight[mask], starts[1][name][mask]), name  # the live weights trained


def test_bf16_falls_back_to_fp32_on_a_gpu_without_it(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Quadro RTX 8000")
    with caplog.at_level(logging.WARNING, logger=loading.__name__):
        assert resolve_precision("bf16", cuda=True) == "no"
    assert "no native bf16" in caplog.text and "Quadro RTX 8000" in caplog.text
    assert resolve_precision("no", cuda=True) == "no"
    assert resolve_precision("bf16", cuda=False) == "bf16"  # PyTorch autocasts to bf16 on any CPU


def test_bf16_is_kept_on_a_gpu_that_has_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_precision("bf16", cuda=True) == "bf16"


def test_only_an_attention_mask_of_all_ones_is_dropped():
    def collate(examples):
        return {"input_ids": torch.tensor(examples), "attention_mask": torch.tensor(examples) > 0}

    full = _UnpaddedMaskDropped(collate)([[1, 2], [3, 4]])
    assert set(full) == {"input_ids"}
    padded = _UnpaddedMaskDropped(collate)([[1, 2], [3, 0]])
    assert set(padded) == {"input_ids", "attention_mask"}
