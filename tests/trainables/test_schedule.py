"""A round's learning-rate schedule against its closed form: per_round (the paper), whole_run (the authors' code)."""

from __future__ import annotations

import pytest
import torch

from lnsub.trainables.errors import LnsubError
from lnsub.trainables.spec import make_spec
from lnsub.trainables.train import lr_factor


def lrs(spec, total: int) -> list[float]:
    """The learning rate of each of a round's `total` optimizer steps, as torch's LambdaLR hands them out."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=spec.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(spec, total))
    out = []
    for _ in range(total):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_per_round_decays_linearly_to_zero_within_each_round():
    spec = make_spec("ner", "syn-en", steps=20, lr=2e-5, levels=9)
    assert spec.lr_schedule == "per_round"  # the default: the paper's text
    got = lrs(spec, 20)
    assert got == pytest.approx([2e-5 * (20 - s) / 20 for s in range(20)], rel=1e-12)


def test_whole_run_spans_every_round_and_restarts_each_round():
    """10 rounds (levels 0..9) of 30 steps: each round runs 100% -> 90% of the peak, as the authors' code does."""
    spec = make_spec("ner", "syn-en", steps=30, lr=5e-5, levels=9, lr_schedule="whole_run")
    horizon = 30 * 10
    got = lrs(spec, 30)
    assert got == pytest.approx([5e-5 * (horizon - s) / horizon for s in range(30)], rel=1e-12)
    assert got[0] == pytest.approx(5e-5) and got[-1] == pytest.approx(5e-5 * (1 - 29 / 300))
    assert 5e-5 * (horizon - 30) / horizon == pytest.approx(0.9 * 5e-5)  # where the next step would be: 90%
    assert lrs(spec, 30) == got  # a fresh schedule each round: the same values again


def test_warm_up_then_decay_over_the_horizon():
    spec = make_spec("xnli", "syn-en", steps=12, lr=1e-3, levels=2, warmup_steps=3, lr_schedule="whole_run")
    horizon = 36
    expected = [1e-3 * (s + 1) / 3 if s < 3 else 1e-3 * (horizon - s) / (horizon - 3) for s in range(12)]
    assert lrs(spec, 12) == pytest.approx(expected, rel=1e-12)


def test_an_unknown_schedule_is_refused_and_the_schedule_is_part_of_the_id():
    with pytest.raises(LnsubError, match="lr_schedule: must be per_round or whole_run"):
        make_spec("ner", "syn-en", steps=5, lr_schedule="cosine")
    assert make_spec("ner", "syn-en", steps=5, lr_schedule="whole_run").id != make_spec("ner", "syn-en", steps=5).id
