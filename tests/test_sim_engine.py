"""The simulated engine behaves like a continuous-batching engine (in modelled time)."""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import statistics
import subprocess
import sys

import httpx
import pytest
from suite_files import StartSim

from pytest_llmperf.sim.engine import PROFILES, Profile, SimEngine

FAST = Profile(
    name="test",
    description="test",
    step_overhead_s=0.004,
    decode_per_seq_s=0.0002,
    prefill_per_token_s=0.000004,
    context_per_token_s=0.0,
    max_num_seqs=256,
    max_num_batched_tokens=16384,
    kv_capacity_tokens=1_000_000,
)


class Trace:
    """Token times per request, as the HTTP layer would see them."""

    def __init__(self) -> None:
        self.times: dict[int, list[float]] = {}
        self.counts: dict[int, list[int]] = {}

    def callback(self, key: int, loop: asyncio.AbstractEventLoop):  # type: ignore[no-untyped-def]
        self.times[key] = []
        self.counts[key] = []

        def on_token(n: int) -> None:
            self.times[key].append(loop.time())
            self.counts[key].append(n)

        return on_token

    def itls(self, key: int) -> list[float]:
        t = self.times[key]
        return [b - a for a, b in itertools.pairwise(t)]


async def run(engine: SimEngine, jobs: list[tuple[float, int, int]], trace: Trace) -> dict[int, float]:
    """Submit (delay, prompt, max_tokens) jobs; wait until all are done; return each one's E2E time."""
    loop = asyncio.get_running_loop()
    engine.start()
    start: dict[int, float] = {}

    async def submit(key: int, delay: float, prompt: int, max_tokens: int) -> None:
        await asyncio.sleep(delay)
        start[key] = loop.time()
        engine.submit(prompt, max_tokens, trace.callback(key, loop))

    await asyncio.gather(*(submit(k, *job) for k, job in enumerate(jobs)))
    while any(len(trace.counts.get(k, [])) < job[2] for k, job in enumerate(jobs)):
        await asyncio.sleep(0.01)
    await engine.stop()
    return {k: trace.times[k][-1] - start[k] for k in start}


def mean_itl(n_requests: int) -> float:
    trace = Trace()

    async def main() -> None:
        await run(SimEngine(FAST), [(0.0, 32, 30)] * n_requests, trace)

    asyncio.run(main())
    return statistics.fmean(statistics.fmean(trace.itls(k)) for k in trace.times)


def test_tpot_grows_with_the_number_of_running_requests() -> None:
    one, many = mean_itl(1), mean_itl(48)
    assert one == pytest.approx(0.004 + 0.0002, rel=0.15)
    assert many == pytest.approx(0.004 + 0.0002 * 48, rel=0.15)
    assert many > 2 * one


def test_a_long_prefill_stalls_the_running_decodes_for_one_step() -> None:
    trace = Trace()

    async def main() -> None:
        # 4 short requests decode; 0.1 s later a 12k-token prompt arrives and is prefilled in one step
        await run(SimEngine(FAST), [(0.0, 16, 60)] * 4 + [(0.1, 12000, 2)], trace)

    asyncio.run(main())
    itls = trace.itls(0)
    base = statistics.median(itls)
    assert base == pytest.approx(0.004 + 0.0002 * 4, rel=0.2)
    assert max(itls) > base + 0.04  # the 12k-token step costs ~48 ms more
    assert sum(1 for x in itls if x > base + 0.02) <= 2  # one step (two if the 12k prompt is chunked)


def test_a_small_kv_cache_preempts_recomputes_and_loses_nothing() -> None:
    jobs = [(0.0, 100, 120)] * 16
    results = {}
    for capacity in (1_000_000, 2400):
        trace = Trace()
        engine = SimEngine(FAST, kv_capacity_tokens=capacity)

        async def main(engine: SimEngine = engine, trace: Trace = trace) -> dict[int, float]:
            return await run(engine, jobs, trace)

        e2e = asyncio.run(main())
        for key in range(len(jobs)):
            assert trace.counts[key] == list(range(1, 121))  # every token once, in order: nothing lost
        results[capacity] = (engine.preemptions_total, statistics.fmean(e2e.values()), max(e2e.values()))
    assert results[1_000_000][0] == 0
    assert results[2400][0] > 0
    assert results[2400][1] > results[1_000_000][1]  # longer E2EL on average
    assert results[2400][2] > results[1_000_000][2] * 1.2  # and much longer for the preempted requests


def test_profiles_are_documented_models() -> None:
    for name, profile in PROFILES.items():
        assert profile.name == name
        if name.startswith("h200-"):  # each H200 profile says what it models and that it is not a measurement
            engine = name.removeprefix("h200-")
            assert f"8xH200 ({engine}-shaped overheads)" in profile.description
            assert "not a measurement" in profile.description
    h200 = PROFILES["h200-vllm"]
    # the MoE weight stream saturates with batch size: the step hardly grows beyond ~128 sequences
    assert h200.step_time(256, 256, 0, 0) - h200.step_time(128, 128, 0, 0) < 0.003
    assert h200.step_time(1, 1, 0, 0) < h200.step_time(64, 64, 0, 0) < 0.035


def test_preemptions_show_in_metrics_over_http(start_sim: StartSim) -> None:
    from pytest_llmperf.loadgen import BenchSettings, random_requests, run_benchmark_sync
    from pytest_llmperf.tokenizer import SimTokenizer

    server = start_sim("--kv-cache-tokens", "1200")
    reqs = random_requests(SimTokenizer(), num_requests=12, input_len=60, output_len=80, seed=3)
    result = run_benchmark_sync(BenchSettings(base_url=server.base_url, model="llmperf-sim", ignore_eos=True), reqs)
    assert result.metrics.completed == 12 and result.metrics.total_output == 12 * 80
    text = httpx.get(server.base_url + "/metrics").text
    preemptions = float(
        next(line for line in text.splitlines() if line.startswith("vllm:num_preemptions_total")).split()[-1]
    )
    assert preemptions > 0
    assert (
        'vllm:time_to_first_token_seconds_bucket{model_name="llmperf-sim",le="+Inf"} 15.0' in text
    )  # + probe, 2 warm-ups
    assert "vllm:inter_token_latency_seconds_count" in text and "vllm:e2e_request_latency_seconds_sum" in text


def _serve_1000_streams(
    start_sim: StartSim, *extra_args: str, request_rate: float, ttft_ms: float = 50
) -> dict[str, float]:
    """1000 concurrent streams x 100 tokens from the deterministic profile (ITL 50 ms), the simulator pinned to
    one core and the client on the other(s); returns the server's llmperf_sim: schedule metrics."""
    from pytest_llmperf.loadgen import BenchSettings, random_requests, run_benchmark_sync
    from pytest_llmperf.tokenizer import SimTokenizer

    cpus = sorted(os.sched_getaffinity(0))
    pin = cpus[0] if len(cpus) > 1 else None
    server = start_sim(*extra_args, profile="deterministic", ttft_ms=ttft_ms, itl_ms=50, pin_cpu=pin)
    httpx.post(server.base_url + "/llmperf/reset_timing")
    reqs = random_requests(SimTokenizer(), num_requests=1000, input_len=8, output_len=100, seed=0)
    settings = BenchSettings(
        base_url=server.base_url,
        model="llmperf-sim",
        ignore_eos=True,
        prewarm_connections=True,
        request_rate=request_rate,
        burstiness=math.inf if request_rate != math.inf else 1.0,
    )
    if len(cpus) > 1:  # as in benchmarks/sim_throughput.py
        os.sched_setaffinity(0, cpus[1:])
    try:
        result = run_benchmark_sync(settings, reqs)
    finally:
        os.sched_setaffinity(0, cpus)
    assert result.metrics.completed == 1000
    assert result.metrics.max_concurrent_requests == 1000
    metrics = {}
    for line in httpx.get(server.base_url + "/metrics").text.splitlines():
        if line.startswith("llmperf_sim:"):
            metrics[line.split("{")[0]] = float(line.split()[-1])
    server.stop()  # a further attempt gets the core to itself
    assert metrics["llmperf_sim:tokens_scheduled"] == 100_000
    return metrics


# The host's pauses only ever add lateness (docs/performance.md: another process, a kernel thread or the
# hypervisor takes the core for 2 to 60 ms now and then), so a bound holds for the simulator when one of
# ATTEMPTS runs meets it, as timeit takes the minimum; what the bounds catch fails every run.
ATTEMPTS = 3


def _within_bound_in_one_run(
    start_sim: StartSim, *extra_args: str, late_tokens: int, max_lateness_s: float, **kw: float
) -> None:
    runs = []
    for _ in range(ATTEMPTS):
        metrics = _serve_1000_streams(start_sim, *extra_args, **kw)
        runs.append(metrics)
        if (
            metrics["llmperf_sim:late_tokens"] <= late_tokens
            and metrics["llmperf_sim:max_lateness_seconds"] < max_lateness_s
        ):
            return
    pytest.fail(
        f"all {ATTEMPTS} runs broke the bound (at most {late_tokens} tokens late, none {max_lateness_s * 1e3:g} ms"
        f" late): {runs}"
    )


def _sched_fifo_permitted() -> bool:
    probe = "import os; os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def test_deterministic_profile_writes_every_token_within_5ms_of_its_schedule_at_1000_streams(
    start_sim: StartSim,
) -> None:
    """Issue #4's bound, read from the server's own timestamps: every token of 1000 streams sent at once is
    written within 5 ms of arrival + ttft + (n-1) * itl. With a TTFT of 10 ms, first tokens fall due while
    the server is still parsing the arrival burst (tens of us a request): they must be written between two
    requests, not after the burst (without that, 564 to 1166 tokens late in every run, measured).
    The simulator serves under SCHED_FIFO: on a shared host a higher-priority agent can take its core for
    ~13 ms once a second (measured with perf sched; docs/performance.md), and no server can be on time then."""
    if not _sched_fifo_permitted():
        pytest.skip("needs SCHED_FIFO (root or CAP_SYS_NICE); the bound at normal priority is the next test's")
    _within_bound_in_one_run(
        start_sim, "--realtime-priority", "1", late_tokens=0, max_lateness_s=0.005, request_rate=math.inf, ttft_ms=10
    )


def test_deterministic_profile_keeps_up_at_1000_streams_at_normal_priority(start_sim: StartSim) -> None:
    # arrivals spread evenly over one inter-token interval: a steady 20,000 tokens/s. At normal priority a
    # shared runner takes the core away now and then (one 13 ms pause at 20,000 tokens/s makes ~260 tokens
    # late at once), so this bounds what a simulator that cannot keep up would show instead: its backlog
    # grows through the 5 s run (lateness of 100s of ms, most tokens late).
    _within_bound_in_one_run(start_sim, late_tokens=1000, max_lateness_s=0.025, request_rate=20_000.0)
