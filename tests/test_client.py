"""The load generator over real HTTP against the simulated engine: a known truth, and failures."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from suite_files import StartSim

from pytest_llmperf.loadgen import BenchSettings, random_requests, run_benchmark_sync
from pytest_llmperf.loadgen.client import build_payload
from pytest_llmperf.loadgen.datasets import SampleRequest
from pytest_llmperf.loadgen.runner import arrival_offsets
from pytest_llmperf.tokenizer import SimTokenizer


def requests(n: int, out: int, inp: int = 16) -> list[SampleRequest]:
    return random_requests(SimTokenizer(), num_requests=n, input_len=inp, output_len=out, seed=1)


@pytest.mark.parametrize("backend", ["openai-chat", "openai"])
def test_measures_the_deterministic_truth(start_sim: StartSim, backend: str) -> None:
    server = start_sim(profile="deterministic", ttft_ms=50, itl_ms=20)
    endpoint = "/v1/chat/completions" if backend == "openai-chat" else "/v1/completions"
    settings = BenchSettings(
        base_url=server.base_url, model="llmperf-sim", backend=backend, endpoint=endpoint, ignore_eos=True
    )
    # 60 tokens: the 20 streams run in step, so one pause of the host at their last token (this sandbox's
    # agent takes a core for up to 13 ms about once a second) adds to every E2EL; over 59 intervals that is
    # at most 1.1% of TPOT (over 19 it was 3.5%, and failed a CI run)
    result = run_benchmark_sync(settings, requests(20, 60))
    m = result.metrics
    assert (m.completed, m.failed) == (20, 0)
    assert m.total_output == 1200
    assert 50.0 <= m.stats["ttft"]["mean"] < 75.0
    assert m.stats["tpot"]["mean"] == pytest.approx(20.0, rel=0.03)
    assert m.stats["itl"]["median"] == pytest.approx(20.0, rel=0.1)
    assert m.duration == pytest.approx(0.05 + 59 * 0.02, abs=0.05)
    assert m.max_concurrent_requests == 20
    expected_input = sum(r.prompt_len for r in requests(20, 60)) + (20 * 4 if backend == "openai-chat" else 0)
    assert m.total_input == expected_input  # the server's usage.prompt_tokens (chat template included)


def test_max_concurrency_bounds_in_flight_requests(start_sim: StartSim) -> None:
    server = start_sim(profile="deterministic", ttft_ms=20, itl_ms=10)
    settings = BenchSettings(base_url=server.base_url, model="llmperf-sim", max_concurrency=4)
    result = run_benchmark_sync(settings, requests(12, 5))
    assert result.metrics.completed == 12
    assert result.metrics.max_concurrent_requests == 4
    assert max(r.queue_time for r in result.records) > 0.05  # later requests waited for a slot


def test_finite_rate_arrivals_are_rescaled_and_seeded() -> None:
    a = arrival_offsets(100, 10.0, 1.0, seed=3)
    assert a[-1] == pytest.approx(10.0)
    assert np.all(np.diff(a) >= 0)
    assert np.array_equal(a, arrival_offsets(100, 10.0, 1.0, seed=3))
    assert not np.array_equal(a, arrival_offsets(100, 10.0, 1.0, seed=4))
    assert np.allclose(np.diff(arrival_offsets(10, 5.0, math.inf, seed=0)), 0.2)
    assert np.all(arrival_offsets(5, math.inf, 1.0, seed=0) == 0)


def test_request_rate_paces_sends(start_sim: StartSim) -> None:
    server = start_sim(profile="deterministic", ttft_ms=5, itl_ms=5)
    settings = BenchSettings(base_url=server.base_url, model="llmperf-sim", request_rate=20.0, seed=0)
    t0 = time.perf_counter()
    result = run_benchmark_sync(settings, requests(10, 2))
    assert time.perf_counter() - t0 >= 0.5  # the last send is at N / rate
    assert result.metrics.completed == 10
    starts = sorted(r.start_time for r in result.records)
    assert starts[-1] - starts[0] == pytest.approx(0.5 - (arrival_offsets(10, 20.0, 1.0, 0)[0]), abs=0.05)


def test_chat_and_completions_bodies_match_vllm() -> None:
    req = SampleRequest("hello", 1, 7)
    import json

    chat = json.loads(build_payload("openai-chat", "m", req, ignore_eos=False))
    assert chat == {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
        "max_completion_tokens": 7,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    comp = json.loads(build_payload("openai", "m", req, ignore_eos=True))
    assert comp == {
        "model": "m",
        "prompt": "hello",
        "repetition_penalty": 1.0,
        "max_tokens": 7,
        "logprobs": None,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    with pytest.raises(ValueError, match="unknown backend"):
        build_payload("tgi", "m", req, ignore_eos=False)


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (("--error-rate", "0.5"), "HTTP 500"),
        (("--malformed-rate", "0.5"), "JSONDecodeError"),
        (("--reset-rate", "0.5"), "ConnectionClosedError"),
    ],
)
def test_server_faults_become_failed_requests_with_their_error(
    start_sim: StartSim, fault: tuple[str, str], error: str
) -> None:
    server = start_sim(*fault, profile="deterministic", ttft_ms=5, itl_ms=5)
    settings = BenchSettings(base_url=server.base_url, model="llmperf-sim")
    # a fraction, so that the readiness probe (a real request too) gets through
    result = run_benchmark_sync(settings, requests(20, 8))
    m = result.metrics
    assert m.failed >= 3 and m.completed >= 3 and m.failed + m.completed == 20
    assert all(error in e for e in result.errors), result.errors
    assert m.total_output == 8 * m.completed


def test_stalled_stream_is_caught_by_the_stall_timeout(start_sim: StartSim) -> None:
    # the readiness probe and the two warm-up requests are requests 1 to 3
    server = start_sim("--stall-after", "3", profile="deterministic", ttft_ms=5, itl_ms=5)
    settings = BenchSettings(base_url=server.base_url, model="llmperf-sim", stall_timeout_s=0.5)
    t0 = time.perf_counter()
    result = run_benchmark_sync(settings, requests(3, 8))
    assert time.perf_counter() - t0 < 5
    assert result.metrics.failed == 3
    assert all("Timeout" in e for e in result.errors), result.errors


def test_server_crash_mid_run_fails_requests_not_the_run(start_sim: StartSim) -> None:
    # the readiness probe and the two warm-up requests are requests 1 to 3
    server = start_sim("--crash-after", "5", profile="deterministic", ttft_ms=5, itl_ms=5)
    settings = BenchSettings(base_url=server.base_url, model="llmperf-sim", max_concurrency=1)
    result = run_benchmark_sync(settings, requests(5, 3))
    assert result.metrics.completed == 2  # requests 4 and 5
    assert result.metrics.failed == 3
    assert "crashing on request 6" in server.log_path.read_text()
