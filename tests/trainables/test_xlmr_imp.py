"""XLM-R through the IMP path end to end, on a tiny XLM-R-shaped model (random weights, the tiny BERT's tokenizer):
the prunable set is BERT's six matrices per layer under roberta., each level keeps exactly 1 - k x 20% of them,
starts from θ0 ⊙ mask with the classifier carried over, and a second run does nothing."""

from __future__ import annotations

import pytest
import torch

from lnsub.trainables import pruning
from lnsub.trainables.imp import Hooks, run_cell
from lnsub.trainables.spec import make_spec
from lnsub.trainables.store import CellStore

pytestmark = pytest.mark.slow
HIDDEN, FFN, LAYERS = 32, 64, 2


def _tiny_xlmr(folder, tokenizer_dir) -> None:
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = XLMRobertaConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                              num_attention_heads=2, intermediate_size=FFN, max_position_embeddings=128,
                              pad_token_id=tokenizer.pad_token_id, type_vocab_size=1)
    XLMRobertaForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def test_xlmr_runs_through_imp(tmp_path, tiny_model):
    folder = tmp_path / "tiny-xlmr"
    _tiny_xlmr(folder, tiny_model)
    spec = make_spec("ner", "syn-en", model=str(folder), steps=6, lr=1.0e-3, batch_size=8, max_length=32,
                     train_size=64, valid_size=32, levels=2, prune_fraction=0.2)
    starts: dict[int, dict] = {}
    hooks = Hooks(level_start=lambda level, model: starts.__setitem__(
        level, {k: v.detach().clone() for k, v in model.state_dict().items()}))
    result = run_cell(spec, tmp_path / "store", hooks=hooks)
    store = CellStore(tmp_path / "store", spec)
    masks = {k: store.load_mask(k) for k in range(3)}
    names = sorted(masks[1])
    expected = sorted(f"roberta.encoder.layer.{i}.{m}.weight" for i in range(LAYERS) for m in (
        "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
        "intermediate.dense", "output.dense"))
    assert names == expected  # no embeddings, LayerNorms, biases, classifier (XLM-R's NER has no pooler)
    total = LAYERS * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * FFN)
    assert sum(m.numel() for m in masks[1].values()) == total
    for k in range(3):
        assert sum(int(m.sum()) for m in masks[k].values()) == round(total * (1 - 0.2 * k))
        assert result.levels[k]["sparsity"] == pytest.approx(0.2 * k)
    theta0 = starts[0]
    for k in (1, 2):  # every level starts from θ0 ⊙ mask; the classifier carries over from the level before
        for name, value in starts[k].items():
            if name.startswith("roberta."):
                expect = theta0[name] * masks[k][name] if name in masks[k] else theta0[name]
                assert torch.equal(value, expect), name
        head = store.load_head(k - 1)
        assert all(torch.equal(starts[k][n], head[n]) for n in head) and any(n.startswith("classifier.") for n in head)
    assert not torch.equal(starts[1]["classifier.weight"], theta0["classifier.weight"])
    again = run_cell(spec, tmp_path / "store")
    assert again.steps_trained == 0 and again.levels == result.levels
    assert {p.name for p in pruning.prunable_parameters(_reload(folder))} == set(n for n in expected)


def _reload(folder):
    from transformers import AutoModelForTokenClassification

    return AutoModelForTokenClassification.from_pretrained(folder, num_labels=7)
