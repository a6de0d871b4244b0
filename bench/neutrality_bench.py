"""Overlap beyond θ0 at mBERT's size: the time of each step of analysis/neutrality.py, and the ratio's stability
over the number of bins, on planted masks (72 matrices, 84,934,656 weights).

Usage: python bench/neutrality_bench.py [--shared 0.2] [--bins 4 8 16 32 64 128]
θ0 has matrices of six scales; two tickets are the global top 20% of |θ0 + shared drift + own drift| (the
drifts' scales relative to each matrix's), two more stand in for the cells' one-shot masks of their
trained weights. Prints: building the strata of θ0 (once per task), re-laying one cell (its mask and its
one-shot mask), one pair under θ0's null and under the stricter one, the groupings, and the ratio per
number of bins.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lnsub.analysis import neutrality as N

SUFFIXES = {"attention.self.query": (768, 768), "attention.self.key": (768, 768), "attention.self.value": (768, 768),
            "attention.output.dense": (768, 768), "intermediate.dense": (3072, 768), "output.dense": (768, 3072)}
SHAPES = {f"bert.encoder.layer.{layer}.{s}.weight": shape for layer in range(12) for s, shape in SUFFIXES.items()}


def planted(shared: float, rng) -> tuple[dict, list[dict]]:
    scale = {n: np.float32(0.02 * (1 + 2 * (i % 6))) for i, n in enumerate(SHAPES)}
    theta0 = {n: rng.standard_normal(s, dtype=np.float32) * scale[n] for n, s in SHAPES.items()}
    common = {n: rng.standard_normal(s, dtype=np.float32) * scale[n] * np.float32(shared) for n, s in SHAPES.items()}
    masks = []
    for _ in range(4):
        score = {n: np.abs(theta0[n] + common[n] + rng.standard_normal(s, dtype=np.float32) * scale[n] * np.float32(0.5))
                 for n, s in SHAPES.items()}
        flat = np.concatenate([v.ravel() for v in score.values()])
        k = int(round(0.2 * flat.size))
        threshold = np.partition(flat, flat.size - k)[flat.size - k]
        masks.append({n: v >= threshold for n, v in score.items()})
    return theta0, masks


def timed(f):
    start = time.perf_counter()
    out = f()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=float, default=0.2)
    parser.add_argument("--bins", type=int, nargs="+", default=[4, 8, 16, 32, 64, 128])
    args = parser.parse_args()
    theta0, (a, b, ta, tb) = planted(args.shared, np.random.default_rng(0))
    print(f"{sum(v.size for v in theta0.values()):,} weights in {len(theta0)} matrices, shared drift {args.shared}")
    strata, t_strata = timed(lambda: N.MagnitudeStrata(theta0))
    ca, t_cell = timed(lambda: N.ranked_cell(strata, a, ta))
    cb = N.ranked_cell(strata, b, tb)
    observed, t_obs = timed(lambda: strata.counts(ca.mask, cb.mask))
    base, t_base = timed(lambda: N.stratum_null(strata, ca, cb, observed=observed))
    strict, t_strict = timed(lambda: N.stratum_null(strata, ca, cb, given=True, observed=observed))
    _, t_groups = timed(lambda: [N.aggregate(strata, ca, cb, base, by) for by in ("total", "layer", "component")])
    print(f"strata of θ0 ({N.DEFAULT_BINS} bins a matrix): {t_strata:.2f} s; one cell re-laid (mask and one-shot "
          f"mask): {t_cell:.2f} s")
    print(f"one pair: |a ∩ b| per stratum {1000 * t_obs:.0f} ms, θ0's null {1000 * t_base:.0f} ms, the stricter "
          f"null {1000 * t_strict:.0f} ms, three groupings {1000 * t_groups:.0f} ms")
    total = N.aggregate(strata, ca, cb, base, "total")["all"]
    given = N.aggregate(strata, ca, cb, strict, "total")["all"]
    print(f"ratio {total.ratio:.4f}, excess Jaccard {total.excess_jaccard:+.4f}; given the stand-in one-shot masks "
          f"{given.ratio:.4f}")
    for bins in args.bins:
        e, t = timed(lambda: N.excess_overlap(theta0, a, b, bins=bins))
        print(f"bins {bins:4d}: ratio {e.ratio:.4f}, excess Jaccard {e.excess_jaccard:+.4f} ({t:.1f} s end to end)")


if __name__ == "__main__":
    main()
