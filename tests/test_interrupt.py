"""Ctrl-C and SIGTERM of a pytest run while a server (with child processes) is up leave nothing behind."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from suite_files import PERF_TEST, pid_alive

from pytest_llmperf.engines import group_members

MATRIX = """
[[engines]]
id = "forking"
engine = "sim"
model = "llmperf-sim"
extra_args = ["--spawn-children", "2"]
sim = { profile = "deterministic", ttft_ms = 50, itl_ms = 100 }

[[workloads]]
id = "long"
random_input_len = 8
random_output_len = 300
num_prompts = 4
"""


def wait_for(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["ctrl-c", "sigterm", "sigkill"])
def test_signal_during_a_run_leaves_no_server_process(pytester: pytest.Pytester, sig: signal.Signals) -> None:
    pytester.makefile(".toml", matrix=MATRIX)
    pytester.makepyfile(test_perf=PERF_TEST)
    log = Path(pytester.path) / "logs" / "forking.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--llmperf-log-dir", "logs", "-q"],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert wait_for(lambda: log.exists() and "serving" in log.read_text(), 30), "server did not start"
        text = log.read_text()
        pgid = int(re.search(r"pgid (\d+)", text).group(1))  # type: ignore[union-attr]
        children = [int(p) for p in re.findall(r"\d+", re.search(r"child processes \[(.*)\]", text).group(1))]  # type: ignore[union-attr]
        assert len(group_members(pgid)) >= 3 and all(pid_alive(c) for c in children)
        time.sleep(1.0)  # the benchmark is running now
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    # SIGKILL leaves pytest no chance: the server's watchdog sees the pipe close and kills the whole group
    assert wait_for(lambda: group_members(pgid) == [], 5), f"left alive: {group_members(pgid)}\n{out.decode()}"
    assert not any(pid_alive(c) for c in children)
    if sig != signal.SIGKILL:
        assert "### llmperf: stopped" in log.read_text()
