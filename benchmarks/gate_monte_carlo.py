"""Monte Carlo check of the gate on whole nightly suites: red nights with no change, detection, runs spent.

Each simulated night runs ``--suite`` tests. A test's runs have correlated throughput and TPOT (the TPOT
noise is -0.8 correlated with throughput's), run-to-run noise of a given CV, optionally a per-night
offset (the node of the night: all of that test's runs that night are slower or faster together) and
optionally outlier runs (one in twenty 15% slow). Every test is decided by the project's own gate
(``pytest_llmperf.gate.check.decide`` with the suite policy of ``--suite`` tests and the default
tolerance): the first ``--runs`` runs, and for a failing or borderline first verdict
``--confirm`` fresh runs before deciding. The reference is one baseline night of ``--baseline-runs``
runs (given the model's night CV, as ``--llmperf-night-cv`` would), or K past nights of 3 runs each,
each night's runs centred on that night's mean, with the night CV measured over the suite's reference
nights: what ``--llmperf-reference history:K`` does with the history store.

A night is red when any test FAILs. Rows: no change (the share of red nights is the suite's false
alarms), then one test regressed (throughput down or TPOT up): the share of nights that test FAILs.

    python benchmarks/gate_monte_carlo.py --suite 34 [--nights 2000] [--seed 20261201]
    python benchmarks/gate_monte_carlo.py --suite 34 --models one-node --tolerance 0.02 --smallest
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace

import numpy as np

from pytest_llmperf.gate.check import decide
from pytest_llmperf.gate.decision import DEFAULT_TOLERANCE, overall_verdict
from pytest_llmperf.gate.suite import (
    DEFAULT_BUDGET,
    DEFAULT_CONFIRM_RUNS,
    SuitePolicy,
    centred_nights,
    night_cv_estimate,
)


@dataclass(frozen=True)
class Noise:
    name: str
    cv: float  # run-to-run
    night_cv: float = 0.0  # per-night offset of a test's runs
    outlier_rate: float = 0.0  # share of runs 15% slow
    reference_nights: int = 1


MODELS = {
    "iid": [Noise("(a) i.i.d. normal, CV 3%", 0.03)],
    "night": [
        Noise("(b) CV 2% + night offset CV 1.5%, one baseline night", 0.02, 0.015),
        Noise("(b) CV 2% + night offset CV 1.5%, 10 past nights (history), CV measured", 0.02, 0.015, 0.0, 10),
    ],
    "outliers": [Noise("(c) CV 3%, one run in twenty 15% slow", 0.03, 0.0, 0.05)],
    "one-node": [Noise("CV 1% (one node, back to back)", 0.01)],
}


class Night:
    def __init__(self, rng: np.random.Generator, noise: Noise) -> None:
        self.rng, self.noise = rng, noise

    def runs(self, n: int, offset: float, tput: float = 1.0, tpot: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        rng, cv = self.rng, self.noise.cv
        z1 = rng.standard_normal(n)
        z2 = -0.8 * z1 + 0.6 * rng.standard_normal(n)
        t = 5000.0 * (1 - offset) * tput * (1 + cv * z1)
        p = 20.0 * (1 + offset) * tpot * (1 + cv * z2)
        if self.noise.outlier_rate:
            slow = rng.random(n) < self.noise.outlier_rate
            t, p = np.where(slow, t * 0.85, t), np.where(slow, p * 1.15, p)
        return t, p

    def offset(self) -> float:
        return float(self.rng.standard_normal() * self.noise.night_cv)

    def reference_nights(self, baseline_runs: int) -> list[dict[str, list[float]]]:
        """The reference's nights: one baseline night, or K past nights of 3 runs each."""
        k = self.noise.reference_nights
        nights = [self.runs(baseline_runs if k <= 1 else 3, self.offset()) for _ in range(max(1, k))]
        return [{"total_token_throughput": t.tolist(), "mean_tpot_ms": p.tolist()} for t, p in nights]


def one_test(
    night: Night,
    args: argparse.Namespace,
    policy: SuitePolicy,
    reference: list[dict[str, list[float]]],
    tput: float,
    tpot: float,
) -> tuple[str, int]:
    offset = night.offset()
    t, p = night.runs(args.runs, offset, tput, tpot)
    samples = {"total_token_throughput": t.tolist(), "mean_tpot_ms": p.tolist()}

    def confirm() -> int:
        t2, p2 = night.runs(args.confirm, offset, tput, tpot)
        samples["total_token_throughput"] += t2.tolist()
        samples["mean_tpot_ms"] += p2.tolist()
        return int(args.confirm)

    decision = decide(
        reference[0] if len(reference) == 1 else centred_nights(reference),
        samples,
        tolerance={},
        default_tolerance=args.tolerance,
        policy=policy,
        confirm=confirm if args.confirm else None,
    )
    return overall_verdict(decision.rows), len(samples["mean_tpot_ms"])


def night_policy(policy: SuitePolicy, references: list[list[dict[str, list[float]]]]) -> SuitePolicy:
    """A history reference measures the night-to-night CV over the suite's reference nights, as
    ``--llmperf-reference history`` does over the store (``night_cv_estimate``); a baseline night is
    given the model's CV (``--llmperf-night-cv``)."""
    if policy.reference_nights <= 1:
        return policy
    series = [[n[m] for n in ref] for ref in references for m in ("total_token_throughput", "mean_tpot_ms")]
    return replace(policy, night_cv=night_cv_estimate(series)[0])


def row(
    night: Night, args: argparse.Namespace, policy: SuitePolicy, tput: float, tpot: float
) -> tuple[float, float, float]:
    """(share of red nights, share of nights the regressed test FAILs, mean runs per test per night)."""
    red = caught = runs = 0
    regressed = tput != 1.0 or tpot != 1.0
    for _ in range(args.nights):
        references = [night.reference_nights(args.baseline_runs) for _ in range(args.suite)]
        tonight = night_policy(policy, references)
        any_red = False
        for i in range(args.suite):
            change = (tput, tpot) if regressed and i == 0 else (1.0, 1.0)
            verdict, n = one_test(night, args, tonight, references[i], *change)
            runs += n
            if verdict == "FAIL":
                any_red = True
                caught += regressed and i == 0
        red += any_red
    return red / args.nights, caught / args.nights, runs / (args.nights * args.suite)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", type=int, default=34, help="gated tests per night")
    ap.add_argument("--nights", type=int, default=2000, help="simulated nights per row")
    ap.add_argument("--seed", type=int, default=20261201)
    ap.add_argument("--runs", type=int, default=3, help="runs per test per night (--llmperf-repeats)")
    ap.add_argument("--confirm", type=int, default=DEFAULT_CONFIRM_RUNS, help="--llmperf-confirm-repeats")
    ap.add_argument("--baseline-runs", type=int, default=10, help="runs of a baseline night")
    ap.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE)
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET)
    ap.add_argument("--models", default="iid,night,outliers", help=f"comma list of {', '.join(MODELS)}")
    ap.add_argument("--smallest", action="store_true", help="also find the smallest drop detected at 95%%")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    print(
        f"{args.suite} gated tests a night, {args.nights} nights a row, {args.runs} runs (+{args.confirm} to "
        f"confirm), baseline night of {args.baseline_runs} runs, tolerance {args.tolerance:.0%}, suite budget "
        f"{args.budget:.0%}, seed {args.seed}"
    )
    print(f"{'noise model':<64}{'change':>12}{'red nights':>12}{'detected':>10}{'runs/test':>11}")
    for key in args.models.split(","):
        for noise in MODELS[key]:
            policy = SuitePolicy(
                budget=args.budget,
                n_tests=args.suite,
                night_cv=noise.night_cv,
                reference_nights=noise.reference_nights,
            )
            night = Night(rng, noise)
            started = time.perf_counter()
            cases = [("none", 1.0, 1.0)] + [
                (
                    f"{label} {size:.0%}",
                    1 - size if label == "throughput -" else 1.0,
                    1 + size if label == "TPOT +" else 1.0,
                )
                for label, sizes in (("throughput -", (0.05, 0.10, 0.20)), ("TPOT +", (0.10,)))
                for size in sizes
            ]
            for label, tput, tpot in cases:
                red, caught, runs = row(night, args, policy, tput, tpot)
                shown = "-" if label == "none" else f"{caught:.1%}"
                print(f"{noise.name:<64}{label:>12}{red:>12.1%}{shown:>10}{runs:>11.2f}", flush=True)
            if args.smallest:
                for size in (0.02, 0.025, 0.03, 0.035, 0.04, 0.045, 0.05, 0.06, 0.07, 0.08):
                    _, caught, _ = row(night, args, policy, 1 - size, 1.0)
                    if caught >= 0.95:
                        print(f"{noise.name:<64}{'smallest':>12}{'':>12}{f'-{size:.1%}':>10} detected at {caught:.1%}")
                        break
            print(f"  ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
