"""IMP on the tiny model: exact densities, nesting, rewinding, idempotence, kill-and-resume."""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from lnsub.trainables.imp import Hooks, run_cell, split_state
from lnsub.trainables.loading import model_path
from lnsub.trainables.masks import load_masks, mask_meta
from lnsub.trainables.spec import make_spec
from lnsub.trainables.storage import Storage
from lnsub.trainables.store import CellStore

ROOT = Path(__file__).resolve().parents[2]
# length-grouped batches: the kill-and-resume test then checks that a grouped epoch resumes exactly
FAST = {"lr": 1e-3, "batch_size": 16, "max_length": 32, "levels": 3, "steps": 12, "train_size": 400,
        "valid_size": 96, "group_by_length": True}


def spec_for(task="ner", language="syn-en", **kw):
    return make_spec(task, language, **{**FAST, **kw})


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_model):
    """One uninterrupted run, observed through the hooks."""
    spec = spec_for()
    storage = tmp_path_factory.mktemp("reference")
    starts, trained, frozen = {}, {}, {}

    def start(k, m):
        starts[k] = {n: t.clone() for n, t in m.state_dict().items()}
        frozen[k] = gc.get_freeze_count()

    hooks = Hooks(level_start=start,
                  level_trained=lambda k, m: trained.__setitem__(k, {n: t.clone() for n, t in m.named_parameters()}))
    result = run_cell(spec, storage, checkpoint_every=4, hooks=hooks)
    frozen["after"] = gc.get_freeze_count()
    return spec, storage, result, starts, trained, frozen


def _all_masks(store: CellStore, levels: int):
    return [load_masks(store.level_dir(k)) for k in range(levels + 1)]


def test_levels_run_with_what_the_cell_loaded_out_of_the_collectors_sight(reference_run):
    """Accelerate collects garbage after every level: the libraries, model and data loaded before the first level are
    frozen (memory.long_lived), so those collections walk only what a level made; all is back in sight after."""
    *_, frozen = reference_run
    assert all(frozen[k] > 100_000 for k in range(FAST["levels"] + 1)), frozen
    assert frozen["after"] == 0


def test_densities_are_exact_and_masks_nested(reference_run):
    spec, storage, result, _, _, _ = reference_run
    store = CellStore(storage, spec)
    masks = _all_masks(store, spec.levels)
    total = mask_meta(store.level_dir(0))["total"]
    for k, m in enumerate(masks):
        zeros = sum(int((~t).sum()) for t in m.values())
        assert zeros == round(k * spec.prune_fraction * total), k
        assert mask_meta(store.level_dir(k))["kept"] == total - zeros
        if k:
            assert all(not (m[n] & ~masks[k - 1][n]).any() for n in m), k  # nested
    assert [r["level"] for r in result.levels] == list(range(spec.levels + 1))
    assert [r["sparsity"] for r in result.levels] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert all(0.0 <= r["f1"] <= 1.0 and r["steps"] == spec.steps for r in result.levels)


def test_pruned_weights_are_exactly_zero_after_training(reference_run):
    spec, storage, _, _, trained, _ = reference_run
    store = CellStore(storage, spec)
    for k in range(spec.levels + 1):
        mask = load_masks(store.level_dir(k))
        for name, m in mask.items():
            assert (trained[k][name][~m] == 0).all(), (k, name)
        if k:  # and the survivors did train
            assert any((trained[k][n][m] != 0).any() for n, m in mask.items())


def test_each_round_starts_from_theta0_times_mask_and_carries_the_head(reference_run):
    from transformers import set_seed

    from lnsub.trainables.tasks import get_task

    spec, storage, _, starts, _, _ = reference_run
    store = CellStore(storage, spec)
    set_seed(spec.seed)
    fresh = get_task(spec.task).load_model(model_path(spec))
    theta0, head0, _ = split_state(fresh)
    for k in range(spec.levels + 1):
        mask = load_masks(store.level_dir(k))
        start = starts[k]
        for name, value in theta0.items():
            expected = value * mask[name] if name in mask else value
            assert torch.equal(start[name], expected), (k, name)
        head = head0 if k == 0 else store.load_head(k - 1)
        for name, value in head.items():
            assert torch.equal(start[name], value), (k, name)
        if k:  # the head did carry over: it is not the fresh one
            assert not torch.equal(start["classifier.weight"], head0["classifier.weight"])


def test_timing_records_the_cells_peak_rss(reference_run):
    """timing.json's peak_rss_bytes is in bytes and physical: above what torch and a model keep resident (not
    a KiB-for-bytes slip) and below the machine's memory (/proc/meminfo, read here). That it is the kernel's
    per-cell high-water mark is tests/trainables/test_memory.py's check."""
    spec, storage, _, _, _, _ = reference_run
    timing = CellStore(storage, spec).timing()
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    total = int(meminfo["MemTotal"].split()[0]) * 1024
    assert 100 * 2**20 < timing["peak_rss_bytes"] < total


def test_a_finished_cell_does_no_training(reference_run):
    spec, storage, _, _, _, _ = reference_run
    stamps = {p: p.stat().st_mtime_ns for p in Path(storage).rglob("*") if p.is_file()}
    again = run_cell(spec, storage)
    assert again.steps_trained == 0
    assert [r["score"] for r in again.levels] == [r["score"] for r in reference_run[2].levels]
    assert {p: p.stat().st_mtime_ns for p in Path(storage).rglob("*") if p.is_file()} == stamps


def test_baseline_masks_are_written_in_the_same_format(reference_run):
    spec, storage, _, _, _, _ = reference_run
    store = CellStore(storage, spec)
    total = mask_meta(store.level_dir(0))["total"]
    for kind in ("oneshot_trained", "oneshot_pretrained"):
        for k in range(1, spec.levels + 1):
            meta = mask_meta(store.baseline_dir(kind, spec.sparsities[k]))
            assert meta["kept"] == total - round(spec.sparsities[k] * total)
    assert not torch.equal(*[load_masks(store.baseline_dir(kind, 0.3))["bert.encoder.layer.0.output.dense.weight"]
                             for kind in ("oneshot_trained", "oneshot_pretrained")])


CHILD = """
import sys, time
from lnsub.trainables.spec import CellSpec
from lnsub.trainables.imp import Hooks, run_cell
import json
spec = CellSpec.from_dict(json.loads(sys.argv[1]))
run_cell(spec, sys.argv[2], checkpoint_every=3, hooks=Hooks(after_step=lambda level, step: time.sleep(0.15)))
"""


@pytest.mark.parametrize("corrupt_latest", [False, True])
def test_sigkill_mid_round_then_resume_gives_the_same_masks(reference_run, tmp_path, corrupt_latest):
    spec, ref_storage, ref_result, _, _, _ = reference_run
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(spec.to_dict()), str(tmp_path)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = CellStore(tmp_path, spec)
    wanted = 2 if corrupt_latest else 1
    deadline = time.time() + 240
    while time.time() < deadline and len(list(store.checkpoint_dir(1).glob("step_*/meta.json"))) < wanted:
        assert child.poll() is None, "the child finished before it could be killed"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    checkpoints = sorted(store.checkpoint_dir(1).glob("step_*"))
    assert len(checkpoints) >= wanted and not store.level_done(1)
    if corrupt_latest:  # truncate the newest checkpoint: resume must fall back to the one before
        state = checkpoints[-1] / "state.pt"
        state.write_bytes(state.read_bytes()[:1000])
    result = run_cell(spec, tmp_path, checkpoint_every=3)
    assert result.steps_trained < (spec.levels + 1) * spec.steps - spec.steps  # levels 0 (and part of 1) kept
    resumed = store.metrics(1)["resumed_from_step"]
    assert resumed is not None and resumed % 3 == 0
    for k in range(spec.levels + 1):
        ours, ref = load_masks(store.level_dir(k)), load_masks(CellStore(ref_storage, spec).level_dir(k))
        assert all(torch.equal(ours[n], ref[n]) for n in ref), k
    assert [r["score"] for r in result.levels] == pytest.approx([r["score"] for r in ref_result.levels], abs=1e-6)


def test_damaged_mask_of_an_unfinished_level_is_recomputed(reference_run, tmp_path, caplog):
    spec, ref_storage, ref_result, _, _, _ = reference_run
    storage = tmp_path / "copy"
    shutil.copytree(ref_storage, storage)
    store = CellStore(storage, spec)
    # as if killed during level 3, with level 3's mask file damaged
    (store.root / "DONE").unlink()
    (store.level_dir(3) / "DONE").unlink()
    mask = store.level_dir(3) / "mask.npz"
    mask.write_bytes(mask.read_bytes()[:100])
    with caplog.at_level("WARNING"):
        result = run_cell(spec, storage)
    assert any("damaged" in r.message for r in caplog.records)
    assert result.steps_trained == 2 * spec.steps  # level 2 redone (it makes level 3's mask), then level 3
    ref = load_masks(CellStore(ref_storage, spec).level_dir(3))
    assert all(torch.equal(load_masks(store.level_dir(3))[n], ref[n]) for n in ref)


def test_a_damaged_checkpoint_falls_back_with_a_warning(tmp_path, caplog):
    from accelerate import Accelerator

    from lnsub.trainables.store import Checkpoints
    from lnsub.trainables.train import save_checkpoint

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    accelerator = Accelerator(cpu=True)
    checkpoints = Checkpoints(Storage.open(tmp_path), tmp_path / "checkpoint", tmp_path / "quarantine")
    for step in (2, 4):
        save_checkpoint(checkpoints, step, model, optimizer, scheduler, accelerator)
    (checkpoints.folder / "step_00000004" / "state.pt").write_bytes(b"not a checkpoint")
    with caplog.at_level("WARNING"):
        state = checkpoints.load_newest()
    assert state["step"] == 2 and any("damaged" in r.message for r in caplog.records)
    assert (tmp_path / "quarantine" / "step_00000004").exists()
    assert [p.name for p in checkpoints.steps()] == ["step_00000002"]  # out of the resume's sight
    (checkpoints.folder / "step_00000002" / "meta.json").write_text("{")
    assert checkpoints.load_newest() is None


# --- faults: damage is redone, a failing disk is not ------------------------------------------------

class Interrupted(Exception):
    pass


def _interrupt_at(level: int, step: int):
    def after_step(lv: int, s: int) -> None:
        if (lv, s) == (level, step):
            raise Interrupted
    return Hooks(after_step=after_step)


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory, tiny_model):
    """A 1-level cell stopped at step 7 of level 1, with checkpoints at steps 3 and 6."""
    spec = spec_for(levels=1)
    storage = tmp_path_factory.mktemp("interrupted")
    with pytest.raises(Interrupted):
        run_cell(spec, storage, checkpoint_every=3, hooks=_interrupt_at(1, 7))
    steps = [p.name for p in CellStore(storage, spec).checkpoints(1).steps()]
    assert steps == ["step_00000003", "step_00000006"]
    return spec, storage


def _eio_reads(monkeypatch, under: Path, counter: list) -> None:
    """Every checksum read of a file under `under` fails as a flaky disk does (EIO)."""
    import errno

    from lnsub.trainables import masks as maskio
    from lnsub.trainables import store as store_module

    real = maskio.sha256_file

    def flaky(path):
        if Path(path).resolve().is_relative_to(Path(under).resolve()):
            counter.append(path)
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real(path)

    monkeypatch.setattr(maskio, "sha256_file", flaky)  # where masks and checkpoints read their checksums
    monkeypatch.setattr(store_module, "sha256_file", flaky)


def _tree(root: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in Path(root).rglob("*") if p.is_file()}


def test_an_io_error_on_a_finished_level_fails_the_call_and_redoes_nothing(reference_run, tmp_path, monkeypatch):
    spec, ref_storage, _, _, _, _ = reference_run
    storage = tmp_path / "copy"
    shutil.copytree(ref_storage, storage)
    store = CellStore(storage, spec)
    (store.root / "DONE").unlink()  # as if killed during level 3: resume checks levels 0-2 first
    (store.level_dir(3) / "DONE").unlink()
    before = _tree(storage)
    reads: list = []
    _eio_reads(monkeypatch, store.level_dir(2), reads)  # level 2's files: the first that resume reads back
    with pytest.raises(OSError) as raised:
        run_cell(spec, storage)
    assert raised.value.errno == 5 and reads  # the fault fired, and is what the caller sees
    after = _tree(storage)
    assert {p: t for p, t in after.items() if p.name != "spec.json"} == {
        p: t for p, t in before.items() if p.name != "spec.json"}  # no DONE removed, nothing rewritten
    monkeypatch.undo()
    assert run_cell(spec, storage).steps_trained == spec.steps  # only level 3 was left to run


def test_an_io_error_on_a_checkpoint_fails_the_call_and_keeps_it(interrupted_run, tmp_path, monkeypatch):
    spec, src = interrupted_run
    storage = tmp_path / "copy"
    shutil.copytree(src, storage)
    store = CellStore(storage, spec)
    reads: list = []
    _eio_reads(monkeypatch, store.checkpoint_dir(1), reads)
    with pytest.raises(OSError) as raised:
        run_cell(spec, storage, checkpoint_every=3)
    assert raised.value.errno == 5 and reads
    assert [p.name for p in store.checkpoints(1).steps()] == ["step_00000003", "step_00000006"]
    assert not store.quarantine_dir(1).exists() and store.level_done(0) and not store.level_done(1)
    monkeypatch.undo()
    run_cell(spec, storage, checkpoint_every=3)
    assert store.metrics(1)["resumed_from_step"] == 6  # the checkpoint it could not read was still good


def test_a_corrupt_checkpoint_is_quarantined_and_resume_uses_the_one_before(interrupted_run, tmp_path, monkeypatch):
    from lnsub.trainables.store import Checkpoints

    spec, src = interrupted_run
    storage = tmp_path / "copy"
    shutil.copytree(src, storage)
    store = CellStore(storage, spec)
    state = store.checkpoint_dir(1) / "step_00000006" / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])  # truncated, as by a crash mid-copy
    moved, seen = [], {}
    real = Checkpoints.quarantine
    monkeypatch.setattr(Checkpoints, "quarantine", lambda self, c: moved.append(real(self, c)) or moved[-1])
    hooks = Hooks(after_step=lambda level, step: seen.setdefault(
        (level, step), [p.name for p in store.checkpoints(level).steps()]))
    run_cell(spec, storage, checkpoint_every=3, hooks=hooks)
    assert moved == [store.quarantine_dir(1) / "step_00000006"] and (moved[0] / "state.pt").exists()
    assert seen[(1, 4)] == ["step_00000003"]  # the resume glob no longer sees the damaged one
    assert store.metrics(1)["resumed_from_step"] == 3
    assert store.finished() and moved[0].exists()  # kept as evidence after the level finished


@pytest.mark.parametrize("task", ["mlm", "xnli"])
def test_other_tasks_run_a_level(tmp_path, tiny_model, task):
    spec = spec_for(task, "syn-ar", levels=1, steps=6, max_length=64 if task == "mlm" else 32)
    result = run_cell(spec, tmp_path)
    assert len(result.levels) == 2
    metric = "perplexity" if task == "mlm" else "accuracy"
    assert all(r["metric"] == metric for r in result.levels)
    if task == "mlm":
        # better than a uniform guess over the vocabulary (the code-switched model spreads its mass over
        # the twins' translations of a word, so a 6-step run stays in the hundreds to thousands)
        vocab = len(AutoTokenizer.from_pretrained(tiny_model))
        assert all(1.0 < r["perplexity"] < vocab / 2 for r in result.levels)
    else:
        assert all(0.0 <= r["accuracy"] <= 1.0 for r in result.levels)
    params = load_masks(CellStore(tmp_path, spec).level_dir(1))
    assert ("bert.pooler.dense.weight" in params) == (task == "xnli")  # the pooler is pruned where it exists
