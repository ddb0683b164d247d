"""The load generator: datasets, the streaming client and the benchmark driver."""

from __future__ import annotations

from pytest_llmperf.loadgen.datasets import SampleRequest, random_requests, sharegpt_requests
from pytest_llmperf.loadgen.run import run_benchmark_sync
from pytest_llmperf.loadgen.runner import BenchmarkResult, BenchSettings, run_benchmark

__all__ = [
    "BenchSettings",
    "BenchmarkResult",
    "SampleRequest",
    "random_requests",
    "run_benchmark",
    "run_benchmark_sync",
    "sharegpt_requests",
]
