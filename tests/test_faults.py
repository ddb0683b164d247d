"""Every fault of the simulated engine, reported by the plugin as a user needs to see it, in bounded time."""

from __future__ import annotations

import time

import pytest
from suite_files import PERF_TEST

MATRIX = """
[[engines]]
id = "faulty"
engine = "sim"
model = "llmperf-sim"
startup_timeout_s = {timeout}
extra_args = {args}
sim = {{ profile = "deterministic", ttft_ms = 5, itl_ms = 5 }}

[[workloads]]
id = "w"
random_input_len = 8
random_output_len = 20
num_prompts = 12
max_concurrency = 4
stall_timeout_s = 1.0
"""


@pytest.mark.parametrize(
    ("args", "timeout", "outcome", "expected"),
    [
        pytest.param(
            ["--fail-at-startup", "ValueError: unsupported backend"],
            30,
            "errors",
            [
                "[faulty] unsupported configuration: server exited with code 1 before it became ready",
                "--- the lines that identify it ---\nValueError: unsupported backend",
            ],
            id="fail-at-startup",
        ),
        pytest.param(
            ["--crash-after", "0"],
            30,
            "errors",
            ["[faulty] start-up failure: server exited with code 3 before it became ready", "crashing on request 1"],
            id="die-on-first-request",
        ),
        pytest.param(
            ["--crash-after", "5"],
            30,
            "failed",
            [
                "[faulty] the server died during the benchmark (exit code 3)",
                "--- last lines of",
                "crashing on request 6",
            ],
            id="crash-after-n",
        ),
        pytest.param(
            ["--stall-after", "3"],
            30,
            "failed",
            ["failed requests: ", "(functional failure, not slowness)", "Timeout"],
            id="stall-after-n",
        ),
        pytest.param(
            ["--error-rate", "0.4"],
            30,
            "failed",
            ["failed requests: ", "HTTP 500 Internal Server Error", "simulated internal server error"],
            id="http-500",
        ),
        pytest.param(
            ["--malformed-rate", "0.4"],
            30,
            "failed",
            ["failed requests: ", "malformed SSE event in the server's stream (JSONDecodeError"],
            id="malformed-sse",
        ),
        pytest.param(
            ["--reset-rate", "0.4"], 30, "failed", ["failed requests: ", "ConnectionClosedError"], id="connection-reset"
        ),
        pytest.param(
            ["--startup-delay", "20"],
            2,
            "errors",
            ["[faulty] server did not become ready within 2 s", "start-up delay of 20.0 s"],
            id="slow-start-timeout",
        ),
        pytest.param(["--startup-delay", "1"], 30, "passed", ["wrote baseline"], id="slow-start-ok"),
    ],
)
def test_fault_is_reported_with_what_the_user_needs(
    pytester: pytest.Pytester, args: list[str], timeout: int, outcome: str, expected: list[str]
) -> None:
    arg_list = "[" + ", ".join(f'"{a}"' for a in args) + "]"
    pytester.makefile(".toml", matrix=MATRIX.format(timeout=timeout, args=arg_list))
    pytester.makepyfile(test_perf=PERF_TEST)
    t0 = time.monotonic()
    result = pytester.runpytest("--llmperf-update-baselines", "--llmperf-repeats", "1")
    assert time.monotonic() - t0 < 40
    result.assert_outcomes(**{outcome: 1})
    out = result.stdout.str()
    for text in expected:
        assert text in out, f"{text!r} not in:\n{out}"
    if outcome != "passed":
        assert "wrote baseline" not in out  # a broken run never becomes a baseline
