"""A real vLLM on the CPU: two configurations on two workloads, and a real unsupported configuration."""

import importlib.util

import pytest

# a skip mark rather than a module-level importorskip: `pytest perf_tests -m sim` deselects these tests
# silently instead of reporting a skipped module
pytestmark = [
    pytest.mark.llmperf_matrix("vllm_cpu.toml"),
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="the cpu tier needs vLLM: see docs/real-engine.md for the install line",
    ),
]


def test_serving(llmperf_bench, llmperf_gate):
    llmperf_gate.check(llmperf_bench.run())
