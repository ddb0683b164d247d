"""The gate: compare current run-level samples with a baseline's, metric by metric.

A gated metric FAILs only when its change is worse than the tolerance (the smallest change that
matters) *and* significant under the suite's policy (``gate/suite.py``): the suite's false-alarm
budget spread over its gated tests, the runs' within-night noise estimated robustly (outlier runs left
out), and the night-to-night variation when it is known. A change beyond the tolerance without
significance is INCONCLUSIVE. ``benchmarks/gate_monte_carlo.py --suite 34`` measures the whole design.

With fewer than two samples on a side (a published single number, say) there is no test: the
tolerance band is widened by twice the noise estimated from the other side (or 3% when neither
side can tell) and the row says so. The failed-request count is functional: against a baseline without
failures any failed request FAILs the test; against one with failures (a published run that completed
984 of 1000), more failures than it had beyond a Poisson 3-sigma allowance FAIL.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pytest_llmperf.gate.suite import DEFAULT_POLICY, SuitePolicy, weigh

__all__ = [
    "DEFAULT_GATED",
    "REPORTED",
    "MetricVerdict",
    "compare_metric",
    "compare_samples",
    "failure_allowance",
    "format_failure",
    "headline",
    "higher_is_better",
    "overall_verdict",
]

Verdict = Literal["PASS", "FAIL", "INCONCLUSIVE", "NEW"]

DEFAULT_GATED: tuple[str, ...] = ("total_token_throughput", "output_throughput", "mean_tpot_ms", "failed")
REPORTED: tuple[str, ...] = ("request_throughput", "mean_ttft_ms", "p99_ttft_ms", "p99_tpot_ms", "mean_itl_ms")
# the smallest change that matters by default; significance comes from the suite policy (gate/suite.py)
DEFAULT_TOLERANCE = 0.06
DEFAULT_NOISE_CV = 0.03
STALE_FACTOR = 2.0  # an improvement of more than STALE_FACTOR x tolerance suggests a stale baseline

_HIGHER_IS_BETTER = {
    "request_throughput",
    "request_goodput",
    "output_throughput",
    "total_token_throughput",
    "max_output_tokens_per_s",
    "completed",
}


def higher_is_better(metric: str) -> bool:
    """Throughputs are higher-is-better; latencies (``*_ms``), durations and failures lower-is-better."""
    if metric in _HIGHER_IS_BETTER:
        return True
    if metric.endswith("_ms") or metric in ("failed", "duration"):
        return False
    raise KeyError(f"no direction is declared for metric {metric!r}")


@dataclass(frozen=True)
class MetricVerdict:
    metric: str
    baseline: float | None
    current: float
    change: float | None  # signed relative change of the mean, (current - baseline) / baseline
    tolerance: float
    p_value: float | None
    n_baseline: int
    n_current: int
    verdict: Verdict
    gated: bool
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _noise_cv(*sides: Sequence[float]) -> float:
    """Run-to-run coefficient of variation, from the side(s) with at least two samples."""
    cvs = [statistics.stdev(x) / abs(statistics.fmean(x)) for x in sides if len(x) >= 2 and statistics.fmean(x)]
    return max(cvs) if cvs else DEFAULT_NOISE_CV


def failure_allowance(baseline_failed: float) -> float:
    """The failed requests a run may have when its baseline had ``baseline_failed`` on average: none more
    for a baseline without failures; else the baseline's count plus a Poisson 3-sigma band (at least 2)."""
    if baseline_failed <= 0:
        return 0.0
    return baseline_failed + max(2.0, 3.0 * math.sqrt(baseline_failed))


def _compare_failures(baseline: Sequence[float] | None, current: Sequence[float], gated: bool) -> MetricVerdict:
    """Failed requests are functional: more than the baseline had, beyond :func:`failure_allowance`, FAILs;
    the failures a baseline had too PASS with a note naming them."""
    cur_mean = statistics.fmean(current)
    base_mean = statistics.fmean(baseline) if baseline else None
    allowed = failure_allowance(base_mean or 0.0)
    verdict: Verdict = "FAIL" if cur_mean > allowed else "PASS"
    note = ""
    if cur_mean > 0:
        note = f"{sum(current):g} failed request(s)" + (f" in {len(current)} runs" if len(current) > 1 else "")
        if base_mean:
            note += f"; the baseline had {base_mean:g} a run, {allowed:.0f} allowed"
    return MetricVerdict(
        "failed",
        base_mean,
        cur_mean,
        None,
        0.0,
        None,
        len(baseline or ()),
        len(current),
        verdict if gated else "PASS",
        gated,
        note,
    )


def compare_metric(
    metric: str,
    baseline: Sequence[float] | None,
    current: Sequence[float],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    policy: SuitePolicy = DEFAULT_POLICY,
    gated: bool = True,
) -> MetricVerdict:
    cur_mean = statistics.fmean(current)
    if metric == "failed":
        return _compare_failures(baseline, current, gated)
    if not baseline:
        return MetricVerdict(metric, None, cur_mean, None, tolerance, None, 0, len(current), "NEW", gated)
    higher = higher_is_better(metric)
    ev = weigh(baseline, current, higher_better=higher, policy=policy)
    base_mean, cur_mean, worse_by = ev.base, ev.current, ev.worse_by
    change = -worse_by if higher else worse_by
    p_value: float | None = None
    notes = [f"{ev.outliers} outlier run(s) left out"] if ev.outliers else []
    verdict: Verdict
    if worse_by > tolerance:
        if ev.p_value is not None:
            p_value = ev.p_value
            verdict = "FAIL" if p_value < policy.metric_alpha else "INCONCLUSIVE"
            if verdict == "INCONCLUSIVE":
                notes.append(f"beyond tolerance but not significant (p={p_value:.2g} >= {policy.metric_alpha:.2g})")
        else:
            wide = tolerance + 2 * _noise_cv(baseline, current)
            verdict = "FAIL" if worse_by > wide else "INCONCLUSIVE"
            notes.append(f"n<2 on a side: no test; tolerance widened by the noise estimate to {wide:.1%}")
    else:
        verdict = "PASS"
        if -worse_by > STALE_FACTOR * tolerance:
            notes.append("large improvement: the baseline may be stale (--llmperf-update-baselines=all)")
    note = "; ".join(notes)
    if not gated and verdict != "PASS":
        note = (note + "; " if note else "") + f"reported only ({verdict.lower()})"
        verdict = "PASS"
    return MetricVerdict(
        metric, base_mean, cur_mean, change, tolerance, p_value, ev.n_base, ev.n_current, verdict, gated, note
    )


def compare_samples(
    baseline: Mapping[str, Sequence[float]] | None,
    current: Mapping[str, Sequence[float]],
    *,
    tolerances: Mapping[str, float],
    default_tolerance: float = DEFAULT_TOLERANCE,
    gated: Sequence[str] = DEFAULT_GATED,
    reported: Sequence[str] = REPORTED,
    policy: SuitePolicy = DEFAULT_POLICY,
) -> list[MetricVerdict]:
    rows: list[MetricVerdict] = []
    for metric in (*gated, *reported):
        if metric not in current:
            continue
        base = None if baseline is None else baseline.get(metric)
        rows.append(
            compare_metric(
                metric,
                base,
                current[metric],
                tolerance=tolerances.get(metric, default_tolerance),
                policy=policy,
                gated=metric in gated,
            )
        )
    return rows


def overall_verdict(rows: Sequence[MetricVerdict]) -> Verdict:
    gated = [r for r in rows if r.gated]
    if any(r.verdict == "FAIL" for r in gated):
        return "FAIL"
    if any(r.verdict == "NEW" for r in gated):
        return "NEW"
    if any(r.verdict == "INCONCLUSIVE" for r in gated):
        return "INCONCLUSIVE"
    return "PASS"


def headline(rows: Sequence[MetricVerdict]) -> str:
    """The regressed metrics in one short line (``output_throughput -23.0%, mean_tpot_ms +29.9%``): the first
    line of a failure, which is what pytest's short summary shows."""
    return (
        ", ".join(f"{r.metric} {r.change:+.1%}" for r in rows if r.verdict == "FAIL" and r.change is not None)
        or "see below"
    )


def format_failure(rows: Sequence[MetricVerdict]) -> str:
    """The compact message a failing test carries: one line per regressed metric."""
    lines = []
    for r in rows:
        if r.verdict != "FAIL":
            continue
        if r.metric == "failed":
            lines.append(f"failed requests: {r.note} (functional failure, not slowness)")
            continue
        assert r.baseline is not None and r.change is not None
        p = f", p={r.p_value:.3g}" if r.p_value is not None else ""
        lines.append(
            f"{r.metric}: {r.baseline:.2f} -> {r.current:.2f} ({r.change:+.1%}, tolerance {r.tolerance:.0%}{p}, "
            f"n={r.n_baseline}/{r.n_current})" + (f" [{r.note}]" if r.note else "")
        )
    return "\n".join(lines)
