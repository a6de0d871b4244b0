"""Jaccard matrices of mBERT-size masks: popcount on packed bits versus float32 tensors, in the same run.

Usage: python bench/overlap_bench.py [--masks 11] [--levels 1] [--density 0.5] [--threads 1]
Each level's masks are written with save_masks to a temporary folder, measured, then deleted
(one level at a time). Each variant runs in its own spawned process, so its peak memory is its
own: growth of its peak RSS (VmHWM), reset after imports and a malloc_trim (Linux, glibc).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import tempfile
import time
from pathlib import Path
from queue import Empty

import numpy as np

SUFFIXES = {"attention.self.query": (768, 768), "attention.self.key": (768, 768), "attention.self.value": (768, 768),
            "attention.output.dense": (768, 768), "intermediate.dense": (3072, 768), "output.dense": (768, 3072)}
SHAPES = {f"bert.encoder.layer.{layer}.{s}.weight": shape for layer in range(12) for s, shape in SUFFIXES.items()}
GROUPINGS = ("total", "layer", "component")


def _peak_rss_mib() -> float:
    # VmHWM, not getrusage's ru_maxrss: a spawned child's ru_maxrss starts at its forking parent's peak
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def _reset_peak() -> None:
    # importing torch peaks above where RSS settles and leaves freed heap resident that later arrays
    # would reuse unseen: hand free pages back (glibc), then reset the high-water mark (Linux >= 4.0)
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _packed(folders, threads):
    from lnsub.analysis.overlap import jaccard_matrix, read_packed

    t0 = time.perf_counter()
    masks = {f.name: read_packed(f) for f in folders}
    times, result = {"load": time.perf_counter() - t0}, {}
    for by in GROUPINGS:
        t0 = time.perf_counter()
        result.update(jaccard_matrix(masks, by=by))
        times[by] = time.perf_counter() - t0
    t0 = time.perf_counter()
    jaccard_matrix(masks, by=GROUPINGS)  # the three groupings sharing one AND + popcount per pair
    times["one pass"] = time.perf_counter() - t0
    return times, {g: m for g, (_, m) in result.items()}


def _float32(folders, threads):
    import torch

    from lnsub.analysis.overlap import component_of
    from lnsub.trainables.masks import iter_masks

    torch.set_num_threads(threads)
    names = list(SHAPES)
    offsets = np.concatenate([[0], np.cumsum([r * c for r, c in SHAPES.values()])])
    t0, flat = time.perf_counter(), []
    for f in folders:  # one float32 vector of the whole prunable set per mask
        parts = dict(iter_masks(f))
        flat.append(torch.from_numpy(np.concatenate([parts[n].ravel() for n in names])).to(torch.float32))
        del parts
    times, result = {"load": time.perf_counter() - t0}, {}
    for by in GROUPINGS:
        t0 = time.perf_counter()
        groups: dict[str, list[slice]] = {}
        for k, n in enumerate(names):
            layer, comp = component_of(n)
            key = {"total": "all", "layer": f"layer_{layer}", "component": comp}[by]
            groups.setdefault(key, []).append(slice(int(offsets[k]), int(offsets[k + 1])))
        for g, slices in groups.items():
            kept = [sum(float(a[s].sum()) for s in slices) for a in flat]
            m = np.ones((len(flat), len(flat)))
            for i in range(len(flat)):
                for j in range(i + 1, len(flat)):
                    inter = sum(float((flat[i][s] * flat[j][s]).sum()) for s in slices)
                    union = kept[i] + kept[j] - inter
                    m[i, j] = m[j, i] = inter / union if union else 1.0
            result[g] = m
        times[by] = time.perf_counter() - t0
    return times, result


def _child(variant, folders, threads, queue):
    import torch  # noqa: F401  imports first, so the RSS growth is the work's alone
    import lnsub.analysis.overlap  # noqa: F401

    _reset_peak()
    before = _peak_rss_mib()
    times, result = (_packed if variant == "packed" else _float32)(folders, threads)
    queue.put((times, result, _peak_rss_mib() - before))


def _run(variant, folders, threads):
    ctx = mp.get_context("spawn")  # a fresh process: its max RSS is not inherited from this one
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(variant, folders, threads, queue))
    proc.start()
    while True:  # poll, so a child that dies (out of memory, say) ends the bench instead of hanging it
        try:
            out = queue.get(timeout=1)
            break
        except Empty:
            if not proc.is_alive():
                raise SystemExit(f"the {variant} process died with exit code {proc.exitcode}")
    proc.join()
    return out


def _make_masks(root: Path, n_masks: int, density: float, level: int) -> list[Path]:
    import torch

    from lnsub.trainables.masks import save_masks
    from lnsub.trainables.storage import Storage

    folders = []
    for k in range(n_masks):
        rng = np.random.default_rng(1000 * level + k)
        masks = {n: torch.from_numpy(rng.random(s, dtype=np.float32) < density) for n, s in SHAPES.items()}
        save_masks(Storage.open(root), root / f"lang{k:02d}", masks)
        folders.append(root / f"lang{k:02d}")
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--masks", type=int, default=11, help="masks per level (one per language)")
    parser.add_argument("--levels", type=int, default=1, help="levels, measured one at a time")
    parser.add_argument("--density", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the float32 variant")
    args = parser.parse_args()
    n_weights = sum(r * c for r, c in SHAPES.values())
    print(f"{args.masks} masks x {n_weights:,} weights ({len(SHAPES)} matrices), density {args.density}, "
          f"torch threads {args.threads}; peak memory: growth of VmHWM in a spawned process, reset after its imports")
    for level in range(args.levels):
        root = Path(tempfile.mkdtemp(prefix="overlap_bench_"))
        try:
            t0 = time.perf_counter()
            folders = _make_masks(root, args.masks, args.density, level)
            print(f"level {level}: generated and saved in {time.perf_counter() - t0:.1f} s")
            runs = {v: _run(v, folders, args.threads) for v in ("packed", "float32")}
            for v, (times, _, rss) in runs.items():
                cols = "  ".join(f"{k} {s:.3f} s" for k, s in times.items())
                print(f"  {v:8s} {cols}  peak RSS +{rss:.0f} MiB")
            (tp, rp, rss_p), (tf, rf, rss_f) = runs["packed"], runs["float32"]
            cp, cf = sum(tp[b] for b in GROUPINGS), sum(tf[b] for b in GROUPINGS)
            diff = max(float(np.abs(rp[g] - rf[g]).max()) for g in rp)
            same = sorted(rp) == sorted(rf) and diff <= 1e-6
            print(f"  float32/packed: compute {cf / cp:.1f}x slower ({cf:.2f} s vs {cp:.2f} s for the 3 groupings), "
                  f"load {tf['load'] / tp['load']:.1f}x, peak RSS {rss_f / max(rss_p, 1):.1f}x; "
                  f"{len(rp)} matrices {'agree' if same else 'DIFFER'} (max |diff| {diff:.2e})")
            if not same:
                raise SystemExit("the two implementations disagree")
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
