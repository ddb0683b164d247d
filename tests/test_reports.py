"""Reports: the report folder, JUnit properties, the study view from the published results, the nightly workflow."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from suite_files import PERF_TEST

ROOT = Path(__file__).resolve().parents[1]


MATRIX = """
[[engines]]
id = "steady"
engine = "sim"
model = "llmperf-sim"
sim = {{ profile = "deterministic", ttft_ms = 20, itl_ms = 20 }}

[[engines]]
id = "slower"
engine = "sim"
model = "llmperf-sim"
sim = {{ profile = "deterministic", ttft_ms = 20, itl_ms = 20, slowdown = {slowdown} }}

# one config regresses by 30%; one host pause at the last of 12 tokens can move a run's TPOT by 6%
[gate.tolerance]
output_throughput = 0.15
total_token_throughput = 0.15
mean_tpot_ms = 0.15

[[workloads]]
id = "w"
random_input_len = 8
random_output_len = 12
num_prompts = 8
"""


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_llmperf.cli", *args], cwd=cwd, capture_output=True, text=True, env=env
    )


def test_report_dir_files_markdown_step_summary_and_junit(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makefile(".toml", matrix=MATRIX.format(slowdown=1.0))
    pytester.makepyfile(test_perf=PERF_TEST)
    pytester.runpytest("--llmperf-update-baselines", "--llmperf-repeats", "2").assert_outcomes(passed=2)
    pytester.makefile(".toml", matrix=MATRIX.format(slowdown=1.3))  # one config regresses by 30%
    step_summary = tmp_path / "step-summary.md"
    os.environ["GITHUB_STEP_SUMMARY"] = str(step_summary)
    try:
        result = pytester.runpytest(
            "--llmperf-report-dir", "reports", "--llmperf-repeats", "2", "--junitxml", "reports/junit.xml"
        )
    finally:
        del os.environ["GITHUB_STEP_SUMMARY"]
    result.assert_outcomes(passed=1, failed=1)
    reports = pytester.path / "reports"
    for case in ("steady-w", "slower-w"):
        for i in (1, 2):
            run = json.loads((reports / "results" / case / f"run-{i}.json").read_text())
            assert run["completed"] == 8 and "output_throughput" in run and run["config"] == case.split("-")[0]
    summary = json.loads((reports / "summary.json").read_text())
    assert summary["schema_version"] == 1 and summary["environment"]["plugin_version"]
    # the version each simulated server reported on /version, per config
    assert set(summary["engine_versions"]) == {"steady", "slower"}
    assert all(v.startswith("llmperf-sim-") for v in summary["engine_versions"].values())
    assert {t["case"]: t["verdict"] for t in summary["tests"]} == {"steady-w": "PASS", "slower-w": "FAIL"}
    md = (reports / "summary.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| `")]
    assert len(rows) == 2 * 4  # one row per test and gated metric
    assert rows[0].startswith("| `slower-w` |")  # regressions first
    verdict = {(r.split("|")[1].strip(" `"), r.split("|")[2].strip()): r.split("|")[-2].strip() for r in rows}
    assert verdict[("slower-w", "output_throughput")] == "**FAIL**"
    assert verdict[("slower-w", "mean_tpot_ms")] == "**FAIL**"
    assert verdict[("slower-w", "failed")] == "PASS"
    assert verdict[("steady-w", "total_token_throughput")] == "PASS"
    assert step_summary.read_text() == md
    assert sorted(p.name for p in (reports / "logs").iterdir()) == ["slower.log", "steady.log"]
    junit = (reports / "junit.xml").read_text()
    assert '<property name="llmperf.verdict" value="FAIL" />' in junit
    assert '<property name="llmperf.output_throughput"' in junit


def test_llmperf_report_reproduces_the_studys_summary_from_its_published_results(tmp_path: Path) -> None:
    result = cli(
        "report",
        str(ROOT / "baselines/perf_tests/study"),
        "--out",
        str(tmp_path / "report.md"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    # the same study view from the checkout as from elsewhere: the baselines carry what it needs
    from_root = cli("report", "baselines/perf_tests/study", cwd=ROOT)
    assert from_root.returncode == 0, from_root.stderr
    assert from_root.stdout == result.stdout.replace(f"llmperf report: wrote {tmp_path / 'report.md'}\n", "")
    assert not (ROOT / "llmperf-report.md").exists()
    out = re.sub(r" {2,}", " ", result.stdout)  # Markdown tables are aligned: one space between cells here
    # the study's "Summary of Optimization Options", recomputed from its detailed result blocks
    assert "| Parallelism | +28.66% | sglang-tp-dp-dp-attn | 7,351.59 |" in out
    assert "| Tool Call Configuration | +13.94% | sglang-tool-call | 8,376.43 |" in out
    assert "| Context Length Adjust | +4.47% | sglang-ctx-32k | 8,750.49 |" in out
    assert "| Attention Backend | +2.49% | sglang-attn-fa3 | 8,968.32 |" in out
    for knob in ("KV Cache Dtype", "MTP", "DeepGEMM"):
        assert f"| {knob} | - | - | - |" in out
    assert "Start: `vllm-baseline` (5,713.95 tok/s)" in out
    assert "`sglang-attn-fa3`: 8,968.32 total tok/s on sharegpt." in out
    assert "--attention-backend nsa --nsa-prefill-backend fa3 --nsa-decode-backend fa3" in out
    assert (tmp_path / "report.md").read_text().count("## Summary of optimization options") == 1


def test_report_plot_writes_png_charts(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    result = cli(
        "report",
        str(ROOT / "baselines/perf_tests/study"),
        "--matrix",
        str(ROOT / "perf_tests/study"),
        "--out",
        str(tmp_path / "r.md"),
        "--plot",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    import matplotlib.image

    for name in ("throughput-by-config.png", "throughput-by-workload.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(tmp_path / name)
        assert image.shape[0] > 100 and image.shape[1] > 100


def test_report_plot_without_matplotlib_names_the_extra(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['matplotlib'] = None; from pytest_llmperf.cli.main import main; "
        f"sys.exit(main(['report', {str(ROOT / 'baselines/perf_tests/study')!r}, '--out', 'r.md', '--plot']))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2
    assert "needs matplotlib: pip install 'pytest-llmperf[plot]'" in result.stderr


def test_nightly_workflow_is_valid_and_calls_only_existing_commands() -> None:
    wf = yaml.safe_load((ROOT / ".github/workflows/nightly-h200.yml").read_text())
    assert set(wf["jobs"]) == {"plan", "perf", "verdict"}
    perf = wf["jobs"]["perf"]
    assert "gpu-h200x8" in perf["runs-on"]
    runs = "\n".join(step.get("run", "") for job in wf["jobs"].values() for step in job["steps"])
    assert "--llmperf-update-baselines" not in runs  # never refreshes baselines by itself
    assert "pytest perf_tests -m h200 --llmperf-shard" in runs and "--llmperf-report-dir" in runs
    assert "llmperf report $dirs" in runs
    # the nightly keeps its history and publishes the dashboard
    assert '--llmperf-history "$db"' in runs and 'llmperf history changes --db "$db"' in runs
    assert 'llmperf history html --db "$db"' in runs
    uploads = [s["with"]["name"] for s in wf["jobs"]["verdict"]["steps"] if "upload-artifact" in s.get("uses", "")]
    assert "llmperf-dashboard-${{ matrix.engine }}" in uploads
    cached = [s for s in wf["jobs"]["verdict"]["steps"] if "actions/cache" in s.get("uses", "")]
    assert len(cached) == 2 and all("LLMPERF_HISTORY_URL == ''" in s["if"] for s in cached)
    # every llmperf sub-command and pytest option the workflow uses exists
    help_text = subprocess.run([sys.executable, "-m", "pytest", "--help"], capture_output=True, text=True).stdout
    for token in shlex.split(runs.replace("\\\n", " "), posix=True):
        if token.startswith("--llmperf-"):
            assert token.split("=")[0] in help_text, token
    llmperf_help = subprocess.run(
        [sys.executable, "-m", "pytest_llmperf.cli", "--help"], capture_output=True, text=True
    ).stdout
    assert "report DIR" in llmperf_help
    # the engines come from release images: the pinned list, one engine's image replaced by the candidate's
    assert "--llmperf-engine-image" in runs and "podman pull" in runs and "pip install vllm" not in runs
    pinned = [
        line
        for line in (ROOT / "perf_tests/study/engines-pinned.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert sorted(line.split("=")[0] for line in pinned) == ["sglang", "trtllm", "vllm"]
    from pytest_llmperf.config import load_matrix

    images = load_matrix(ROOT / "perf_tests/study/deepseek_v32_h200.toml").defaults.images
    assert {f"{k}={v}" for k, v in images.items()} == set(pinned)  # the list and the matrix agree
    doc = (ROOT / "docs/nightly-ci.md").read_text()
    for step in ("--llmperf-update-baselines", "llmperf compare", "llmperf report", "summary.md"):
        assert step in doc


def test_progress_lines_while_running_and_quiet_under_q(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", matrix=MATRIX.format(slowdown=1.0))
    pytester.makepyfile(test_perf=PERF_TEST)
    loud = pytester.runpytest("--llmperf-update-baselines", "--llmperf-repeats", "1", "-k", "steady")
    assert "[steady-w run 1] 8/8 requests, " in loud.stdout.str() and "output tok/s" in loud.stdout.str()
    quiet = pytester.runpytest("--llmperf-repeats", "1", "-k", "steady", "-q")
    assert "requests, " not in quiet.stdout.str()


def test_published_baselines_equal_the_studys_result_blocks() -> None:
    study = ROOT.parent / "shared" / "reference" / "deepseek-v3.2-h200-study.md"
    if not study.exists():
        pytest.skip(f"the study is not beside the checkout ({study})")
    sys.path.insert(0, str(ROOT / "perf_tests" / "study"))
    try:
        from import_published import placed_blocks
    finally:
        sys.path.pop(0)
    from pytest_llmperf.gate.baseline import load_baseline

    blocks = placed_blocks(study.read_text())
    assert len(blocks) == 29  # every full result block of the study
    listing = cli("baselines", "list", str(ROOT / "baselines/perf_tests/study"), cwd=ROOT).stdout
    for config, workload, _, metrics in blocks:
        case = f"{config}-{workload}"
        assert case in listing
        b = load_baseline(ROOT / "baselines/perf_tests/study/test_deepseek_v32_h200/test_serving" / f"{case}.json")
        assert b is not None and b.provenance.source == "published"
        for key in (
            "total_token_throughput",
            "output_throughput",
            "request_throughput",
            "mean_ttft_ms",
            "median_ttft_ms",
            "p99_ttft_ms",
            "mean_tpot_ms",
            "median_tpot_ms",
            "p99_tpot_ms",
            "mean_itl_ms",
            "median_itl_ms",
            "p99_itl_ms",
        ):
            assert b.metrics[key] == [metrics[key]], (case, key)
