"""BERT and mT5 cells load through the real loaders with PyTorch's SDPA attention, and torch.compile (spec.compile)
gives the eager losses and gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from lnsub.trainables.spec import make_spec
from lnsub.trainables.tasks import get_task
from lnsub.trainables.tasks.mlm import predict_masked_only
from lnsub.trainables.tasks.xnli import XNLIText2Text
from lnsub.trainables.train import compile_model


def tiny_bert_folder(path):
    from transformers import BertConfig, BertForPreTraining

    config = BertConfig(vocab_size=90, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=64)
    BertForPreTraining(config).save_pretrained(path)  # as the hub's mBERT checkpoint: encoder, pooler, MLM head
    return str(path)


def tiny_mt5_folder(path):
    from transformers import MT5Config, MT5ForConditionalGeneration

    config = MT5Config(vocab_size=90, d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=8,
                       decoder_start_token_id=0)
    MT5ForConditionalGeneration(config).save_pretrained(path)
    return str(path)


@pytest.fixture
def sdpa_calls(monkeypatch):
    """Counts calls of torch's scaled_dot_product_attention (transformers' SDPA path looks it up at each call)."""
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
    return calls


@pytest.mark.parametrize("task", ["mlm", "ner", "xnli"])
def test_bert_cells_run_sdpa(task, tmp_path, sdpa_calls):
    model = get_task(task).load_model(tiny_bert_folder(tmp_path))
    assert model.config._attn_implementation == "sdpa"
    ids = torch.randint(5, 90, (2, 12))
    model(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert len(sdpa_calls) == 2  # one per layer


def test_mt5_cells_run_sdpa(tmp_path, sdpa_calls):
    model = XNLIText2Text().load_model(tiny_mt5_folder(tmp_path))
    assert model.config._attn_implementation == "sdpa"
    ids = torch.randint(2, 90, (2, 10))
    model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.randint(2, 90, (2, 3)))
    assert len(sdpa_calls) == 2 + 2 * 2  # encoder self-attention; decoder self- and cross-attention


def _loss_and_grads(model, batch):
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("task", ["ner", "mlm"])
def test_compiled_model_matches_eager(task, tmp_path):
    """Tolerance: relative 1e-4 (absolute 1e-5 on gradients): inductor reorders fp32 sums, nothing else changes."""
    assert make_spec("ner", "syn-en", steps=2, compile=True).compile
    torch.manual_seed(0)
    eager = get_task(task).load_model(tiny_bert_folder(tmp_path))
    eager.train()
    for module in eager.modules():  # dropout off: the same function on both sides
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    compiled = copy.deepcopy(eager)
    compile_model(compiled)
    compile_model(compiled)  # once only
    names = [n for n, _ in compiled.named_parameters()]
    assert names == [n for n, _ in eager.named_parameters()]  # compiled in place: names unchanged
    ids = torch.randint(5, 90, (3, 16))
    labels = (torch.where(torch.rand(3, 16) < 0.3, ids, -100) if task == "mlm" else torch.randint(0, 7, (3, 16)))
    labels[0, 1] = ids[0, 1] if task == "mlm" else labels[0, 1]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    for _ in range(2):  # the second call runs the compiled graph without recompiling
        expected_loss, expected = _loss_and_grads(eager, batch)
        loss, got = _loss_and_grads(compiled, batch)
        torch.testing.assert_close(loss, expected_loss, rtol=1e-4, atol=1e-6)
        for name, grad in expected.items():
            torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-5, msg=name)
    if task == "mlm":
        assert predict_masked_only(compiled)  # the masked-positions head still applies under compile
