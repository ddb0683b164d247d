"""The benchmark driver: arrivals, concurrency, warm-ups and the run's duration, as ``vllm bench serve``.

It also watches itself: the lag between each request's scheduled and actual send time, the
event loop's lag, and the client's CPU use. When the client cannot keep up, the result says so
in ``client_warnings`` instead of silently reporting a slower engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np

from pytest_llmperf.config import Workload
from pytest_llmperf.loadgen.client import auth_headers, build_payload, send_streaming_request
from pytest_llmperf.loadgen.datasets import SampleRequest
from pytest_llmperf.loadgen.http1 import ConnectionPool, ResponseProtocolError
from pytest_llmperf.metrics import BenchmarkMetrics, RequestRecord, calculate_metrics

__all__ = ["BenchSettings", "BenchmarkResult", "ProgressFn", "arrival_offsets", "run_benchmark", "run_in_loop"]

T = TypeVar("T")
ProgressFn = Callable[[int, int, int, float], None]  # done, total, output tokens so far, elapsed s

PROGRESS_TICK_S = 2.0  # the progress callback also runs this often while no request completes
SEND_LAG_WARN_S = 0.050
LOOP_LAG_WARN_S = 0.050
CPU_WARN_FRACTION = 0.90
MIN_CPU_WARN_DURATION_S = 1.0


@dataclass(frozen=True)
class BenchSettings:
    base_url: str
    model: str
    backend: str = "openai-chat"
    endpoint: str = "/v1/chat/completions"
    request_rate: float = math.inf
    burstiness: float = 1.0
    max_concurrency: int | None = None
    seed: int = 0
    ignore_eos: bool = False
    num_warmups: int = 0
    timeout_s: float = 6 * 3600.0  # per request, as vLLM's ClientTimeout(total=6 h)
    stall_timeout_s: float | None = None  # no byte for this long: the stream has stalled
    server_stall_timeout_s: float | None = None  # no byte on any open stream this long: the server has stalled
    client_workers: int = 1
    # open the connections before the clock starts, so TTFT measures the engine, not TCP set-up
    # (vLLM's client starts with a cold pool; `llmperf bench serve --prewarm-connections` opts in)
    prewarm_connections: bool = False
    percentiles: tuple[float, ...] = (99.0,)
    selected: tuple[str, ...] = ("ttft", "tpot", "itl", "e2el")  # metrics with percentile statistics
    goodput: dict[str, float] | None = None

    @classmethod
    def for_workload(cls, workload: Workload, *, base_url: str, model: str, **overrides: Any) -> BenchSettings:
        """The settings a workload implies (the one place its fields become settings); ``overrides`` win."""
        fields: dict[str, Any] = {
            "backend": workload.backend,
            "endpoint": workload.resolved_endpoint,
            "request_rate": workload.request_rate,
            "burstiness": workload.burstiness,
            "max_concurrency": workload.max_concurrency,
            "seed": workload.seed,
            # vLLM forces ignore_eos for the random dataset (PR #28227)
            "ignore_eos": workload.ignore_eos or workload.dataset == "random",
            "num_warmups": workload.num_warmups,
            "timeout_s": workload.timeout_s,
            "stall_timeout_s": workload.stall_timeout_s,
            "server_stall_timeout_s": workload.server_stall_timeout_s,
        }
        fields.update(overrides)
        return cls(base_url=base_url, model=model, **fields)


@dataclass
class BenchmarkResult:
    settings: BenchSettings
    metrics: BenchmarkMetrics
    records: list[RequestRecord]
    client_cpu_s: float
    max_send_lag_s: float
    max_loop_lag_s: float
    client_warnings: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        return [r.error for r in self.records if not r.success]


def arrival_offsets(n: int, request_rate: float, burstiness: float, seed: int) -> np.ndarray:
    """Send times relative to the start: gamma gaps, cumulated, rescaled so the last is n / rate."""
    if n == 0:
        return np.zeros(0)
    if request_rate == math.inf:
        return np.zeros(n)
    rng = np.random.RandomState(seed)
    if burstiness == math.inf:
        gaps = np.full(n, 1.0 / request_rate)
    else:
        theta = 1.0 / (request_rate * burstiness)
        gaps = rng.gamma(shape=burstiness, scale=theta, size=n)
    cumulative = np.cumsum(gaps)
    target = n / request_rate
    if cumulative[-1] > 0:
        cumulative = cumulative * (target / cumulative[-1])
    return np.asarray(cumulative)


async def _loop_lag_monitor(stop: asyncio.Event, out: list[float], interval: float = 0.02) -> None:
    loop = asyncio.get_running_loop()
    worst = 0.0
    while not stop.is_set():
        t0 = loop.time()
        await asyncio.sleep(interval)
        worst = max(worst, loop.time() - t0 - interval)
    out.append(worst)


@dataclass
class RawRun:
    """What one driver (one process) measured, before metrics are computed."""

    records: list[RequestRecord]
    start: float  # perf_counter at the start of the arrival loop
    end: float  # perf_counter when the last request finished
    cpu_s: float
    max_send_lag_s: float
    max_loop_lag_s: float


async def drive(
    settings: BenchSettings,
    requests: Sequence[SampleRequest],
    *,
    offsets: Sequence[float] | None = None,
    start_at: float | None = None,
    progress: ProgressFn | None = None,
) -> RawRun:
    """Send ``requests`` on their arrival schedule and record each one (the process-local part of a run)."""
    chat = settings.backend == "openai-chat"
    base_path = urlsplit(settings.base_url).path.rstrip("/")
    payloads = [build_payload(settings.backend, settings.model, r, ignore_eos=settings.ignore_eos) for r in requests]
    semaphore = asyncio.Semaphore(settings.max_concurrency) if settings.max_concurrency else None
    records = [RequestRecord(prompt_len=r.prompt_len, output_len_hint=r.expected_output_len) for r in requests]
    if offsets is None:
        offsets = arrival_offsets(len(requests), settings.request_rate, settings.burstiness, settings.seed).tolist()
    done = 0
    out_tokens = 0

    async with ConnectionPool(
        settings.base_url,
        timeout_s=settings.timeout_s,
        stall_timeout_s=settings.stall_timeout_s,
        server_stall_timeout_s=settings.server_stall_timeout_s,
    ) as pool:
        head = pool.head("POST", base_path + settings.endpoint, auth_headers(chat=chat))

        async def one(record: RequestRecord, payload: bytes) -> None:
            nonlocal done, out_tokens
            created = time.perf_counter()
            if semaphore is not None:
                async with semaphore:
                    record.queue_time = time.perf_counter() - created
                    await send_streaming_request(pool, head, payload, record, chat=chat)
            else:
                await send_streaming_request(pool, head, payload, record, chat=chat)
            done += 1
            out_tokens += record.output_tokens
            if progress is not None:
                progress(done, len(records), out_tokens, time.perf_counter() - bench_start)

        if settings.num_warmups and requests:
            warm = [RequestRecord() for _ in range(settings.num_warmups)]
            await asyncio.gather(
                *(_bounded(semaphore, send_streaming_request(pool, head, payloads[0], w, chat=chat)) for w in warm)
            )

        if settings.prewarm_connections and requests:
            n_conn = min(len(requests), settings.max_concurrency or len(requests))
            health = pool.head("GET", base_path + "/health", {})
            await asyncio.gather(*(_prewarm(pool, health) for _ in range(n_conn)))

        gc.collect()
        gc.freeze()
        stop = asyncio.Event()
        lag_out: list[float] = []
        monitor = asyncio.create_task(_loop_lag_monitor(stop, lag_out))
        ticker = None
        if progress is not None:  # a line while nothing completes (a stalled server): the wait is visible

            async def tick() -> None:
                while not stop.is_set():
                    await asyncio.sleep(PROGRESS_TICK_S)
                    progress(done, len(records), out_tokens, time.perf_counter() - bench_start)

            ticker = asyncio.create_task(tick())
        if start_at is not None:
            await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
        cpu0 = time.process_time()
        bench_start = time.perf_counter() if start_at is None else start_at
        tasks = []
        max_send_lag = 0.0
        for record, payload, offset in zip(records, payloads, offsets, strict=True):
            due = bench_start + float(offset)
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            record.scheduled_time = due
            max_send_lag = max(max_send_lag, time.perf_counter() - due)
            tasks.append(asyncio.create_task(one(record, payload)))
        await asyncio.gather(*tasks)
        end = time.perf_counter()
        cpu = time.process_time() - cpu0
        stop.set()
        await monitor
        if ticker is not None:
            ticker.cancel()
        gc.unfreeze()

    # send lag as seen by each request: actual start minus scheduled (excludes concurrency waits)
    for r in records:
        if r.start_time:
            max_send_lag = max(max_send_lag, r.start_time - r.scheduled_time - r.queue_time)
    return RawRun(records, bench_start, end, cpu, max_send_lag, lag_out[0] if lag_out else 0.0)


def finish(
    settings: BenchSettings, raw: RawRun, *, count_tokens: Callable[[str], int] | None = None, cpu_cores: int = 1
) -> BenchmarkResult:
    """Metrics and self-check warnings of a run (vLLM's duration: arrival-loop start to last request end)."""
    duration = raw.end - raw.start
    metrics = calculate_metrics(
        raw.records,
        duration,
        percentiles=settings.percentiles,
        selected=settings.selected,
        goodput=settings.goodput,
        count_tokens=count_tokens,
    )
    warnings: list[str] = []
    if raw.max_send_lag_s > SEND_LAG_WARN_S:
        warnings.append(f"client send lag up to {raw.max_send_lag_s * 1000:.0f} ms: requests left later than scheduled")
    if raw.max_loop_lag_s > LOOP_LAG_WARN_S:
        warnings.append(
            f"client event-loop lag up to {raw.max_loop_lag_s * 1000:.0f} ms: latencies include client delay"
        )
    # a run of failed requests lasts milliseconds: its CPU share says nothing about the client
    if (
        metrics.completed
        and duration >= MIN_CPU_WARN_DURATION_S
        and raw.cpu_s / duration > CPU_WARN_FRACTION * cpu_cores
    ):
        warnings.append(
            f"client CPU at {100 * raw.cpu_s / duration / cpu_cores:.0f}% of its cores: "
            "the client may be the bottleneck (try --client-workers)"
        )
    return BenchmarkResult(settings, metrics, raw.records, raw.cpu_s, raw.max_send_lag_s, raw.max_loop_lag_s, warnings)


async def run_benchmark(
    settings: BenchSettings,
    requests: Sequence[SampleRequest],
    *,
    progress: ProgressFn | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> BenchmarkResult:
    """One whole run in this process's event loop."""
    raw = await drive(settings, requests, progress=progress)
    return finish(settings, raw, count_tokens=count_tokens)


async def _prewarm(pool: ConnectionPool, head: bytes) -> None:
    # a server without /health still gets measured; only the warm pool is lost
    with contextlib.suppress(OSError, ResponseProtocolError):
        await pool.request(head, b"")


async def _bounded(semaphore: asyncio.Semaphore | None, coro: Any) -> Any:
    if semaphore is None:
        return await coro
    async with semaphore:
        return await coro


def run_in_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine in a fresh event loop (uvloop when installed)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
