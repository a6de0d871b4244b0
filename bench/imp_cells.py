"""One IMP cell per task on the tiny model: seconds per round, metric per level, mask bits per weight.

Usage: python bench/imp_cells.py [--language syn-en] [--levels 3] [--steps 60] [--storage DIR]
"""

from __future__ import annotations

import argparse
import tempfile

from lnsub.trainables.imp import run_cell
from lnsub.trainables.masks import mask_meta
from lnsub.trainables.spec import make_spec
from lnsub.trainables.store import CellStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--language", default="syn-ur")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--storage", default=None)
    args = parser.parse_args()
    storage = args.storage or tempfile.mkdtemp(prefix="lnsub-bench-")
    for task in ("mlm", "ner", "xnli"):
        spec = make_spec(task, args.language, lr=1e-3, batch_size=32, max_length=64, levels=args.levels,
                         steps=args.steps, train_size=4000, valid_size=400)
        result = run_cell(spec, storage)
        store = CellStore(storage, spec)
        bits = mask_meta(store.level_dir(args.levels))["bits_per_weight"]
        print(f"{task} ({spec.id}): mask {bits:.4f} bits per prunable weight")
        for r in result.levels:
            print(f"  level {r['level']} sparsity {r['sparsity']:.0%}: {r['metric']} {r['score']:.4f}, "
                  f"{r['level_seconds']:.1f} s per round ({1000 * r['seconds_per_step']:.0f} ms/step)")


if __name__ == "__main__":
    main()
