"""The GPU check's measurements against the cost model (orchestrator/cost.py); bench/gpu_check.sh runs it.

  python bench/gpu_check.py throughput [--steps 30] [--mlm-steps 10]
      bench/throughput.py's comparison at mBERT's shape: the authors' configuration (Trainer, fp32, padded to
      max_length, full MLM head) against lnsub's train_round in bf16 (grouped batches, masked MLM head), per
      task: examples/s, achieved TFLOP/s and MFU with the cost model's FLOPs of the very batches timed, and
      the examples/s the cost model predicts for them.
  python bench/gpu_check.py grid DIR      write DIR/cell.yaml: one XNLI cell on the rehearsal's copies, bf16
  python bench/gpu_check.py cell STORAGE  that cell's measured seconds per step and per level, against the model
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import statistics
from pathlib import Path

import torch

from lnsub.orchestrator import cost
from lnsub.orchestrator.grid import plan
from lnsub.trainables.padding import epoch_batches, width
from lnsub.trainables.tasks.mlm import MLM_PROBABILITY

HERE = Path(__file__).resolve().parent
CELL_STEPS, CELL_BATCH, CELL_LEVELS = 200, 32, 1
CELL_GRID = f"""# one XNLI cell of the rehearsal (mBERT's architecture, random weights) on a GPU: bf16, grouped
name: gpu-check
model: ./lnsub-rehearsal/model
languages: [en]
tasks:
  xnli: {{data_dir: ./lnsub-rehearsal/data, mixed_precision: bf16, group_by_length: true, steps: {CELL_STEPS},
         batch_size: {CELL_BATCH}, max_length: 128, train_size: 300, valid_size: 100}}
seeds: [0]
levels: {CELL_LEVELS}
prune_fraction: 0.1
resources: {{workers_per_cell: 1, cpus_per_worker: 4, gpus_per_worker: 1}}
cost_hours: {{xnli: 0.05}}
"""


def this_device() -> cost.Device | None:
    """The cost model's entry for the GPU in use, if it has one."""
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    for key, marker in (("h100", "H100"), ("a100", "A100"), ("rtx8000", "RTX 8000")):
        if marker in name:
            return cost.DEVICES[key]
    return None


def _throughput_module():
    spec = importlib.util.spec_from_file_location("lnsub_bench_throughput", HERE / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed_widths(tp, task: str, data, batch: int, steps: int, side: str) -> cost.Widths:
    """The widths of the batches a side timed (its steps after the first), in the order it drew them."""
    length = tp.MAX_LENGTH[task]
    if task == "mlm":
        predicted = length if side == "authors" else MLM_PROBABILITY * (length - 2)
        return cost.Widths(length, length ** 2, predicted=predicted)
    if side == "authors":
        return cost.Widths(length, length ** 2)
    spec = tp.lnsub_spec(task, batch, steps, "en", "bf16")
    lengths = [len(ids) for ids in data["input_ids"]]
    widths = [width(b, spec, "grouped") for b in epoch_batches(lengths, spec, "grouped", batch, level=1)[1:steps + 1]]
    return cost.Widths(statistics.mean(widths), statistics.mean(w * w for w in widths))


def report(task: str, side: str, seconds: float, batch: int, steps: int, w: cost.Widths, kind: str) -> None:
    """One line: measured examples/s, TFLOP/s and MFU; the cost model's examples/s for the same batches."""
    shape = cost.model_shape("bert-base-multilingual-cased")
    flops = cost.train_flops(shape, task, w)
    rate = steps * batch / seconds
    line = f"{task:4s} {side:7s} ({'bf16' if kind == 'tensor16' else kind}): {rate:8.1f} examples/s, {rate * flops / 1e12:7.1f} TFLOP/s"
    device = this_device()
    if device is not None:
        peak = device.tensor16 if kind == "tensor16" else device.fp32
        step = max(batch * flops / cost.achieved_flops(device, kind)
                   + shape.parameters * cost.OPTIMIZER_BYTES_PER_PARAMETER / device.bandwidth,
                   cost.KERNELS_PER_STEP * cost.HOST_SECONDS_PER_KERNEL)
        line += (f", MFU {rate * flops / peak:.3f} of {device.name}'s {peak / 1e12:.0f} TFLOP/s; the cost model "
                 f"predicts {batch / step:8.1f} examples/s (measured/predicted {rate * step / batch:.2f})")
    print(line, flush=True)


def _fresh() -> None:
    """Free the last run's memory and Accelerate's process-wide state, which keeps the first precision it saw."""
    from accelerate.state import AcceleratorState  # heavy: bench only

    gc.collect()
    torch.cuda.empty_cache()
    AcceleratorState._reset_state(reset_partial_state=True)


def throughput(steps: int, mlm_steps: int, batch: int, mlm_batch: int) -> None:
    tp = _throughput_module()
    for task in ("xnli", "ner", "mlm"):
        b, n = (mlm_batch, mlm_steps) if task == "mlm" else (batch, steps)
        pristine = tp.build_model(task)
        data = tp.build_data(task, "en", (200 if task != "mlm" else n + 1) * b)
        _fresh()
        lnsub = tp.run_lnsub(pristine, task, data, b, n, "en", "bf16")
        _fresh()
        authors = tp.run_trainer(pristine, task, data, b, n)
        _fresh()
        report(task, "authors", authors, b, n, timed_widths(tp, task, data, b, n, "authors"), "fp32")
        report(task, "lnsub", lnsub, b, n, timed_widths(tp, task, data, b, n, "lnsub"), "tensor16")
        print(f"ratio {task} {authors / lnsub:.2f}  (authors' seconds over lnsub's, same examples)", flush=True)


def cell(storage: Path, grid: Path, checkpoint_every: int) -> None:
    """The sweep's one cell: measured seconds per step and per level beside the model's prediction."""
    spec = plan(str(grid)).cells[0].spec
    device = this_device()
    levels = sorted((storage / "cells" / spec.id).glob("level_*/metrics.json"))
    if not levels:
        raise SystemExit(f"gpu_check: no level of cell {spec.id} finished under {storage}")
    predicted = cost.cell_cost(spec, device, cost.lnsub_policy(spec, checkpoint_every)) if device else None
    for path in levels:
        m = json.loads(path.read_text())
        step = m["seconds_per_step"]
        line = (f"{path.parent.name}: {step * 1e3:.1f} ms a step, {spec.batch_size / step:.0f} examples/s; "
                f"level {m['level_seconds']:.1f} s")
        if predicted is not None:
            per_round = predicted.hours * 3600 / (spec.levels + 1)
            line += f" (the cost model: {per_round:.1f} s a level, {per_round / spec.steps * 1e3:.1f} ms a step)"
        print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--steps", type=int, default=30)
    t.add_argument("--mlm-steps", type=int, default=10)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--mlm-batch", type=int, default=16)
    sub.add_parser("grid").add_argument("folder", type=Path)
    c = sub.add_parser("cell")
    c.add_argument("storage", type=Path)
    c.add_argument("--grid", type=Path, required=True)
    c.add_argument("--checkpoint-every", type=int, required=True, help="the sweep's --checkpoint-every")
    args = parser.parse_args()
    if args.command == "throughput":
        throughput(args.steps, args.mlm_steps, args.batch, args.mlm_batch)
    elif args.command == "grid":
        (args.folder / "cell.yaml").write_text(CELL_GRID)
        print(args.folder / "cell.yaml")
    else:
        cell(args.storage, args.grid, args.checkpoint_every)


if __name__ == "__main__":
    main()
