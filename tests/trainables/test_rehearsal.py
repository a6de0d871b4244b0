"""The mBERT-shaped rehearsal: its architecture is mBERT's, its prunable set has mBERT's size, and the
`rehearsal` grid plans the `full` grid's path (absolute local folders, real language codes, fa's XNLI skipped).

The counts are checked against figures computed independently of lnsub's pruning rule: the closed form
L x (4 h^2 + 2 h i) for the encoder's six matrices per layer, h^2 for the pooler, and a plain walk over
`named_parameters()` by name.
"""

from __future__ import annotations

import json

import pytest
import torch

from lnsub.orchestrator.grid import plan
from lnsub.trainables.errors import LnsubError
from lnsub.trainables.pruning import prunable_count, prunable_parameters
from lnsub.orchestrator.rehearsal.build import MBERT_ARCHITECTURE, ensure_rehearsal, mbert_config

MBERT_VOCAB = 119_547
ENCODER_WEIGHTS = 84_934_656  # the figure for mBERT's encoder
POOLER_WEIGHTS = 589_824
MATRICES = ("attention.self.query.weight", "attention.self.key.weight", "attention.self.value.weight",
            "attention.output.dense.weight", "intermediate.dense.weight", "output.dense.weight")


def _walk(model) -> int:
    """Prunable weights found by name alone: encoder-layer matrices and the pooler's, never a head's."""
    total = 0
    for name, p in model.named_parameters():
        parts = name.split(".")
        in_layer = "encoder" in parts and "layer" in parts and name.split("layer.", 1)[1].split(".", 1)[1] in MATRICES
        if in_layer or name.endswith("pooler.dense.weight"):
            total += p.numel()
    return total


def test_mbert_architecture_is_the_hubs():
    # bert-base-multilingual-cased's config.json, as published
    assert MBERT_ARCHITECTURE["hidden_size"] == 768
    assert MBERT_ARCHITECTURE["num_hidden_layers"] == 12
    assert MBERT_ARCHITECTURE["num_attention_heads"] == 12
    assert MBERT_ARCHITECTURE["intermediate_size"] == 3072
    assert MBERT_ARCHITECTURE["max_position_embeddings"] == 512
    h, i, layers = 768, 3072, 12
    assert layers * (4 * h * h + 2 * h * i) == ENCODER_WEIGHTS
    assert h * h == POOLER_WEIGHTS


@pytest.mark.parametrize("head", ["BertForMaskedLM", "BertForTokenClassification", "BertForSequenceClassification"])
def test_mbert_prunable_counts_on_the_meta_device(head):
    """At mBERT's true vocabulary, built on the meta device (no memory): MLM and NER prune the encoder's
    84,934,656 weights; XNLI adds the pooler's 589,824 (only its head reads the pooler; the others have none)."""
    import transformers

    with torch.device("meta"):
        model = getattr(transformers, head)(mbert_config(MBERT_VOCAB))
    params = prunable_parameters(model)
    counted = prunable_count(params)
    assert counted == ENCODER_WEIGHTS + (POOLER_WEIGHTS if head == "BertForSequenceClassification" else 0)
    assert counted == _walk(model)
    assert all("embeddings" not in p.name and "classifier" not in p.name and "cls." not in p.name for p in params)


def test_rehearsal_grid_without_its_model_is_one_line_naming_the_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LnsubError) as e:
        plan("rehearsal")
    assert "lnsub rehearsal" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
def test_rehearsal_builds_once_loads_like_a_hub_checkpoint_and_plans(tmp_path, monkeypatch):
    from safetensors import safe_open

    from lnsub.trainables.tasks import get_task

    monkeypatch.chdir(tmp_path)
    paths = ensure_rehearsal("lnsub-rehearsal")
    weights = paths["model"] / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert ensure_rehearsal("lnsub-rehearsal") == paths and weights.stat().st_mtime_ns == stamp  # cached
    config = json.loads((paths["model"] / "config.json").read_text())
    assert {k: config[k] for k in MBERT_ARCHITECTURE} == MBERT_ARCHITECTURE
    with safe_open(weights, "pt") as f:
        saved_pooler = f.get_tensor("bert.pooler.dense.weight")
        assert any(k.startswith("cls.predictions.") for k in f.keys())
    for task, expected in (("mlm", ENCODER_WEIGHTS), ("ner", ENCODER_WEIGHTS),
                           ("xnli", ENCODER_WEIGHTS + POOLER_WEIGHTS)):
        model = get_task(task).load_model(str(paths["model"]))
        assert prunable_count(prunable_parameters(model)) == expected
        if task == "xnli":  # the pooler comes from the checkpoint, as mBERT's does, not a fresh draw
            assert torch.equal(model.bert.pooler.dense.weight, saved_pooler)
        del model
    p = plan("rehearsal")
    assert {(c.spec.task, c.spec.language) for c in p.cells} == {
        (t, lang) for t in ("mlm", "ner", "xnli") for lang in ("en", "fr", "fa")} - {("xnli", "fa")}
    assert [(s.task, s.language) for s in p.skipped] == [("xnli", "fa")]
    assert {c.spec.model for c in p.cells} == {str(paths["model"])}
    assert {c.spec.data_dir for c in p.cells} == {str(paths["data"])}
    assert {c.spec.mixed_precision for c in p.cells} == {"bf16"}  # as full's
