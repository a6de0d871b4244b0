"""Where a round's mask stops moving: the settling curve against brute force and the stored masks, and the
early stop (its decision survives a crash and resume)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lnsub.trainables.imp import Hooks, run_cell
from lnsub.trainables.masks import load_masks
from lnsub.trainables.settling import jaccard, snapshot_steps
from lnsub.trainables.spec import make_spec
from lnsub.trainables.store import ONESHOT_PRETRAINED, CellStore

FAST = {"lr": 1e-3, "batch_size": 16, "max_length": 32, "levels": 1, "steps": 24, "train_size": 400,
        "valid_size": 64}


def _kept(masks) -> set[tuple[str, int]]:
    """Brute force: the kept weights as a set of (tensor, flat index)."""
    return {(n, i) for n, m in masks.items() for i, keep in enumerate(m.flatten().tolist()) if keep}


def test_jaccard_matches_sets():
    g = torch.Generator().manual_seed(0)
    for density in (0.1, 0.5, 0.9):
        a = {n: torch.rand(shape, generator=g) < density for n, shape in (("x", (7, 5)), ("y", (11,)))}
        b = {n: torch.rand(m.shape, generator=g) < density for n, m in a.items()}
        ka, kb = _kept(a), _kept(b)
        assert jaccard(a, b) == pytest.approx(len(ka & kb) / len(ka | kb))
    empty = {"x": torch.zeros(3, dtype=torch.bool)}
    assert jaccard(empty, empty) == 1.0


def test_snapshot_steps_spread_over_the_round():
    assert snapshot_steps(24) == [3, 6, 9, 12, 15, 18, 21, 24]
    assert snapshot_steps(3) == [1, 2, 3]  # fewer steps than snapshots: each step once, the last included
    assert snapshot_steps(10, 4) == [2, 5, 8, 10]


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, tiny_model):
    spec = make_spec("ner", "syn-en", **FAST)
    storage = tmp_path_factory.mktemp("settling")
    run_cell(spec, storage, checkpoint_every=0)
    return spec, CellStore(storage, spec)


def test_the_curve_ends_at_the_mask_pruning_took(plain_run):
    spec, store = plain_run
    curve = store.load_settling(0)
    rows = curve["snapshots"]
    assert [r["step"] for r in rows] == snapshot_steps(spec.steps) and curve["stopped_at"] is None
    assert rows[-1]["jaccard_final"] == 1.0  # the last snapshot is the round's final weights: the next mask
    assert rows[0]["jaccard_previous"] is None and all(0 < r["jaccard_previous"] <= 1 for r in rows[1:])
    # against θ0's one-shot mask, recomputed here from the stored files with numpy
    mine, theta0 = load_masks(store.level_dir(1)), store.baseline(ONESHOT_PRETRAINED, spec.sparsities[1])
    a = np.concatenate([mine[n].numpy().ravel() for n in sorted(mine)])
    b = np.concatenate([theta0[n].numpy().ravel() for n in sorted(mine)])
    assert rows[-1]["jaccard_theta0"] == pytest.approx((a & b).sum() / (a | b).sum())
    assert store.load_settling(1) is None  # the last level prunes nothing after it
    assert store.metrics(0)["steps"] == spec.steps


class Crash(RuntimeError):
    pass


def _crash_at(level: int, step: int):
    def after(k: int, s: int) -> None:
        if (k, s) == (level, step):
            raise Crash(f"planted crash at level {k} step {s}")
    return after


def test_settle_stop_ends_the_round_and_a_resumed_round_decides_the_same(plain_run, tmp_path):
    spec = make_spec("ner", "syn-en", **FAST, settle_stop=0.5)
    assert spec.id != plain_run[0].id  # the option has its own ids
    reference = tmp_path / "reference"
    run_cell(spec, reference, checkpoint_every=4)
    ref = CellStore(reference, spec)
    curve = ref.load_settling(0)
    # the second snapshot (step 6) is the first with one before it, and any two agree to Jaccard >= 0.5 here
    assert curve["stopped_at"] == 6 and ref.metrics(0)["steps"] == 6
    assert [r["step"] for r in curve["snapshots"]] == [3, 6]
    # crash after the checkpoint at step 4 (which holds the step-3 snapshot), then resume
    crashed = tmp_path / "crashed"
    with pytest.raises(Crash):
        run_cell(spec, crashed, checkpoint_every=4, hooks=Hooks(after_step=_crash_at(0, 5)))
    run_cell(spec, crashed, checkpoint_every=4)
    store = CellStore(crashed, spec)
    assert store.metrics(0)["resumed_from_step"] == 4  # the crash hit mid-round, before the stop
    assert store.load_settling(0)["stopped_at"] == 6 and store.metrics(0)["steps"] == 6
    ours, theirs = load_masks(store.level_dir(1)), load_masks(ref.level_dir(1))
    assert all(torch.equal(ours[n], theirs[n]) for n in theirs)


def test_settle_stop_is_validated():
    from lnsub.trainables.errors import LnsubError

    with pytest.raises(LnsubError, match="settle_stop"):
        make_spec("ner", "syn-en", **FAST, settle_stop=1.5)
