"""What several test modules share: the perf test module the pytester-based tests write, and a /proc check."""

PERF_TEST = """
import pytest

pytestmark = pytest.mark.llmperf_matrix("matrix.toml")


def test_serving(llmperf_bench, llmperf_gate):
    llmperf_gate.check(llmperf_bench.run())
"""


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (non-zombie) process: the tests' own reading of /proc, kept apart from the
    plugin's ``group_members`` so that a teardown check does not trust the code it checks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
