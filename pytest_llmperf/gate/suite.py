"""The gate designed for a whole nightly suite: how strict one test must be so that a night with no change
stays green, and the noise model a test's evidence is weighed with.

A nightly run is many tests with correlated metrics, and its noise is not i.i.d.: each night lands on a
node with its own clocks and temperatures (a per-night offset that more runs in the night do not average
away), and now and then one run is an outlier. So:

* the **false-alarm budget** is the suite's: the share of no-change nights allowed to go red (2%). With
  ``n`` gated tests, one test may fail a no-change night with probability ``1 - (1 - budget) ** (1 / n)``
  (Šidák), and a test's metrics count as the chances they are: total and output throughput of one
  workload move together (the same tokens over the same time), so a test has two, throughput and TPOT;
* **robust estimates**: a run further than 4 robust standard deviations from its side's median is left
  out (an outlier), the rest are averaged;
* the **between-night variance**: the change of a metric is weighed against the within-night noise of the
  runs *and* the night-to-night variation (``night_cv``, from calibration or history), which a reference
  built from ``reference_nights`` nights shrinks by ``1 + 1 / K``;
* **sequential confirmation** (in the fixture): a first verdict that is a failure or borderline buys fresh
  runs before the test fails; a clear pass stops at the minimum.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "DEFAULT_BUDGET",
    "DEFAULT_CONFIRM_RUNS",
    "DEFAULT_POLICY",
    "Evidence",
    "SuitePolicy",
    "centred_nights",
    "night_cv_estimate",
    "robust_runs",
    "weigh",
]

DEFAULT_BUDGET = 0.02  # the share of no-change nights a suite may go red on
DEFAULT_CONFIRM_RUNS = 5  # fresh runs a borderline or failing first verdict buys
OUTLIER_SDS = 3.0
# the robust scale is at least this share of the level: near-identical runs (a deterministic simulator)
# have a MAD near zero, and a run 0.1% off is not an outlier; with this floor one must be 1.5% off at least
SCALE_FLOOR = 0.005
CHANCES_PER_TEST = 2  # throughput (total and output together) and TPOT


@dataclass(frozen=True)
class SuitePolicy:
    """How strict one test's decision is, derived from the suite it runs in."""

    budget: float = DEFAULT_BUDGET
    n_tests: int = 1  # gated perf tests in the night (all shards together)
    night_cv: float = 0.0  # night-to-night coefficient of variation of a metric's level
    reference_nights: int = 1  # nights the reference was built from (a baseline file: 1)
    night_from: str = ""  # where night_cv comes from, when measured (history)

    @property
    def test_alpha(self) -> float:
        """The chance a no-change night may fail one test (Šidák over the suite's tests)."""
        return float(1.0 - (1.0 - self.budget) ** (1.0 / max(1, self.n_tests)))

    @property
    def metric_alpha(self) -> float:
        return self.test_alpha / CHANCES_PER_TEST

    def describe(self) -> str:
        night = (
            f"night-to-night CV {self.night_cv:.1%}" if self.night_cv or self.night_from else "no night-to-night term"
        )
        night += f" ({self.night_from})" if self.night_from else ""
        ref = "one baseline night" if self.reference_nights <= 1 else f"up to {self.reference_nights} reference nights"
        return (
            f"suite false-alarm budget {self.budget:.0%} over {self.n_tests} gated test(s): a metric fails at "
            f"p < {self.metric_alpha:.2g} and beyond its tolerance ({night}; {ref})"
        )


DEFAULT_POLICY = SuitePolicy()  # one test alone: it may use the whole budget


def robust_runs(values: Sequence[float], scale: float) -> list[float]:
    """The runs without outliers: those within ``OUTLIER_SDS`` robust standard deviations of the median.
    ``scale`` is the pooled robust standard deviation (absolute units); 0 keeps every run."""
    if len(values) < 3 or scale <= 0:
        return list(values)
    med = statistics.median(values)
    kept = [v for v in values if abs(v - med) <= OUTLIER_SDS * scale]
    return kept if len(kept) >= 2 else list(values)


def _pooled_mad_sd(*sides: Sequence[float]) -> float:
    residuals = [abs(v - statistics.median(side)) for side in sides if len(side) >= 3 for v in side]
    return 1.4826 * statistics.median(residuals) if residuals else 0.0


@dataclass(frozen=True)
class Evidence:
    """One metric's change and how sure it is."""

    base: float  # robust mean of the reference runs
    current: float  # robust mean of tonight's runs
    worse_by: float  # relative change in the bad direction (negative: better)
    se: float  # standard error of the relative change (within-night and between-night noise)
    df: float  # degrees of freedom of ``se`` (inf when the noise is known)
    p_value: float | None  # one-sided, for "worse"; None without a noise estimate
    n_base: int  # runs used (outliers left out)
    n_current: int
    outliers: int  # runs left out, both sides


def weigh(base: Sequence[float], current: Sequence[float], *, higher_better: bool, policy: SuitePolicy) -> Evidence:
    """The change of ``current`` against ``base`` with its standard error and one-sided p-value."""
    scale = max(_pooled_mad_sd(base, current), SCALE_FLOOR * abs(statistics.median(base)))
    b, c = robust_runs(base, scale), robust_runs(current, scale)
    mb, mc = statistics.fmean(b), statistics.fmean(c)
    change = (mc - mb) / mb if mb else 0.0
    worse_by = -change if higher_better else change
    outliers = len(base) - len(b) + len(current) - len(c)
    # a reference of K nights had each night's own mean taken out (its runs centred on it): K degrees of freedom
    df = len(b) - max(1, policy.reference_nights) + len(c) - 1
    if len(b) < 2 or len(c) < 2 or df < 1 or not mb:  # a single number on a side: no noise estimate from both
        return Evidence(mb, mc, worse_by, math.nan, 0.0, None, len(b), len(c), outliers)
    ss = sum((v - mb) ** 2 for v in b) + sum((v - mc) ** 2 for v in c)
    within = ss / df / mb**2 * (1 / len(b) + 1 / len(c))  # variance of the relative change within nights
    night = policy.night_cv**2 * (1 + 1 / max(1, policy.reference_nights))
    var = within + night
    if var <= 0:
        p = 0.0 if worse_by > 0 else 1.0
        return Evidence(mb, mc, worse_by, 0.0, math.inf, p, len(b), len(c), outliers)
    # Welch-Satterthwaite: the night term is taken as known, only the within-night part is estimated
    df_eff = math.inf if within == 0 else var**2 / (within**2 / df)
    se = math.sqrt(var)
    from scipy import stats  # on the first comparison, not when the plugin loads

    p = float(stats.t.sf(worse_by / se, df_eff))
    return Evidence(mb, mc, worse_by, se, df_eff, p, len(b), len(c), outliers)


def centred_nights(nights: Sequence[Mapping[str, Sequence[float]]]) -> dict[str, list[float]]:
    """A reference of K nights as one sample: each night's runs moved onto the mean of the night means, so that
    the night-to-night offsets are taken out of the within-night noise (``weigh`` then counts K degrees of
    freedom spent, and the night term with ``1 / K``). Metrics not in every night are left out."""
    if not nights:
        return {}
    common = set(nights[0]).intersection(*nights[1:])
    out: dict[str, list[float]] = {}
    for metric in sorted(common):
        per_night = [list(n[metric]) for n in nights if n[metric]]
        means = [statistics.fmean(v) for v in per_night]
        grand = statistics.fmean(means)
        out[metric] = [x - m + grand for v, m in zip(per_night, means, strict=True) for x in v]
    return out


def night_cv_estimate(series: Iterable[Sequence[Sequence[float]]]) -> tuple[float, int]:
    """The night-to-night CV of a metric's level, pooled over many series (a series: one test's metric, its
    nights' runs): the variance of the night means, less what the within-night noise puts into them,
    relative to the level. Returns (CV, degrees of freedom of the between-night part); (0, 0) without two
    nights of two runs anywhere."""
    between_ss = within_ss = 0.0
    between_df = within_df = 0
    inverse_n: list[float] = []
    for nights in series:
        runs = [list(v) for v in nights if len(v) >= 2]
        if len(runs) < 2:
            continue
        level = statistics.fmean(x for v in runs for x in v)
        if not level:
            continue
        means = [statistics.fmean(v) / level for v in runs]
        between_ss += statistics.variance(means) * (len(means) - 1)
        between_df += len(means) - 1
        within_ss += sum(sum((x / level - m) ** 2 for x in v) for v, m in zip(runs, means, strict=True))
        within_df += sum(len(v) - 1 for v in runs)
        inverse_n += [1 / len(v) for v in runs]
    if not between_df or not within_df:
        return 0.0, 0
    night_var = between_ss / between_df - within_ss / within_df * statistics.fmean(inverse_n)
    return math.sqrt(max(0.0, night_var)), between_df
