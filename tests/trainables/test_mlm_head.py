"""MLM's prediction head on the masked positions only: the same loss, gradients and metrics as Hugging Face's
head on every position, on one process and on two gloo workers under Accelerate's DDP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lnsub.trainables.tasks.mlm import MLM, predict_masked_only

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 97


def tiny_mlm(seed: int = 0):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return BertForMaskedLM(config)


def batch(seed: int, rows: int = 4, length: int = 24) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (rows, length), generator=g)
    labels = torch.where(torch.rand(rows, length, generator=g) < 0.15, ids, torch.full_like(ids, -100))
    labels[0, 3] = ids[0, 3]  # at least one target
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_same_loss_and_gradients_as_the_head_on_every_position():
    reference, hooked = tiny_mlm(), tiny_mlm()
    assert predict_masked_only(hooked)
    b = batch(1)
    full = reference(**b)
    full.loss.backward()
    out = hooked(**b)
    out.loss.backward()
    n_masked = int((b["labels"] != -100).sum())
    assert out.logits.shape == (n_masked, VOCAB)  # the head ran on the masked positions only
    assert full.logits.shape == (*b["input_ids"].shape, VOCAB)
    torch.testing.assert_close(out.loss, full.loss, rtol=1e-6, atol=1e-7)
    expected, got = grads(reference), grads(hooked)
    assert set(got) == set(expected) and "cls.predictions.transform.dense.weight" in got
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7, msg=name)


def test_names_module_tree_and_unlabelled_calls_are_unchanged():
    from transformers import BertForMaskedLM

    plain, hooked = tiny_mlm(), tiny_mlm()
    predict_masked_only(hooked)
    predict_masked_only(hooked)  # once only: a second call adds no second pair of hooks
    assert type(hooked) is BertForMaskedLM
    assert list(hooked.state_dict()) == list(plain.state_dict())
    assert [n for n, _ in hooked.named_modules()] == [n for n, _ in plain.named_modules()]
    b = {k: v for k, v in batch(2).items() if k != "labels"}
    torch.testing.assert_close(hooked(**b).logits, plain(**b).logits)  # no labels: every position, as before


def test_evaluation_gives_the_numbers_of_the_head_on_every_position():
    """Perplexity and masked accuracy, against the formula applied to the full logits of an unhooked copy."""
    hooked, plain = tiny_mlm(3), tiny_mlm(3)
    predict_masked_only(hooked)
    batches = [batch(s, rows=3) for s in range(4)]
    got = MLM().evaluate(hooked, batches)
    nll_sum = count = right = 0.0
    with torch.no_grad():
        for b in batches:
            logits = plain(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            keep = b["labels"] != -100
            nll_sum += torch.nn.functional.cross_entropy(logits[keep], b["labels"][keep], reduction="sum").item()
            count += int(keep.sum())
            right += int((logits[keep].argmax(-1) == b["labels"][keep]).sum())
    assert got["accuracy"] == right / count
    assert got["loss"] == pytest.approx(nll_sum / count, rel=1e-6)
    assert got["perplexity"] == pytest.approx(torch.tensor(nll_sum / count).exp().item(), rel=1e-6)


def test_the_task_loads_its_model_with_the_head_on_masked_positions(tmp_path):
    tiny_mlm().save_pretrained(tmp_path)
    model = MLM().load_model(str(tmp_path))
    out = model(**batch(4))
    assert out.logits.dim() == 2


WORKER = r"""
import json, sys
import torch
from accelerate import Accelerator
from safetensors.torch import save_file
sys.path.insert(0, sys.argv[2])
from test_mlm_head import batch, tiny_mlm
from lnsub.trainables.tasks.mlm import predict_masked_only

accelerator = Accelerator(cpu=True)
model = tiny_mlm()
predict_masked_only(model)
model = accelerator.prepare(model)
assert accelerator.num_processes == 2 and type(model).__name__ == "DistributedDataParallel"
out = model(**batch(10 + accelerator.process_index))
assert out.logits.dim() == 2  # the head ran on the masked positions only, inside the DDP call
accelerator.backward(out.loss)
save_file({n: p.grad.contiguous() for n, p in model.module.named_parameters() if p.grad is not None},
          f"{sys.argv[1]}/grads{accelerator.process_index}.safetensors")
# Leave the group before exiting: a rank that exits while gloo's threads still run aborts
# ("terminate called without an active exception", exit -6), which CI saw once.
accelerator.wait_for_everyone()
accelerator.end_training()  # Accelerate's own end: destroys the process group
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_workers_synchronise_the_same_gradients(tmp_path):
    """Each rank's loss goes through the DDP wrapper: after backward both hold the mean of the full-head gradients."""
    from safetensors.torch import load_file

    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), str(Path(__file__).parent)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    expected = {}
    for rank in range(2):
        reference = tiny_mlm()
        reference(**batch(10 + rank)).loss.backward()
        for name, g in grads(reference).items():
            expected[name] = expected.get(name, 0) + g / 2
    for rank in range(2):
        got = load_file(tmp_path / f"grads{rank}.safetensors")
        assert set(got) == set(expected), json.dumps(sorted(set(got) ^ set(expected)))
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7, msg=name)
