"""What a checkpoint of mBERT costs training: written in training's way, or behind it (trainables/checkpointing.py).

mBERT's shape (random weights: no download), AdamW's moments made by one step, then for each of --repeats
rounds: a synchronous `Checkpoints.save` (what a round waited for before), and a `CheckpointWriter.save`
(one writer, as in a round: from the second checkpoint on it copies into the first one's host memory), timed
until it returns (what a round waits for now: the copy into host memory) and until its write has finished.
Both write the same state to the same local folder. The last line: `ratio <sync / stall>`.

Usage: python bench/checkpoints.py [--repeats 5] [--dir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertForMaskedLM

from lnsub.orchestrator.cost import CHECKPOINT_BYTES_PER_PARAMETER, HUB_CONFIGS
from lnsub.trainables.checkpointing import CheckpointWriter
from lnsub.trainables.storage import Storage
from lnsub.trainables.store import Checkpoints


def mbert_state() -> tuple[dict, int]:
    fields = {k: v for k, v in HUB_CONFIGS["bert-base-multilingual-cased"].items() if k != "model_type"}
    model = BertForMaskedLM(BertConfig(**fields))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    ids = torch.randint(1000, 2000, (1, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()  # the moments exist, as in any checkpoint after the first step
    params = sum(p.numel() for p in model.parameters())
    return {"step": 1, "model": model.state_dict(), "optimizer": optimizer.state_dict()}, params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    state, params = mbert_state()
    size = params * CHECKPOINT_BYTES_PER_PARAMETER / 1e9
    print(f"mBERT: {params:,} parameters; weights and AdamW's moments are about {size:.2f} GB")
    sync, stall, behind = [], [], []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        checkpoints = Checkpoints(Storage.open(tmp), Path(tmp) / "checkpoint", Path(tmp) / "quarantine")
        step, writer = 0, CheckpointWriter(checkpoints)  # one round's writer: its host copy is reused
        for _ in range(args.repeats):
            step += 1
            started = time.perf_counter()
            checkpoints.save(step, state)
            sync.append(time.perf_counter() - started)
            step += 1
            started = time.perf_counter()
            writer.save(step, state)
            stall.append(time.perf_counter() - started)
            writer.wait()
            behind.append(time.perf_counter() - started)
        writer.close()
        sizes = {int(f.parent.name.split("_")[1]) % 2: f.stat().st_size
                 for f in (Path(tmp) / "checkpoint").rglob("state.pt")}  # odd steps saved directly, even behind
    print(f"state.pt: {sizes[1] / 1e9:.2f} GB saved directly, {sizes[0] / 1e9:.2f} GB from behind training")
    for name, xs in (("synchronous save (training waited)", sync), ("behind training: training waits", stall),
                     ("behind training: the write done after", behind)):
        print(f"  {name:40s} min {min(xs):6.2f} s  median {statistics.median(xs):6.2f} s  max {max(xs):6.2f} s")
    ratios = [s / w for s, w in zip(sync, stall)]
    print(f"training's wait, synchronous / behind, paired: min {min(ratios):.1f}, median "
          f"{statistics.median(ratios):.1f}, max {max(ratios):.1f}")
    print(f"ratio {statistics.median(ratios):.1f}")


if __name__ == "__main__":
    main()
