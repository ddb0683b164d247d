"""What several test modules share: the perf test module the pytester-based tests write, a /proc check, a
pytest run whose output lines carry the time they arrived, and a flat simulator profile."""

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from pytest_llmperf.engines import ServerProcess
from pytest_llmperf.sim.engine import Profile

StartSim = Callable[..., ServerProcess]  # the start_sim fixture: start_sim(*args, profile=..., **sim options)

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


def stamped_pytest(cwd: Path, *args: str) -> list[tuple[float, str]]:
    """Run ``pytest *args`` unbuffered in ``cwd``; each output line with the seconds since the start when it came."""
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    t0 = time.monotonic()
    stamped = [(time.monotonic() - t0, line.rstrip()) for line in proc.stdout]
    proc.wait(timeout=10)
    return stamped


def flat_profile(overhead: float, **kw: Any) -> Profile:
    """A simulator profile whose every step costs ``overhead`` (plus what ``kw`` sets)."""
    base = Profile(
        name="t",
        description="test",
        step_overhead_s=overhead,
        decode_per_seq_s=0.0,
        prefill_per_token_s=0.0,
        context_per_token_s=0.0,
        max_num_seqs=256,
        max_num_batched_tokens=8192,
        kv_capacity_tokens=1_000_000,
    )
    return replace(base, **kw)
