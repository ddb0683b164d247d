"""DeepSeek-V3.2 on 8xH200: every configuration of the study on its workloads (see README.md here)."""

import pytest

pytestmark = pytest.mark.llmperf_matrix("deepseek_v32_h200.toml")


def test_serving(llmperf_bench, llmperf_gate):
    llmperf_gate.check(llmperf_bench.run())
