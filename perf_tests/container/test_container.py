"""Perf tests of the simulated engine run from a locally built container image (container.toml)."""

import pytest

pytestmark = pytest.mark.llmperf_matrix("container.toml")


def test_serving(llmperf_bench, llmperf_gate):
    result = llmperf_bench.run()
    llmperf_gate.check(result)
