"""Perf tests of the simulated engine: every (engine config, workload) pair of sim.toml."""

import pytest

pytestmark = pytest.mark.llmperf_matrix("sim.toml")


def test_serving(llmperf_bench, llmperf_gate):
    result = llmperf_bench.run()
    llmperf_gate.check(result)
