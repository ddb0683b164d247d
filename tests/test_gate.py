"""Verdict logic of the gate: directions, tolerance, significance, functional failures."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_llmperf.gate.check import decide
from pytest_llmperf.gate.decision import (
    compare_metric,
    compare_samples,
    failure_allowance,
    format_failure,
    higher_is_better,
    overall_verdict,
)
from pytest_llmperf.gate.suite import SuitePolicy, centred_nights, night_cv_estimate


@pytest.mark.parametrize(
    ("metric", "higher"),
    [
        ("output_throughput", True),
        ("total_token_throughput", True),
        ("request_throughput", True),
        ("max_output_tokens_per_s", True),
        ("mean_tpot_ms", False),
        ("mean_ttft_ms", False),
        ("p99_itl_ms", False),
        ("median_e2el_ms", False),
        ("failed", False),
    ],
)
def test_direction_is_declared_once_per_metric(metric: str, higher: bool) -> None:
    assert higher_is_better(metric) is higher


def test_unknown_metric_has_no_silent_direction() -> None:
    with pytest.raises(KeyError, match="no direction"):
        higher_is_better("mystery")


def test_throughput_drop_beyond_tolerance_and_significant_fails() -> None:
    v = compare_metric("output_throughput", [100.0, 101.0, 99.0], [80.0, 81.0, 79.0], tolerance=0.05)
    assert v.verdict == "FAIL"
    assert v.change == pytest.approx(-0.2)
    assert v.p_value is not None and v.p_value < 0.01


def test_tpot_rise_fails_and_tpot_drop_passes() -> None:
    assert compare_metric("mean_tpot_ms", [10.0, 10.1, 9.9], [12.0, 12.1, 11.9]).verdict == "FAIL"
    assert compare_metric("mean_tpot_ms", [10.0, 10.1, 9.9], [8.0, 8.1, 7.9]).verdict == "PASS"


def test_change_within_tolerance_passes() -> None:
    v = compare_metric("output_throughput", [100.0, 100.5, 99.5], [97.0, 97.5, 96.5], tolerance=0.05)
    assert v.verdict == "PASS"


def test_beyond_tolerance_but_noisy_is_inconclusive() -> None:
    v = compare_metric("output_throughput", [100.0, 60.0, 140.0], [90.0, 50.0, 130.0], tolerance=0.05)
    assert v.verdict == "INCONCLUSIVE"
    assert "not significant" in v.note


def test_single_sample_side_widens_the_tolerance_by_the_noise_and_says_so() -> None:
    # a published single number: no test; the band is widened by twice the current side's noise (CV 0.8%)
    v = compare_metric("output_throughput", [100.0], [90.0, 91.0], tolerance=0.05)
    assert v.verdict == "FAIL" and v.p_value is None
    assert v.note == "n<2 on a side: no test; tolerance widened by the noise estimate to 6.6%"
    # beyond the plain tolerance but inside the widened band: not a FAIL
    assert compare_metric("output_throughput", [100.0], [94.0, 95.0], tolerance=0.05).verdict == "INCONCLUSIVE"
    # neither side can estimate the noise: 3% is assumed (band 11%)
    assert compare_metric("output_throughput", [100.0], [90.0], tolerance=0.05).verdict == "INCONCLUSIVE"
    assert compare_metric("output_throughput", [100.0], [88.0], tolerance=0.05).verdict == "FAIL"
    assert compare_metric("output_throughput", [100.0], [97.0], tolerance=0.05).verdict == "PASS"


def test_identical_deterministic_samples_compare_without_nan() -> None:
    assert compare_metric("output_throughput", [100.0] * 3, [100.0] * 3).verdict == "PASS"
    v = compare_metric("output_throughput", [100.0] * 3, [80.0] * 3)
    assert v.verdict == "FAIL" and v.p_value == 0.0


def test_failures_are_judged_against_the_baselines_own_failures() -> None:
    """A published run that completed 984 of 1000 had 16 failures: the same again passes with a note, 40 fail;
    a baseline without failures keeps 'any failure fails'."""
    same = compare_metric("failed", [16.0], [16.0])
    assert same.verdict == "PASS" and "the baseline had 16 a run" in same.note
    assert compare_metric("failed", [16.0], [20.0, 18.0, 25.0]).verdict == "PASS"  # allowance 16 + 12 = 28
    worse = compare_metric("failed", [16.0], [40.0])
    assert worse.verdict == "FAIL" and worse.note == "40 failed request(s); the baseline had 16 a run, 28 allowed"
    assert compare_metric("failed", [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]).verdict == "FAIL"
    assert compare_metric("failed", None, [1.0]).verdict == "FAIL"  # no baseline: no allowance
    assert failure_allowance(0) == 0 and failure_allowance(1) == 4 and failure_allowance(16) == 28


def test_failed_requests_are_a_functional_failure() -> None:
    v = compare_metric("failed", [0.0, 0.0], [0.0, 2.0])
    assert v.verdict == "FAIL"
    assert "functional failure" in format_failure([v])


def test_large_improvement_reports_a_stale_baseline() -> None:
    v = compare_metric("output_throughput", [100.0, 100.0], [130.0, 131.0], tolerance=0.05)
    assert v.verdict == "PASS" and "stale" in v.note


def test_missing_baseline_is_new() -> None:
    rows = compare_samples(None, {"output_throughput": [1.0], "failed": [0.0]}, tolerances={})
    assert overall_verdict(rows) == "NEW"


def test_reported_metrics_never_fail_the_test() -> None:
    base = {"output_throughput": [100.0, 100.0], "mean_ttft_ms": [10.0, 10.1], "failed": [0.0, 0.0]}
    cur = {"output_throughput": [100.0, 100.0], "mean_ttft_ms": [50.0, 50.1], "failed": [0.0, 0.0]}
    rows = compare_samples(base, cur, tolerances={})
    ttft = next(r for r in rows if r.metric == "mean_ttft_ms")
    assert not ttft.gated and ttft.verdict == "PASS" and "reported only" in ttft.note
    assert overall_verdict(rows) == "PASS"


def test_per_metric_tolerance_overrides_default() -> None:
    base = {"output_throughput": [100.0, 100.0, 100.0]}
    cur = {"output_throughput": [91.0, 91.0, 91.0]}
    assert overall_verdict(compare_samples(base, cur, tolerances={})) == "FAIL"
    assert overall_verdict(compare_samples(base, cur, tolerances={"output_throughput": 0.1})) == "PASS"


def test_only_the_default_gated_metrics_can_fail_a_test() -> None:
    """A 30% change the wrong way in every metric: the gated ones FAIL, the others are reported only."""
    base = {
        "total_token_throughput": [1000.0, 1001.0, 999.0],
        "output_throughput": [500.0, 501.0, 499.0],
        "request_throughput": [10.0, 10.01, 9.99],
        "mean_tpot_ms": [20.0, 20.1, 19.9],
        "mean_ttft_ms": [100.0, 100.5, 99.5],
        "p99_ttft_ms": [150.0, 151.0, 149.0],
        "failed": [0.0, 0.0, 0.0],
    }
    worse = {k: [x * (1.3 if k.endswith("_ms") else 0.7) for x in v] for k, v in base.items()}
    rows = {r.metric: r for r in compare_samples(base, worse, tolerances={})}
    failing = {m for m, r in rows.items() if r.gated and r.verdict == "FAIL"}
    assert failing == {"total_token_throughput", "output_throughput", "mean_tpot_ms"}
    assert not rows["mean_ttft_ms"].gated and not rows["request_throughput"].gated
    assert rows["failed"].gated and rows["failed"].verdict == "PASS"
    worse["failed"] = [0.0, 1.0, 0.0]  # one failed request in one run is a functional failure
    assert {r.metric: r.verdict for r in compare_samples(base, worse, tolerances={})}["failed"] == "FAIL"


def test_failure_message_is_compact_and_names_everything() -> None:
    v = compare_metric("output_throughput", [100.0, 101.0, 99.0], [80.0, 81.0, 79.0], tolerance=0.05)
    msg = format_failure([v])
    assert msg.startswith("output_throughput: 100.00 -> 80.00 (-20.0%, tolerance 5%, p=")
    assert msg.endswith("n=3/3)")


def test_the_suite_budget_sets_how_strict_one_test_is() -> None:
    """The same evidence fails a test alone and is inconclusive in a suite of 1000 tests: a no-change night
    of the whole suite must stay green, so each test's share of the budget shrinks with the suite."""
    base = [100.0, 101.5, 98.5, 100.8, 99.2]
    cur = [92.0, 93.6, 90.4]  # about -8%, with 1.2% noise
    alone = compare_metric("output_throughput", base, cur, policy=SuitePolicy(n_tests=1))
    many = compare_metric("output_throughput", base, cur, policy=SuitePolicy(n_tests=1000))
    assert alone.verdict == "FAIL" and many.verdict == "INCONCLUSIVE"
    assert alone.p_value == many.p_value  # the evidence is the same; the bar is not
    assert SuitePolicy(n_tests=34).metric_alpha == pytest.approx((1 - 0.98 ** (1 / 34)) / 2)
    assert "budget 2% over 34 gated test(s)" in SuitePolicy(n_tests=34).describe()


def test_night_to_night_variation_widens_what_counts_as_a_regression() -> None:
    base = [100.0, 100.2, 99.8, 100.1, 99.9]
    cur = [92.9, 93.1, 93.0]  # -7%, very tight runs: significant unless nights differ by themselves
    assert compare_metric("output_throughput", base, cur).verdict == "FAIL"
    nights = SuitePolicy(night_cv=0.03)  # a night on another node may be 3% off by itself
    v = compare_metric("output_throughput", base, cur, policy=nights)
    assert v.verdict == "INCONCLUSIVE" and v.p_value is not None and v.p_value > 0.01
    # a reference of 10 nights (3 runs each, centred on their night) averages half of the night term out
    ten_nights = [100.0 + 0.1 * (i % 3 - 1) for i in range(30)]
    ten = compare_metric("output_throughput", ten_nights, cur, policy=SuitePolicy(night_cv=0.03, reference_nights=10))
    assert ten.p_value is not None and ten.p_value < v.p_value


@pytest.mark.parametrize(("night_cv", "rounds"), [(0.0, 2), (0.01, 1)])
def test_a_confirmation_still_inconclusive_buys_one_more_round_only_without_a_night_term(
    night_cv: float, rounds: int
) -> None:
    calls: list[int] = []
    reference = {"output_throughput": [100.0, 104.0, 96.0, 102.0, 98.0]}
    samples = {"output_throughput": [93.0, 88.0, 96.0]}  # -7.7%: beyond the 6% tolerance, noisy

    def confirm() -> int:
        calls.append(1)
        samples["output_throughput"] += [97.0, 86.0, 95.0, 90.0, 92.0]
        return 5

    policy = SuitePolicy(n_tests=34, night_cv=night_cv)
    d = decide(reference, samples, tolerance={}, default_tolerance=0.06, policy=policy, confirm=confirm)
    assert len(calls) == rounds and d.verdict == "INCONCLUSIVE"
    assert f"{5 * rounds} fresh run(s) were added before deciding" in d.confirmation


def test_past_nights_are_centred_on_the_mean_of_their_means() -> None:
    nights = [{"x": [99.0, 101.0], "y": [1.0]}, {"x": [104.0, 106.0, 105.0]}]
    assert centred_nights(nights) == {"x": [101.5, 103.5, 101.5, 103.5, 102.5]}  # y is not in every night
    assert centred_nights([]) == {}


def test_the_night_to_night_cv_is_recovered_from_many_series() -> None:
    """300 series of 10 nights, 3 runs each: run CV 2%, night offset CV 1.5% (the gate Monte Carlo's model)."""
    import random

    rng = random.Random(7)
    series = []
    for _ in range(300):
        nights = []
        for _ in range(10):
            offset = rng.gauss(0, 0.015)
            nights.append([100.0 * (1 + offset) * (1 + rng.gauss(0, 0.02)) for _ in range(3)])
        series.append(nights)
    cv, df = night_cv_estimate(series)
    assert df == 300 * 9 and cv == pytest.approx(0.015, rel=0.1)
    # no night offset: the runs' own noise in the night means is not mistaken for one
    flat = [[[100.0 * (1 + rng.gauss(0, 0.02)) for _ in range(3)] for _ in range(10)] for _ in range(300)]
    assert night_cv_estimate(flat)[0] < 0.004
    assert night_cv_estimate([[[1.0, 1.1]]]) == (0.0, 0)  # one night: nothing to say


def test_an_outlier_run_is_left_out_and_named() -> None:
    base = [100.0, 100.5, 99.5, 100.2, 99.8, 100.1, 99.9, 85.0, 100.3, 99.7]  # one run 15% slow
    v = compare_metric("output_throughput", base, [99.8, 100.2, 100.0])
    assert v.verdict == "PASS" and v.n_baseline == 9 and "1 outlier run(s) left out" in v.note
    assert v.baseline == pytest.approx(100.0, abs=0.1)


def test_near_identical_runs_have_no_outliers() -> None:
    """A deterministic simulator's runs differ by hundredths of a percent: a run 0.1% off is not an outlier
    (the MAD of such runs is near zero; the robust scale has a floor of 0.5% of the level)."""
    base = [7457.66, 7459.27, 7458.10]
    v = compare_metric("output_throughput", base, [7458.0, 7458.1, 7458.05, 7466.0])
    assert v.n_baseline == 3 and v.n_current == 4 and "outlier" not in v.note


def test_sequential_confirmation_spends_runs_only_where_they_decide_something() -> None:
    reference = {"output_throughput": [100.0, 101.0, 99.0, 100.5, 99.5]}
    calls: list[int] = []

    def confirm_with(values: list[float], samples: dict[str, list[float]]) -> Callable[[], int]:
        def confirm() -> int:
            calls.append(len(values))
            samples["output_throughput"] += values
            return len(values)

        return confirm

    clear = {"output_throughput": [100.2, 99.8, 100.4]}
    d = decide(reference, clear, tolerance={}, default_tolerance=0.06, confirm=confirm_with([100.0] * 5, clear))
    assert d.verdict == "PASS" and calls == [] and d.confirmation == ""
    # a first verdict 5% down (beyond 60% of the 6% tolerance) buys fresh runs, and those decide
    doubtful = {"output_throughput": [95.0, 95.4, 94.6]}
    d = decide(reference, doubtful, tolerance={}, default_tolerance=0.06, confirm=confirm_with([100.0] * 5, doubtful))
    assert calls == [5] and len(doubtful["output_throughput"]) == 8 and d.verdict == "PASS"
    assert d.confirmation.startswith("confirmation: the first 3 run(s) showed output_throughput -5.0%")
    assert "5 fresh run(s) were added" in d.confirmation
    failing = {"output_throughput": [88.0, 88.5, 87.5]}
    d = decide(reference, failing, tolerance={}, default_tolerance=0.06, confirm=confirm_with([88.0] * 5, failing))
    assert calls == [5, 5] and d.verdict == "FAIL"
