"""Spreading one run over several client processes (``--client-workers N``).

Each worker drives the requests ``i`` with ``i % N == k`` on the global arrival schedule, from a
common start time on the shared monotonic clock (``time.perf_counter`` is CLOCK_MONOTONIC on Linux,
the same in every process). ``--max-concurrency C`` becomes ``ceil(C / N)`` per worker. The parent
merges the per-request records and computes the metrics once, over all requests, with the run's
duration from the common start to the last worker's end.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from pytest_llmperf.loadgen.datasets import SampleRequest
from pytest_llmperf.loadgen.runner import (
    BenchmarkResult,
    BenchSettings,
    RawRun,
    arrival_offsets,
    drive,
    finish,
    run_in_loop,
)
from pytest_llmperf.metrics import RequestRecord

__all__ = ["run_distributed"]

START_DELAY_S = 0.5  # after every worker is ready


def _worker(
    k: int,
    settings: BenchSettings,
    requests: list[SampleRequest],
    offsets: list[float],
    ready: Any,
    go: Any,
    start_at: Any,
    out: Any,
) -> None:
    ready.put(k)
    go.wait()
    try:
        raw = run_in_loop(drive(settings, requests, offsets=offsets, start_at=start_at.value))
        out.put((k, raw, ""))
    except BaseException as exc:  # reported to the parent, which raises it
        out.put((k, None, f"{type(exc).__name__}: {exc}"))


def run_distributed(
    settings: BenchSettings,
    requests: Sequence[SampleRequest],
    *,
    count_tokens: Callable[[str], int] | None = None,
) -> BenchmarkResult:
    n = max(1, min(settings.client_workers, len(requests)))
    offsets = arrival_offsets(len(requests), settings.request_rate, settings.burstiness, settings.seed).tolist()
    per_worker = replace(
        settings,
        client_workers=1,
        max_concurrency=math.ceil(settings.max_concurrency / n) if settings.max_concurrency else None,
        num_warmups=math.ceil(settings.num_warmups / n) if settings.num_warmups else 0,
    )
    ctx = mp.get_context("spawn")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    start_at = ctx.Value("d", 0.0)
    procs: list[tuple[Any, list[int]]] = []
    for k in range(n):
        idx = list(range(k, len(requests), n))
        p = ctx.Process(
            target=_worker,
            args=(k, per_worker, [requests[i] for i in idx], [offsets[i] for i in idx], ready, go, start_at, out),
            daemon=True,
        )
        p.start()
        procs.append((p, idx))
    results: dict[int, RawRun] = {}
    try:
        for _ in range(n):
            ready.get(timeout=120)
        start_at.value = time.perf_counter() + START_DELAY_S
        go.set()
        for _ in range(n):
            k, raw, error = out.get(timeout=settings.timeout_s + 600)
            if raw is None:
                raise RuntimeError(f"client worker {k} failed: {error}")
            results[k] = raw
    finally:
        for p, _ in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    records: list[RequestRecord] = [RequestRecord() for _ in requests]
    for k, (_, idx) in enumerate(procs):
        for i, record in zip(idx, results[k].records, strict=True):
            records[i] = record
    raws = list(results.values())
    merged = RawRun(
        records,
        start=start_at.value,
        end=max(r.end for r in raws),
        cpu_s=sum(r.cpu_s for r in raws),
        max_send_lag_s=max(r.max_send_lag_s for r in raws),
        max_loop_lag_s=max(r.max_loop_lag_s for r in raws),
    )
    return finish(settings, merged, count_tokens=count_tokens, cpu_cores=n)
