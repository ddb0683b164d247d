"""Files the pytester-based tests write: the perf test module every suite in them uses."""

PERF_TEST = """
import pytest

pytestmark = pytest.mark.llmperf_matrix("matrix.toml")


def test_serving(llmperf_bench, llmperf_gate):
    llmperf_gate.check(llmperf_bench.run())
"""
