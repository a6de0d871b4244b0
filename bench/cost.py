"""The `full` grid's predicted GPU-hours (orchestrator/cost.py), lnsub's configuration beside the authors', and
what each of lnsub's savings buys, one step at a time.

The steps, each on top of the one before, all on one A100 (the authors' configuration first: fp32, every
example padded to max_length, the MLM head on every position, no checkpoints within a round):
bf16 autocast; per-batch padding with `full`'s length grouping; MLM's head on the masked positions; then
lnsub's checkpoints every --checkpoint-every steps, written behind training (what `lnsub sweep` does by
default); beside it, checkpoints ten times as often, and as often with each write in training's way (lnsub
before trainables/checkpointing.py), an H100, and one change that does touch the science (MLM rounds of
5k steps: shown as what it would buy, not proposed). The paper's check: the authors' configuration on its
Quadro RTX 8000 against the 15 / 4.5 / 45 hours per language it reports.

Usage: python bench/cost.py [--checkpoint-every 1000] [--count-ops]
The last line: `full: <H> A100-hours predicted (paper: 1,966.5 RTX-8000 hours)`.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

from lnsub.orchestrator import cost
from lnsub.orchestrator.grid import plan
from lnsub.trainables.checkpointing import DEFAULT_CHECKPOINT_EVERY

PAPER_HOURS = {"mlm": 15.0, "ner": 4.5, "xnli": 45.0}


def _total(p, device: str, policy_for, respec=lambda spec: spec) -> tuple[float, list[cost.CellCost]]:
    costs = [cost.cell_cost(respec(c.spec), cost.get_device(device), policy_for(c.spec)) for c in p.cells]
    return sum(c.hours for c in costs), costs


def print_table(title: str, costs: list[cost.CellCost]) -> None:
    print(f"\n{title}")
    print(f"{'task':5s} {'cells':>5s} {'examples/round':>14s} {'tokens/example':>14s} {'TFLOPs/cell':>12s} "
          f"{'hours/cell':>10s} {'hours':>8s}")
    for r in cost.task_rows(costs):
        print(f"{r.task:5s} {r.cells:5d} {r.examples:14,.0f} {r.tokens:14,.1f} {r.tflops:12,.0f} "
              f"{r.hours_per_cell:10.2f} {r.hours:8,.1f}")
    parts = ", ".join(f"{k} {v:,.1f}" for k, v in cost.parts(costs).items())
    print(f"total {sum(c.hours for c in costs):,.1f} h  (by part, h: {parts})")


def paper_check(p) -> None:
    _, costs = _total(p, "rtx8000", lambda spec: cost.AUTHORS)
    print("\nthe paper's one measured point: the authors' configuration on one Quadro RTX 8000 (fp32)")
    for task, paper in PAPER_HOURS.items():
        mine = statistics.mean(c.hours for c in costs if c.spec.task == task)
        print(f"  {task:4s}: predicted {mine:6.2f} h per language, paper {paper:5.1f} h: ratio {mine / paper:.2f}")
    first = [c for c in costs if c.spec.seed == costs[0].spec.seed]
    seed, paper = sum(c.hours for c in first), sum(PAPER_HOURS[c.spec.task] for c in first)
    print(f"  one seed of the grid: predicted {seed:,.1f} h, paper {paper:,.1f} h: ratio {seed / paper:.2f}")


def savings(p, checkpoint_every: int) -> float:
    """Each of lnsub's savings in turn on an A100; returns lnsub's total as `lnsub sweep` runs it."""
    steps = [
        ("the authors' configuration (fp32, padded to max_length, full MLM head)", "a100", cost.AUTHORS, None),
        ("+ bf16 autocast", "a100", dataclasses.replace(cost.AUTHORS, precision="bf16"), None),
        ("+ per-batch padding, length-grouped (full's NER, XNLI)", "a100", "padding", None),
        ("+ MLM head on the masked positions only (no checkpoints)", "a100", "lnsub0", None),
        (f"+ checkpoints every {checkpoint_every:,} steps, written behind training: lnsub sweep as it runs", "a100",
         "lnsub", None),
        ("  ... every 100 steps, behind training", "a100", "lnsub100", None),
        ("  ... every 100 steps, each write in training's way (lnsub before checkpointing.py)", "a100",
         "lnsub100sync", None),
        ("  ... on an H100 (H100-hours)", "h100", "lnsub", None),
        ("  ... MLM rounds of 5k steps, not 10k (changes the science)", "a100", "lnsub",
         lambda s: dataclasses.replace(s, steps=5_000) if s.task == "mlm" else s),
    ]
    policies = {
        "padding": lambda s: dataclasses.replace(cost.lnsub_policy(s, 0), mlm_head="full"),
        "lnsub0": lambda s: cost.lnsub_policy(s, 0),
        "lnsub": lambda s: cost.lnsub_policy(s, checkpoint_every),
        "lnsub100": lambda s: cost.lnsub_policy(s, 100),
        "lnsub100sync": lambda s: dataclasses.replace(cost.lnsub_policy(s, 100), behind=False),
    }
    print("\nwhat each saving buys (hours of the whole grid, 3 seeds):")
    lnsub = 0.0
    for label, device, policy, respec in steps:
        policy_for = policies[policy] if isinstance(policy, str) else (lambda s, fixed=policy: fixed)
        total, _ = _total(p, device, policy_for, respec or (lambda s: s))
        print(f"  {total:8,.1f} h  {label}")
        if policy == "lnsub" and device == "a100" and respec is None:
            lnsub = total
    for every in sorted({0, 100, checkpoint_every}):
        mfu, when = needed_mfu(p, every, 100.0), f"every {every:,} steps" if every else "off"
        print(f"  an A100 MFU of {mfu:.3f} would bring lnsub to 100 h with checkpoints {when}" if mfu < 1 else
              f"  no A100 MFU brings lnsub to 100 h with checkpoints {when}: the rest alone takes longer")
    return lnsub


def needed_mfu(p, checkpoint_every: int, hours: float) -> float:
    """The bf16 MFU at which lnsub's total on an A100 falls to `hours` (the other parts kept as they are)."""
    _, costs = _total(p, "a100", lambda s: cost.lnsub_policy(s, checkpoint_every))
    parts = cost.parts(costs)
    scaled = parts["compute"] + parts["evaluation"]
    fixed = sum(parts.values()) - scaled
    mfu = cost.MEASUREMENTS[("ampere", "tensor16")].mfu
    return float("inf") if fixed >= hours else scaled * mfu / (hours - fixed)


def count_ops() -> tuple[int, int]:
    """The aten ops (and of them, kernels) lnsub's train step dispatches for a 12-layer BERT (KERNELS_PER_STEP)."""
    import tempfile
    from pathlib import Path

    import datasets
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from transformers import BertConfig, BertForSequenceClassification

    from lnsub.trainables import pruning
    from lnsub.trainables.loading import make_accelerator
    from lnsub.trainables.spec import CellSpec
    from lnsub.trainables.storage import Storage
    from lnsub.trainables.store import Checkpoints
    from lnsub.trainables.train import RoundData, train_round

    views = {"view", "t", "detach", "transpose", "_unsafe_view", "expand", "lift_fresh", "slice", "select",
             "_record_function_enter_new", "_record_function_exit", "alias", "unsqueeze", "squeeze", "permute"}

    class Count(TorchDispatchMode):
        ops = kernels = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.ops += 1
            Count.kernels += func.overloadpacket.__name__ not in views
            return func(*args, **(kwargs or {}))

    model = BertForSequenceClassification(BertConfig(vocab_size=500, hidden_size=16, num_hidden_layers=12,
                                                     num_attention_heads=4, intermediate_size=64, num_labels=3))
    rows = [{"input_ids": list(range(1, 20)), "attention_mask": [1] * 19, "labels": 1} for _ in range(64)]
    data = datasets.Dataset.from_list(rows)
    collate = lambda ex: {k: torch.tensor([e[k] for e in ex]) for k in ex[0]}  # noqa: E731
    spec = CellSpec.from_values(model="bench", task="xnli", language="en", steps=5, lr=1e-4, batch_size=8)
    masks = pruning.random_masks(pruning.prunable_parameters(model), 0.5, seed=0)
    pruning.apply_masks(model, masks)
    seen = []
    with tempfile.TemporaryDirectory() as tmp, Count():
        train_round(model, masks, RoundData(data, data, collate, collate), spec, 1, make_accelerator(spec),
                    Checkpoints(Storage.open(tmp), Path(tmp) / "c", Path(tmp) / "q"), checkpoint_every=0,
                    after_step=lambda step: seen.append((Count.ops, Count.kernels)))
    return seen[-1][0] - seen[-2][0], seen[-1][1] - seen[-2][1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint-every", type=int, default=DEFAULT_CHECKPOINT_EVERY)
    parser.add_argument("--count-ops", action="store_true")
    args = parser.parse_args()
    if args.count_ops:
        ops, kernels = count_ops()
        print(f"lnsub's train step of a 12-layer BERT (CPU): {ops:,} aten ops, {kernels:,} of them not views")
    p = plan("full")
    _, lnsub_costs = _total(p, "a100", lambda s: cost.lnsub_policy(s, args.checkpoint_every))
    _, authors_costs = _total(p, "a100", lambda s: cost.AUTHORS)
    for (family, kind), m in cost.MEASUREMENTS.items():
        print(f"MFU {family}/{kind}: {m.mfu:.3f}  ({m.source})")
    print_table(f"full, lnsub's configuration, one A100 a cell (checkpoints every {args.checkpoint_every} steps)",
                lnsub_costs)
    print_table("full, the authors' configuration, one A100 a cell", authors_costs)
    paper_check(p)
    total = savings(p, args.checkpoint_every)
    print(f"\nfull: {total:,.1f} A100-hours predicted (paper: 1,966.5 RTX-8000 hours)")


if __name__ == "__main__":
    main()
