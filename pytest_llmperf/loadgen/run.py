"""One whole benchmark run: in this process, or spread over ``settings.client_workers`` processes."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pytest_llmperf.loadgen.datasets import SampleRequest
from pytest_llmperf.loadgen.runner import BenchmarkResult, BenchSettings, ProgressFn, run_benchmark, run_in_loop
from pytest_llmperf.loadgen.workers import run_distributed

__all__ = ["run_benchmark_sync"]


def run_benchmark_sync(
    settings: BenchSettings,
    requests: Sequence[SampleRequest],
    *,
    progress: ProgressFn | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> BenchmarkResult:
    """One whole run: in this process, or spread over ``settings.client_workers`` processes."""
    if settings.client_workers > 1:
        return run_distributed(settings, requests, count_tokens=count_tokens)
    return run_in_loop(run_benchmark(settings, requests, progress=progress, count_tokens=count_tokens))
