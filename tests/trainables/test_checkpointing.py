"""Checkpoints written behind training: training does not wait for a write, the write says what the state was at
its step, every due checkpoint lands in order, and a failed write fails the round."""

from __future__ import annotations

import errno
import threading

import datasets
import pytest
import torch
from accelerate import Accelerator
from transformers import BertConfig, BertForSequenceClassification

from lnsub.trainables import pruning
from lnsub.trainables.checkpointing import CheckpointWriter, host_copy
from lnsub.trainables.spec import CellSpec
from lnsub.trainables.storage import Storage
from lnsub.trainables.store import Checkpoints
from lnsub.trainables.train import RoundData, train_round

WAIT = 30  # seconds a test waits for the other thread before it calls the overlap broken


def _round(tmp_path, steps: int = 8):
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=16, num_labels=3))
    rows = [{"input_ids": [1 + (i * 7 + j) % 40 for j in range(6)], "attention_mask": [1] * 6, "labels": i % 3}
            for i in range(32)]
    data = datasets.Dataset.from_list(rows)
    collate = lambda ex: {k: torch.tensor([e[k] for e in ex]) for k in ex[0]}  # noqa: E731
    spec = CellSpec.from_values(model="test", task="xnli", language="en", steps=steps, lr=1e-3, batch_size=4)
    masks = pruning.random_masks(pruning.prunable_parameters(model), 0.5, seed=0)
    pruning.apply_masks(model, masks)
    checkpoints = Checkpoints(Storage.open(tmp_path), tmp_path / "checkpoint", tmp_path / "quarantine")
    return model, masks, RoundData(data, data, collate, collate), spec, checkpoints


def test_training_takes_its_next_steps_while_a_checkpoint_is_written(tmp_path, monkeypatch):
    model, masks, data, spec, checkpoints = _round(tmp_path)
    stepped_on = threading.Event()
    writes: list[int] = []
    real_save = Checkpoints.save

    def slow_save(self, step, state):
        if step == 2:  # this write finishes only once training has taken step 3: were it in training's way,
            assert stepped_on.wait(WAIT), "training waited for the checkpoint's write"  # it never would
        writes.append(step)
        real_save(self, step, state)

    monkeypatch.setattr(Checkpoints, "save", slow_save)
    train_round(model, masks, data, spec, 1, Accelerator(cpu=True), checkpoints, checkpoint_every=2,
                after_step=lambda step: step == 3 and stepped_on.set())
    assert stepped_on.is_set() and writes == [2, 4, 6]  # every due checkpoint, in order (none at the last step)
    assert [p.name for p in checkpoints.steps()] == ["step_00000004", "step_00000006"]
    assert checkpoints.load_newest()["step"] == 6


def test_a_checkpoint_holds_the_state_of_its_step_not_what_training_did_next():
    started, release, written = threading.Event(), threading.Event(), {}

    class Slow:
        def save(self, step, state):
            started.set()
            assert release.wait(WAIT)
            written[step] = state

    weights = torch.arange(6.0)
    moments = {"state": {0: {"exp_avg": torch.ones(3), "step": torch.tensor(4.0)}}, "param_groups": [{"lr": 1e-3}]}
    writer = CheckpointWriter(Slow())
    writer.save(4, {"model": {"w": weights}, "optimizer": moments, "step": 4})
    assert started.wait(WAIT)
    weights.add_(100.0)  # the next optimizer steps update these tensors in place
    moments["state"][0]["exp_avg"].mul_(0.0)
    release.set()
    writer.close()
    assert torch.equal(written[4]["model"]["w"], torch.arange(6.0))
    assert torch.equal(written[4]["optimizer"]["state"][0]["exp_avg"], torch.ones(3))
    assert written[4]["optimizer"]["param_groups"] == [{"lr": 1e-3}] and written[4]["step"] == 4


def test_host_copy_copies_every_tensor_and_keeps_the_containers():
    from collections import OrderedDict

    state = OrderedDict(a=torch.zeros(2), b=[torch.ones(1), (torch.ones(1), 3)], c="x")
    copy = host_copy(state)
    assert type(copy) is OrderedDict and type(copy["b"]) is list and type(copy["b"][1]) is tuple
    assert copy["a"].data_ptr() != state["a"].data_ptr() and copy["b"][1][1] == 3 and copy["c"] == "x"
    assert torch.equal(copy["b"][0], state["b"][0]) and copy["b"][0].data_ptr() != state["b"][0].data_ptr()


def test_a_tied_tensor_is_copied_once_and_saved_once(tmp_path):
    """mBERT's MLM decoder weight is its word embeddings: one tensor, twice in the state_dict, once on disk."""
    from transformers import BertConfig, BertForMaskedLM

    model = BertForMaskedLM(BertConfig(vocab_size=2000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=16))
    state = model.state_dict()
    tied = ("bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight")
    assert state[tied[0]].data_ptr() == state[tied[1]].data_ptr()
    copy = host_copy(state)
    assert copy[tied[0]] is copy[tied[1]] and copy[tied[0]].data_ptr() != state[tied[0]].data_ptr()
    direct, behind = tmp_path / "direct.pt", tmp_path / "behind.pt"
    torch.save(state, direct)
    torch.save(copy, behind)
    assert abs(behind.stat().st_size - direct.stat().st_size) < 4096  # not 2000 x 32 x 4 bytes more


def test_each_checkpoint_is_copied_into_the_last_ones_memory(tmp_path):
    written = []

    class Keep:
        def save(self, step, state):
            written.append((step, state["w"].clone(), state["w"].data_ptr()))

    weights = torch.zeros(1000)
    writer = CheckpointWriter(Keep())
    for step in (2, 4, 6):
        weights.fill_(float(step))
        writer.save(step, {"w": weights, "shape": [3]})
    writer.close()
    assert [(s, float(w[0])) for s, w, _ in written] == [(2, 2.0), (4, 4.0), (6, 6.0)]
    assert len({ptr for _, _, ptr in written}) == 1 and written[0][2] != weights.data_ptr()  # one host copy


def test_a_failed_write_fails_the_round(tmp_path, monkeypatch):
    model, masks, data, spec, checkpoints = _round(tmp_path)
    tried: list[int] = []

    def failing_save(self, step, state):
        tried.append(step)
        raise OSError(errno.EIO, "Input/output error", str(self.folder))

    monkeypatch.setattr(Checkpoints, "save", failing_save)
    with pytest.raises(OSError) as raised:
        train_round(model, masks, data, spec, 1, Accelerator(cpu=True), checkpoints, checkpoint_every=2)
    assert raised.value.errno == errno.EIO and tried == [2]  # raised at the next checkpoint: no write after it


def test_an_error_in_training_is_the_one_raised_when_a_write_fails_too(tmp_path, monkeypatch):
    model, masks, data, spec, checkpoints = _round(tmp_path)

    def failing_save(self, step, state):
        raise OSError(errno.EIO, "Input/output error", str(self.folder))

    class Stop(Exception):
        pass

    def after_step(step):
        if step == 3:
            raise Stop

    monkeypatch.setattr(Checkpoints, "save", failing_save)
    with pytest.raises(Stop):
        train_round(model, masks, data, spec, 1, Accelerator(cpu=True), checkpoints, checkpoint_every=2,
                    after_step=after_step)
