"""Change-point detection on seeded synthetic nightly histories (issue #17's figures).

90 nights; each night's value is the mean of 3 runs with run-to-run CV 2% around a level that has its
own per-night offset (CV 1.5%). Three kinds of history: a 7% step down at night 60 (found if a change
point lies within 2 nights of 60 and its size is within 2 points of -7%); a 0.3%-per-night drift down
from night 20 (flagged by night 45 if the series cut at night 45 shows a change point); and no change
at all (any change point is a false one).

    python benchmarks/change_points.py [--trials 400] [--seed 20261201]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from pytest_llmperf.history.changes import PENALTY_FACTOR, change_points


def history(rng: np.random.Generator, nights: int, level: np.ndarray) -> list[float]:
    offsets = 1 + 0.015 * rng.standard_normal(nights)
    runs = 1 + 0.02 * rng.standard_normal((nights, 3))
    return [float(v) for v in 1000.0 * level * offsets * runs.mean(axis=1)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=400)
    ap.add_argument("--seed", type=int, default=20261201)
    ap.add_argument("--penalty-factor", type=float, default=PENALTY_FACTOR)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    nights = 90
    started = time.perf_counter()
    step_found = drift_found = false = 0
    for _ in range(args.trials):
        step = np.where(np.arange(nights) >= 60, 0.93, 1.0)
        cps = change_points(history(rng, nights, step), penalty_factor=args.penalty_factor)
        step_found += any(abs(c.index - 60) <= 2 and abs(c.step + 0.07) <= 0.02 for c in cps)
        drift = 1 - 0.003 * np.clip(np.arange(nights) - 20, 0, None)
        cut = history(rng, nights, drift)[:46]  # what is known on the morning after night 45
        drift_found += any(c.step < 0 for c in change_points(cut, penalty_factor=args.penalty_factor))
        flat = change_points(history(rng, nights, np.ones(nights)), penalty_factor=args.penalty_factor)
        false += bool(flat)
    t = args.trials
    print(
        f"{t} trials of 90 nights (run CV 2%, night CV 1.5%, 3 runs a night), penalty factor "
        f"{args.penalty_factor:g}, seed {args.seed}:\n"
        f"  7% step at night 60 found within 2 nights, size within 2 points: {step_found / t:.1%}\n"
        f"  0.3%/night drift from night 20 flagged by night 45: {drift_found / t:.1%}\n"
        f"  no change, a false change point: {false / t:.1%}\n"
        f"  ({time.perf_counter() - started:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
