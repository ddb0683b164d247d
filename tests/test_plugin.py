"""The plugin through pytester: options, markers, config errors, baselines, the update flow, regressions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from suite_files import PERF_TEST

MATRIX = """
[defaults]
markers = ["sim"]

[[engines]]
id = "fast"
engine = "sim"
model = "llmperf-sim"
startup_timeout_s = 30
sim = {{ profile = "deterministic", ttft_ms = 20, itl_ms = 5 }}
{extra_engine}

# 4 requests of 6 tokens at 5 ms: the client's own noise is a few % of such a run's TPOT (sd 2.8% per run,
# measured), and these tests check the update flow, not the gate's power (test_gate_flow.py does that)
[gate.tolerance]
output_throughput = 0.25
total_token_throughput = 0.25
mean_tpot_ms = 0.25

[[workloads]]
id = "tiny"
random_input_len = 16
random_output_len = 6
num_prompts = 4
seed = 1

[[workloads]]
id = "tiny-completions"
backend = "openai"
random_input_len = 8
random_output_len = 4
num_prompts = 4
seed = 1
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makefile(".toml", matrix=MATRIX.format(extra_engine=""))
    pytester.makepyfile(test_perf=PERF_TEST)
    pytester.makeini("[pytest]\nllmperf_repeats = 2\n")
    return pytester


def has_lines(result: pytest.RunResult, *parts: str) -> None:
    """Each part appears in the output (plain substrings: test ids hold brackets that fnmatch reads as classes)."""
    out = result.stdout.str()
    for part in parts:
        assert part in out, f"{part!r} not in output:\n{out}"


def baseline_files(p: pytest.Pytester) -> list[Path]:
    return sorted((p.path / "baselines").rglob("*.json"))


def test_options_are_in_one_group_and_markers_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(
        [
            "*LLM serving performance regression tests (pytest-llmperf)*",
            "*--llmperf-update-baselines*",
            "*--llmperf-repeats*",
            "*--llmperf-sim-slowdown*",
        ]
    )
    markers = pytester.runpytest("--markers")
    text = markers.stdout.str()
    for line in (
        "@pytest.mark.llmperf_matrix(path):",
        "@pytest.mark.sim:",
        "@pytest.mark.h200: needs one node with 8 NVIDIA H200",
    ):
        assert line in text


def test_collects_one_test_per_pair_with_marker_selection(suite: pytest.Pytester) -> None:
    result = suite.runpytest("--collect-only", "-q", "-m", "sim")
    has_lines(result, "test_perf.py::test_serving[fast-tiny]\n", "test_perf.py::test_serving[fast-tiny-completions]")
    none = suite.runpytest("--collect-only", "-q", "-m", "h200")
    assert none.ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_bad_matrix_fails_collection_naming_file_entry_and_field(pytester: pytest.Pytester) -> None:
    pytester.makefile(
        ".toml",
        matrix=MATRIX.format(extra_engine="").replace(
            "num_prompts = 4\nseed = 1\n\n", "num_prompt = 4\nseed = 1\n\n", 1
        ),
    )
    pytester.makepyfile(test_perf=PERF_TEST)
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    has_lines(
        result,
        "matrix.toml: invalid matrix (1 error(s))",
        "  workloads[0] (id='tiny'), field 'num_prompt': Extra inputs are not permitted",
    )
    assert "Traceback" not in result.stdout.str() and "During handling" not in result.stdout.str()


def test_missing_baseline_fails_with_the_command_that_records_it(suite: pytest.Pytester) -> None:
    result = suite.runpytest("-k", "fast-tiny-completions")
    result.assert_outcomes(failed=1)
    has_lines(
        result,
        "[fast-tiny-completions] no baseline: "
        "baselines/test_perf/test_serving/fast-tiny-completions.json does not exist",
        "    pytest 'test_perf.py::test_serving[fast-tiny-completions]' --llmperf-update-baselines",
    )


def test_update_records_baselines_then_the_suite_passes_and_prints_the_table(suite: pytest.Pytester) -> None:
    first = suite.runpytest("--llmperf-update-baselines")
    first.assert_outcomes(passed=2)
    first.stdout.fnmatch_lines(["*llmperf: wrote baseline baselines/test_perf/test_serving/fast-tiny.json"])
    files = baseline_files(suite)
    assert [f.name for f in files] == ["fast-tiny-completions.json", "fast-tiny.json"]
    data = json.loads(files[1].read_text())
    assert data["schema_version"] == 2 and data["provenance"]["source"] == "measured"
    assert len(data["metrics"]["output_throughput"]) == 2  # raw per-run samples, one per repeat
    assert data["engine"]["version"].startswith("llmperf-sim-") and data["hardware"]["kind"] == "simulated"

    second = suite.runpytest()
    second.assert_outcomes(passed=2)
    second.stdout.fnmatch_lines(
        [
            "*= llmperf results (simulated) =*",  # the suite runs on the simulated engine, and says so
            "simulated, not measured on the engines: llmperf-sim, profile deterministic*",
            "test*metric*baseline*current*change*tol*p*n*verdict",
            "fast-tiny*output_throughput*PASS",
            "fast-tiny*mean_tpot_ms*PASS",
        ]
    )
    assert baseline_files(suite) == files


def test_update_accepts_a_path_after_the_flag_and_rejects_unknown_modes(suite: pytest.Pytester) -> None:
    ok = suite.runpytest("--llmperf-update-baselines", "test_perf.py", "-k", "completions")
    ok.assert_outcomes(passed=1)
    bad = suite.runpytest("--llmperf-update-baselines=sometimes")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*expected 'failing' (the default) or 'all'*"])


def test_regression_fails_the_item_naming_metrics_and_update_accepts_it(suite: pytest.Pytester) -> None:
    # a run lasts ~45 ms, so one pause of the host (up to 60 ms here) halves it: a baseline of 5 runs lets
    # the robust rule leave such a run out, where one of 2 made the 2x slowdown look like -30% (inconclusive)
    suite.runpytest("--llmperf-update-baselines", "--llmperf-baseline-repeats", "5").assert_outcomes(passed=2)
    before = {f: f.read_text() for f in baseline_files(suite)}
    slow = suite.runpytest("--llmperf-sim-slowdown", "2.0", "-k", "fast-tiny and not completions")
    slow.assert_outcomes(failed=1)
    has_lines(
        slow,
        "[fast-tiny] performance regression: total_token_throughput -",
        "against baselines/test_perf/test_serving/fast-tiny.json:",
        "If this change is intended, re-run with --llmperf-update-baselines to accept it:",
        "    pytest 'test_perf.py::test_serving[fast-tiny]' --llmperf-sim-slowdown 2 --llmperf-update-baselines",
        "FAILED test_perf.py::test_serving[fast-tiny] - ",
    )
    slow.stdout.re_match_lines(
        [
            # 2 runs, then 5 fresh ones to confirm the failure (sequential confirmation), 5 more if the 7
            # were still inconclusive; n counts the runs the robust rule kept (a host pause makes outliers)
            r"output_throughput: [\d.]+ -> [\d.]+ \(-\d+\.\d%, tolerance 25%, p=.*, n=\d+/\d+\).*",
            r"mean_tpot_ms: [\d.]+ -> [\d.]+ \(\+\d+\.\d%, tolerance 25%, p=.*, n=\d+/\d+\).*",
            r"note: confirmation: the first 2 run\(s\) showed .*; (5|10) fresh run\(s\) were added before deciding",
        ]
    )
    assert {f: f.read_text() for f in baseline_files(suite)} == before  # failing runs never touch baselines

    accept = suite.runpytest("--llmperf-sim-slowdown", "2.0", "--llmperf-update-baselines")
    accept.assert_outcomes(passed=2)
    after = {f: f.read_text() for f in baseline_files(suite)}
    assert after != before
    suite.runpytest("--llmperf-sim-slowdown", "2.0").assert_outcomes(passed=2)


def test_update_all_rewrites_passing_baselines_update_failing_does_not(suite: pytest.Pytester) -> None:
    suite.runpytest("--llmperf-update-baselines").assert_outcomes(passed=2)
    path = baseline_files(suite)[1]
    data = json.loads(path.read_text())
    data["provenance"]["date"] = "2000-01-01T00:00:00+00:00"
    path.write_text(json.dumps(data))
    suite.runpytest("--llmperf-update-baselines").assert_outcomes(passed=2)
    assert json.loads(path.read_text())["provenance"]["date"] == "2000-01-01T00:00:00+00:00"
    suite.runpytest("--llmperf-update-baselines=all").assert_outcomes(passed=2)
    assert json.loads(path.read_text())["provenance"]["date"] != "2000-01-01T00:00:00+00:00"


def test_corrupt_and_unknown_version_baselines_fail_with_the_fix(suite: pytest.Pytester) -> None:
    suite.runpytest("--llmperf-update-baselines").assert_outcomes(passed=2)
    corrupt, newer = baseline_files(suite)
    corrupt.write_text("{ not json")
    newer.write_text(json.dumps({"schema_version": 7}))
    result = suite.runpytest()
    result.assert_outcomes(failed=2)
    has_lines(
        result,
        "[fast-tiny-completions] baseline file baselines/test_perf/test_serving/fast-tiny-completions.json "
        "is not valid JSON",
        "Re-record it (replaces the file): pytest 'test_perf.py::test_serving[fast-tiny-completions]' "
        "--llmperf-update-baselines",
        "[fast-tiny] baseline file baselines/test_perf/test_serving/fast-tiny.json has schema_version 7; "
        "this pytest-llmperf reads versions 1, 2. It was written by a newer pytest-llmperf",
    )
    assert "Traceback" not in result.stdout.str() and "During handling" not in result.stdout.str()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--llmperf-repeats", "0"], "--llmperf-repeats must be at least 1"),
        (["--llmperf-sim-slowdown", "-1"], "--llmperf-sim-slowdown must be positive"),
    ],
)
def test_bad_options_are_usage_errors(suite: pytest.Pytester, args: list[str], message: str) -> None:
    result = suite.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])


def test_a_test_using_the_fixtures_without_a_matrix_is_told_what_to_add(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(llmperf_bench):\n    pass\n")
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*has no matrix: add pytestmark = pytest.mark.llmperf_matrix('matrix.toml')*"])


def test_server_start_failure_errors_each_test_once_with_the_log_tail(pytester: pytest.Pytester) -> None:
    broken = """
[[engines]]
id = "broken"
engine = "sim"
model = "llmperf-sim"
extra_args = ["--fail-at-startup", "RuntimeError: CUDA out of memory"]
"""
    pytester.makefile(".toml", matrix=MATRIX.format(extra_engine=broken))
    pytester.makepyfile(test_perf=PERF_TEST)
    pytester.makeini("[pytest]\nllmperf_repeats = 1\n")
    result = pytester.runpytest("--llmperf-update-baselines", "--llmperf-log-dir", "logs")
    result.assert_outcomes(passed=2, errors=2)
    has_lines(
        result,
        "[broken] out of memory: server exited with code 1 before it became ready",
        "RuntimeError: CUDA out of memory",
    )
    log = (pytester.path / "logs" / "broken.log").read_text()
    assert log.count("### llmperf: launching") == 1  # a failed config is not launched again


def test_each_config_server_starts_once_and_tests_are_grouped(pytester: pytest.Pytester) -> None:
    second = """
[[engines]]
id = "second"
engine = "sim"
model = "llmperf-sim"
sim = { profile = "deterministic", ttft_ms = 10, itl_ms = 5 }
"""
    pytester.makefile(".toml", matrix=MATRIX.format(extra_engine=second))
    pytester.makepyfile(
        test_perf=PERF_TEST + "\n\ndef test_other(llmperf_server):\n    assert llmperf_server.version\n"
    )
    pytester.makeini("[pytest]\nllmperf_repeats = 1\n")
    result = pytester.runpytest("--llmperf-update-baselines", "--llmperf-log-dir", "logs", "-v")
    result.assert_outcomes(passed=8)  # 2 tests x 2 configs x 2 workloads
    for cfg in ("fast", "second"):
        assert (pytester.path / "logs" / f"{cfg}.log").read_text().count("### llmperf: launching") == 1
    order = [line.split("::")[1].split(" ")[0] for line in result.stdout.lines if "PASSED" in line and "::" in line]
    configs = ["fast" if "[fast" in t else "second" for t in order]
    assert configs == sorted(configs, key=configs.index)  # all tests of a config run back to back
