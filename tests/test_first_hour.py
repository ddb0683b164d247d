"""The first hour of a new user: a suite of their own, and nothing surprises them (issue 20, items 1-8)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
from suite_files import PERF_TEST, stamped_pytest

ROOT = Path(__file__).resolve().parents[1]

MATRIX = """
[defaults]
markers = ["mine"]

[[engines]]
id = "my-sim"
engine = "sim"
model = "llmperf-sim"
sim = {{ profile = "deterministic", ttft_ms = 10, itl_ms = {itl} }}

[gate.tolerance]
output_throughput = 0.25
total_token_throughput = 0.25
mean_tpot_ms = 0.25

[[workloads]]
id = "random"
random_input_len = 16
random_output_len = {tokens}
num_prompts = {prompts}
{extra_workload}
"""
SHAREGPT = '\n[[workloads]]\nid = "chat"\ndataset = "sharegpt"\nnum_prompts = 4\nsharegpt_output_len = 6\n'


def suite(p: pytest.Pytester, *, itl: int = 5, tokens: int = 6, prompts: int = 4, extra: str = "") -> None:
    p.makefile(".toml", matrix=MATRIX.format(itl=itl, tokens=tokens, prompts=prompts, extra_workload=extra))
    p.makepyfile(test_perf=PERF_TEST)
    p.makeini("[pytest]\nllmperf_repeats = 2\n")


def text(result: pytest.RunResult) -> str:
    return result.stdout.str() + result.stderr.str()


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_llmperf.cli", *args], cwd=cwd, capture_output=True, text=True)


def test_1_a_matrix_declares_its_own_markers_also_under_strict_markers(pytester: pytest.Pytester) -> None:
    suite(pytester)
    collected = pytester.runpytest("--strict-markers", "--collect-only", "-q", "-m", "mine", "-W", "error")
    assert collected.ret == 0, text(collected)
    assert "test_perf.py::test_serving[my-sim-random]" in text(collected)
    assert "PytestUnknownMarkWarning" not in text(collected)
    pytester.runpytest("--strict-markers", "-m", "mine", "--llmperf-update-baselines").assert_outcomes(passed=1)


def test_2_a_sharegpt_workload_without_a_file_skips_before_any_server_starts(pytester: pytest.Pytester) -> None:
    suite(pytester, extra=SHAREGPT)
    sample = pytester.path / "perf_tests" / "data" / "sharegpt_sample.json"
    sample.parent.mkdir(parents=True)
    sample.write_text((ROOT / "perf_tests/data/sharegpt_sample.json").read_text())
    result = pytester.runpytest("-k", "chat", "--llmperf-log-dir", "logs")
    result.assert_outcomes(skipped=1)
    assert "--llmperf-sharegpt PATH" in text(result)
    assert "or try the bundled sample: --llmperf-sharegpt perf_tests/data/sharegpt_sample.json" in text(result)
    assert not (pytester.path / "logs").exists()  # no server was started to skip
    missing = pytester.runpytest("-k", "chat", "--llmperf-sharegpt", "nope.json", "--llmperf-log-dir", "logs")
    missing.assert_outcomes(errors=1)
    assert "ShareGPT file nope.json not found (from --llmperf-sharegpt)" in text(missing)
    assert not (pytester.path / "logs").exists()
    ran = pytester.runpytest("-k", "chat", "--llmperf-sharegpt", str(sample), "--llmperf-update-baselines")
    ran.assert_outcomes(passed=1)


def test_3_the_skips_that_matter_are_summed_up_without_rs(pytester: pytest.Pytester) -> None:
    suite(pytester, extra=SHAREGPT.replace('id = "chat"', 'id = "chat"\nmarkers = ["h200"]'))
    result = pytester.runpytest()  # no -rs
    out = text(result)
    assert "llmperf: 1 perf test(s) skipped" in out or "llmperf: 2 perf test(s) skipped" in out
    assert "x needs one node with 8 NVIDIA H200 GPUs" in out and "--llmperf-simulate" in out
    simulated = pytester.runpytest("-k", "chat", "--llmperf-simulate")
    simulated.assert_outcomes(skipped=1)
    assert "llmperf: 1 perf test(s) skipped" in text(simulated)
    assert "1 x needs a ShareGPT file: pass --llmperf-sharegpt PATH" in text(simulated)


def test_4_a_slow_run_prints_progress_at_least_every_10_s(pytester: pytest.Pytester) -> None:
    """Two requests of 60 tokens at 250 ms: no request completes for 15 s, yet progress keeps coming."""
    suite(pytester, itl=250, tokens=60, prompts=2)
    stamped = stamped_pytest(pytester.path, "--llmperf-update-baselines", "--llmperf-repeats=1")
    first = [t for t, line in stamped if "[my-sim-random run 1]" in line]
    assert len(first) >= 2, stamped
    assert first[0] < first[-1] and "0/2 requests" in next(line for t, line in stamped if t == first[0])
    gaps = [b - a for a, b in itertools.pairwise(first)]
    assert max(gaps) <= 10, stamped


def test_5_llmperf_report_writes_only_where_told_and_hints_the_workload(pytester: pytest.Pytester) -> None:
    suite(pytester)
    pytester.runpytest("--llmperf-update-baselines", "--llmperf-report-dir", "rep").assert_outcomes(passed=1)
    before = sorted(p.name for p in pytester.path.iterdir())
    shown = cli("report", "rep", cwd=pytester.path)
    assert shown.returncode == 0, shown.stderr
    assert sorted(p.name for p in pytester.path.iterdir()) == before  # nothing written unasked
    assert "my-sim-random" in shown.stdout
    assert "no result of workload 'sharegpt'" in shown.stderr and "pass --workload NAME" in shown.stderr
    assert "the workloads here are random" in shown.stderr
    written = cli("report", "rep", "--out", "out/report.md", "--workload", "random", cwd=pytester.path)
    assert written.returncode == 0 and (pytester.path / "out" / "report.md").is_file()
    assert "no result of workload" not in written.stderr
    plot = cli("report", "rep", "--plot", cwd=pytester.path)
    assert plot.returncode == 2 and "give --out FILE" in plot.stderr


def test_6_notes_people_act_on_are_in_the_terminal(pytester: pytest.Pytester) -> None:
    suite(pytester)
    pytester.runpytest("--llmperf-update-baselines").assert_outcomes(passed=1)
    path = next((pytester.path / "baselines").rglob("*.json"))
    data = json.loads(path.read_text())
    for metric in ("output_throughput", "total_token_throughput"):  # the baseline says 2.5 times slower than now
        data["metrics"][metric] = [v * 0.4 for v in data["metrics"][metric]]
    path.write_text(json.dumps(data))
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    out = text(result)
    assert "note: [my-sim-random] output_throughput +1" in out  # about +150%
    assert "large improvement: the baseline may be stale (--llmperf-update-baselines=all)" in out
    assert "p: one-sided t-test p-value, computed only for a change beyond its tolerance" in out


def test_7_logs_are_per_session_and_lists_say_what_they_leave_out(pytester: pytest.Pytester) -> None:
    suite(pytester)
    for _ in range(2):
        pytester.runpytest(
            "--llmperf-update-baselines=all", "--llmperf-log-dir", "logs", "--llmperf-report-dir", "rep"
        ).assert_outcomes(passed=1)
    log = (pytester.path / "logs" / "my-sim.log").read_text()
    assert log.count("### llmperf: launching") == 1
    # the engine's output and the plugin's lines both append: neither overwrites the other
    assert "### llmperf: server pid" in log and "llmperf sim: pid" in log and "### llmperf: stopped" in log
    assert (pytester.path / "rep" / "logs" / "my-sim.log").read_text().count("### llmperf: launching") == 1
    pytester.runpytest("--llmperf-simulate", "--llmperf-update-baselines").assert_outcomes(passed=1)
    listing = cli("baselines", "list", cwd=pytester.path)
    assert "1 baseline(s) under baselines; 1 more of --llmperf-simulate runs: llmperf baselines list" in (
        listing.stdout
    )
    cpu = json.loads(next((pytester.path / "baselines").glob("test_perf/*/*.json")).read_text())
    cpu["hardware"] = {"kind": "host", "gpus": "none", "cpu": "2x Intel(R) Xeon(R) Processor", "cpu_isa": "amx"}
    cpu_dir = pytester.path / "cpu-baselines" / "t" / "test_serving"
    cpu_dir.mkdir(parents=True)
    (cpu_dir / "c.json").write_text(json.dumps(cpu))
    cpu_list = cli("baselines", "list", "cpu-baselines", cwd=pytester.path)
    assert "2x Intel(R) Xeon(R) Processor (amx)" in cpu_list.stdout and " none " not in cpu_list.stdout


def test_8_smaller_things(pytester: pytest.Pytester) -> None:
    suite(pytester)
    (pytester.path / "matrix.toml").write_text(
        (pytester.path / "matrix.toml")
        .read_text()
        .replace('model = "llmperf-sim"', 'model = "llmperf-sim"\nmax_num_seq = 8')
    )
    typo = pytester.runpytest("--collect-only")
    assert "field 'max_num_seq': Extra inputs are not permitted (did you mean 'max_num_seqs'?)" in text(typo)
    sim_help = cli("sim", "--help", cwd=pytester.path)
    assert sim_help.returncode == 0 and "llmperf sim serve [OPTIONS]" in sim_help.stdout
    assert "llmperf sim tokenizer DIR" in sim_help.stdout
    report_help = cli("report", "--help", cwd=pytester.path)
    assert report_help.returncode == 0 and "``" not in report_help.stdout
    assert "``" not in cli("bench", "serve", "--help", cwd=pytester.path).stdout
    perf_help = subprocess.run(
        [sys.executable, "-m", "pytest", "perf_tests", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert "--llmperf-update-baselines" in perf_help.stdout
    assert "--runpytest" not in perf_help.stdout and "--lsof" not in perf_help.stdout


def test_8_the_short_summary_line_names_the_regressed_metrics(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "160")  # a terminal's width: pytest cuts each summary line to it
    suite(pytester)
    pytester.runpytest("--llmperf-update-baselines").assert_outcomes(passed=1)
    slow = pytester.runpytest("--llmperf-sim-slowdown", "2")
    slow.assert_outcomes(failed=1)
    line = next(line for line in slow.stdout.lines if line.startswith("FAILED "))
    assert "[my-sim-random] performance regression: total_token_throughput -" in line, line
