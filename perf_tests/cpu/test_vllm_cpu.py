"""A real vLLM on the CPU: two configurations on two workloads, and a real unsupported configuration."""

import pytest

pytest.importorskip("vllm", reason="the cpu tier needs vLLM: see docs/real-engine.md for the install line")

pytestmark = pytest.mark.llmperf_matrix("vllm_cpu.toml")


def test_serving(llmperf_bench, llmperf_gate):
    llmperf_gate.check(llmperf_bench.run())
