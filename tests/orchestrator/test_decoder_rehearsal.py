"""The decoder rehearsal's path offline: a Qwen2-architecture model (random weights, the rehearsal's byte-level BPE,
no beginning-of-sequence token, two of Qwen2.5-0.5B's blocks) on hub-faithful copies, one-shot cells of clm (the
carved Wikipedia copy) and of zero-shot XNLI through run_cell, and the rehearsal grid planned from the folder."""

from __future__ import annotations

import pytest

from lnsub.orchestrator.grid import plan
from lnsub.orchestrator.rehearsal.decoder import QWEN_ARCHITECTURE, ensure_decoder_rehearsal
from lnsub.trainables import pruning
from lnsub.trainables.imp import run_cell
from lnsub.trainables.spec import make_spec
from lnsub.trainables.store import CellStore

pytestmark = pytest.mark.slow


def test_decoder_rehearsal_runs_oneshot_cells_offline(tmp_path, monkeypatch):
    paths = ensure_decoder_rehearsal(tmp_path / "lnsub-rehearsal-decoder", layers=2)
    common = {"model": str(paths["model"]), "data_dir": str(paths["data"]), "levels": 1, "prune_fraction": 0.5,
              "max_length": 64, "batch_size": 4, "calibration_samples": 2}
    clm = make_spec("clm", "en", method="sparsegpt", train_size=40, valid_size=3, **common)
    nli = make_spec("xnli-zeroshot", "en", method="wanda", sparsity_pattern="2:4", train_size=20, valid_size=6,
                    **common)
    for spec in (clm, nli):
        result = run_cell(spec, tmp_path / "store")
        masks = CellStore(tmp_path / "store", spec).load_mask(1)
        assert len(masks) == 2 * 7 and pruning.density(masks) == pytest.approx(0.5)
        assert result.levels[1]["sparsity"] == 0.5
    h, f = QWEN_ARCHITECTURE["hidden_size"], QWEN_ARCHITECTURE["intermediate_size"]
    kv = h // QWEN_ARCHITECTURE["num_attention_heads"] * QWEN_ARCHITECTURE["num_key_value_heads"]
    assert sum(m.numel() for m in masks.values()) == 2 * (2 * h * h + 2 * h * kv + 3 * h * f)
    scores = CellStore(tmp_path / "store", clm).all_metrics()
    assert scores[0]["tokens"] > 0 and scores[1]["perplexity"] > 1
    assert 0 <= CellStore(tmp_path / "store", nli).all_metrics()[1]["accuracy"] <= 1
    monkeypatch.chdir(tmp_path)
    p = plan("rehearsal-decoder")
    assert len(p.cells) == 2 * 6 + 6 and [(s.task, s.language) for s in p.skipped] == [("xnli-zeroshot", "fa")]
