"""Monte Carlo check of the gate's verdict: false alarms with no change, detection of a regression.

Each trial draws 3 baseline runs and 3 current runs of output throughput with run-to-run noise of
3% coefficient of variation (normal), the current runs scaled by (1 - regression), and asks the
gate (``pytest_llmperf.gate.compare_metric``, default tolerance and alpha) for its verdict.

    python benchmarks/gate_monte_carlo.py [--trials 1000] [--cv 0.03] [--n 3] [--seed 20261129]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from pytest_llmperf.gate.decision import DEFAULT_ALPHA, DEFAULT_TOLERANCE, compare_metric


def rate(
    rng: np.random.Generator,
    trials: int,
    n: int,
    cv: float,
    regression: float,
    metric: str,
    tolerance: float,
    alpha: float,
) -> tuple[float, float]:
    fails = inconclusive = 0
    for _ in range(trials):
        base = 1000.0 * (1 + cv * rng.standard_normal(n))
        factor = (1 - regression) if metric.endswith("throughput") else (1 + regression)
        cur = 1000.0 * factor * (1 + cv * rng.standard_normal(n))
        v = compare_metric(metric, base.tolist(), cur.tolist(), tolerance=tolerance, alpha=alpha)
        fails += v.verdict == "FAIL"
        inconclusive += v.verdict == "INCONCLUSIVE"
    return fails / trials, inconclusive / trials


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--cv", type=float, default=0.03)
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--seed", type=int, default=20261129)
    ap.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE)
    ap.add_argument("--alpha", type=float, default=DEFAULT_ALPHA)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    print(
        f"{args.trials} trials, {args.n} baseline vs {args.n} current runs, noise CV {args.cv:.0%}, "
        f"tolerance {args.tolerance:.0%}, alpha {args.alpha}, seed {args.seed}"
    )
    print(f"{'metric':<20}{'true change':>12}{'FAIL rate':>12}{'INCONCLUSIVE':>14}")
    for metric in ("output_throughput", "mean_tpot_ms"):
        for regression in (0.0, 0.05, 0.10, 0.15):
            fail, inc = rate(rng, args.trials, args.n, args.cv, regression, metric, args.tolerance, args.alpha)
            sign = "-" if metric.endswith("throughput") else "+"
            print(f"{metric:<20}{sign + format(regression, '.0%'):>12}{fail:>12.1%}{inc:>14.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
