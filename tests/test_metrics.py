"""Metric definitions of `vllm bench serve`, pinned on synthetic request records."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pytest_llmperf.metrics import (
    RequestRecord,
    calculate_metrics,
    parse_goodput,
    peak_concurrent_requests,
    peak_output_throughput,
    result_block,
)


def rec(start: float, ttft: float, itl: list[float], tokens: int, prompt: int = 10) -> RequestRecord:
    return RequestRecord(
        prompt_len=prompt,
        success=True,
        start_time=start,
        ttft=ttft,
        itl=list(itl),
        latency=ttft + sum(itl),
        output_tokens=tokens,
    )


def test_tpot_is_latency_minus_ttft_over_tokens_after_the_first_not_the_itl_sum() -> None:
    # vLLM: TPOT = (E2EL - TTFT) / (output tokens - 1). The ITLs here sum to 0.10 s while E2EL - TTFT is
    # 0.20 s (a last SSE message after the last token), so a TPOT built from the ITLs would be half
    r = RequestRecord(
        prompt_len=10, success=True, start_time=0.0, ttft=0.1, itl=[0.02, 0.03, 0.05], latency=0.3, output_tokens=4
    )
    m = calculate_metrics([r], duration=1.0)
    assert m.stats["tpot"]["mean"] == pytest.approx((0.3 - 0.1) / 3 * 1000)
    assert m.stats["itl"]["mean"] == pytest.approx(0.1 / 3 * 1000)
    assert m.stats["e2el"]["mean"] == pytest.approx(300.0)
    assert m.stats["ttft"]["mean"] == pytest.approx(100.0)


def test_itl_is_pooled_over_requests_not_averaged_per_request() -> None:
    a = rec(0.0, 0.1, [0.01] * 9, tokens=10)
    b = rec(0.0, 0.1, [0.1], tokens=2)
    m = calculate_metrics([a, b], duration=1.0)
    assert m.stats["itl"]["mean"] == pytest.approx(np.mean([10.0] * 9 + [100.0]))
    assert m.stats["tpot"]["mean"] == pytest.approx((10.0 + 100.0) / 2)


def test_role_only_first_chunk_counts_as_first_token() -> None:
    # the client stamps TTFT at the role chunk; the first content chunk then adds a near-zero ITL
    r = rec(0.0, 0.05, [0.0001, 0.02, 0.02], tokens=3)
    m = calculate_metrics([r], duration=1.0)
    assert m.stats["ttft"]["mean"] == pytest.approx(50.0)
    assert len(r.itl) == 3  # ITLs are per message, not per token
    assert m.stats["tpot"]["mean"] == pytest.approx((r.latency - r.ttft) / 2 * 1000)


def test_multi_token_chunks_use_usage_token_count_for_tpot() -> None:
    r = rec(0.0, 0.1, [0.04, 0.04], tokens=9)  # 3 messages carrying 9 tokens (speculative decoding)
    m = calculate_metrics([r], duration=2.0)
    assert m.total_output == 9
    assert m.stats["tpot"]["mean"] == pytest.approx(0.08 / 8 * 1000)
    assert m.stats["itl"]["mean"] == pytest.approx(40.0)
    assert m.output_throughput == pytest.approx(4.5)


def test_missing_usage_falls_back_to_tokenizer_or_one() -> None:
    r = rec(0.0, 0.1, [0.1], tokens=0)
    r.generated_text = "a b c d"
    assert calculate_metrics([r], 1.0, count_tokens=lambda t: len(t.split())).total_output == 4
    assert calculate_metrics([r], 1.0).total_output == 1


def test_failed_requests_are_excluded_and_counted() -> None:
    ok = rec(0.0, 0.1, [0.1], tokens=2, prompt=7)
    bad = RequestRecord(prompt_len=100, success=False, error="HTTP 500", ttft=5.0, latency=9.0)
    m = calculate_metrics([ok, bad], duration=1.0)
    assert (m.completed, m.failed) == (1, 1)
    assert m.total_input == 7
    assert m.output_lens == [2, 0]
    assert m.stats["ttft"]["mean"] == pytest.approx(100.0)
    assert m.request_throughput == pytest.approx(1.0)
    assert m.total_token_throughput == pytest.approx(9.0)


def test_goodput_counts_a_request_exactly_at_the_slo() -> None:
    at = rec(0.0, 0.2, [0.05], tokens=2)  # ttft 200 ms, tpot 50 ms, e2el 250 ms
    over = rec(0.0, 0.201, [0.05], tokens=2)
    m = calculate_metrics([at, over], duration=2.0, goodput=parse_goodput(["ttft:200 tpot:50 e2el:250"]))
    assert m.request_goodput == pytest.approx(0.5)
    assert calculate_metrics([at], 1.0).request_goodput is None


def test_goodput_single_token_request_has_zero_tpot() -> None:
    one = rec(0.0, 0.1, [], tokens=1)
    m = calculate_metrics([one], duration=1.0, goodput={"tpot": 0.0})
    assert m.request_goodput == pytest.approx(1.0)
    assert m.stats["tpot"]["mean"] == 0.0  # no TPOT sample at all: empty list reads 0


@pytest.mark.parametrize("spec", ["ttft", "foo:1", "ttft:x", "tpot:-1"])
def test_goodput_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(ValueError, match="invalid goodput SLO"):
        parse_goodput([spec])


def test_peak_concurrency_boundary_touching_intervals_do_not_overlap() -> None:
    a = rec(0.0, 0.5, [0.5], tokens=2)  # [0, 1)
    b = rec(1.0, 0.5, [0.5], tokens=2)  # [1, 2)
    c = rec(1.5, 0.1, [0.1], tokens=2)  # [1.5, 1.7)
    assert peak_concurrent_requests([a, b]) == 1.0
    assert peak_concurrent_requests([a, b, c]) == 2.0


def test_peak_output_throughput_counts_messages_in_one_second_buckets() -> None:
    a = rec(0.0, 0.125, [0.125] * 7, tokens=8)  # messages at 0.125 .. 1.0: 7 in bucket 0, 1 in bucket 1
    b = rec(0.5, 0.125, [0.125] * 2, tokens=3)  # messages at 0.625, 0.75, 0.875: bucket 0
    assert peak_output_throughput([a, b]) == 10.0
    assert peak_output_throughput([b]) == 3.0


def test_empty_inputs_give_zeros_not_errors() -> None:
    m = calculate_metrics([], duration=0.0)
    assert (m.completed, m.failed, m.total_output) == (0, 0, 0)
    assert m.stats["ttft"] == {"mean": 0.0, "median": 0.0, "std": 0.0, "p99": 0.0}
    assert m.max_output_tokens_per_s == 0.0 and m.max_concurrent_requests == 0.0
    assert not math.isnan(m.output_throughput)


def test_statistics_are_population_std_and_linear_percentiles() -> None:
    rs = [rec(0.0, t, [0.01], tokens=2) for t in (0.1, 0.2, 0.3, 0.4)]
    m = calculate_metrics(rs, 1.0, percentiles=(50, 90, 99.9))
    s = m.stats["ttft"]
    assert s["std"] == pytest.approx(np.std([100, 200, 300, 400]))
    assert s["p90"] == pytest.approx(np.percentile([100, 200, 300, 400], 90))
    assert s["p99.9"] == pytest.approx(np.percentile([100, 200, 300, 400], 99.9))
    assert m.flat()["p90_ttft_ms"] == s["p90"]


def test_result_block_labels_order_and_padding() -> None:
    m = calculate_metrics([rec(0.0, 0.1, [0.02], tokens=2)], 1.0, selected=("ttft", "tpot", "itl"))
    block = result_block(m, max_concurrency=4).splitlines()
    assert block[0] == "============ Serving Benchmark Result ============"
    assert block[1] == "Successful requests:                     1         "
    labels = [line[:40].strip() for line in block if not line.startswith(("=", "-"))]
    assert labels[:12] == [
        "Successful requests:",
        "Failed requests:",
        "Maximum request concurrency:",
        "Benchmark duration (s):",
        "Total input tokens:",
        "Total generated tokens:",
        "Request throughput (req/s):",
        "Output token throughput (tok/s):",
        "Peak output token throughput (tok/s):",
        "Peak concurrent requests:",
        "Total token throughput (tok/s):",
        "Mean TTFT (ms):",
    ]
    assert "---------------Time to First Token----------------" in block
    assert "P99 ITL (ms):" in "\n".join(block)
    assert "E2EL" not in "\n".join(block)
    assert block[-1] == "=" * 50
