"""``llmperf history plot`` and ``html``: charts from a seeded history, and the dashboard opened from disk in
headless Chromium (Debian's ``chromium``, driven by Playwright): one chart per test and metric, no console
error, the filter works; its screenshot is kept in ``test-artifacts/`` (``LLMPERF_TEST_ARTIFACTS``)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("matplotlib")

from pytest_llmperf.history.ingest import ingest_summary
from pytest_llmperf.history.store import HistoryStore

METRICS = ("total_token_throughput", "output_throughput", "mean_tpot_ms")
SUITES = {
    "perf_tests/study/test_study.py": ["vllm-a-sharegpt", "sglang-b-sharegpt"],
    "perf_tests/test_sim.py": ["sim-c-w"],
}


def _night(k: int, rng: random.Random) -> dict[str, Any]:
    """Night ``k`` of a seeded history: vllm-a's throughput steps down 8% from night 20, when its engine
    version changes."""
    tests = []
    for suite, cases in SUITES.items():
        for case in cases:
            step = 0.92 if case.startswith("vllm") and k >= 20 else 1.0
            level = 1000.0 * step * (1 + rng.gauss(0, 0.01))
            runs = [level * (1 + rng.gauss(0, 0.01)) for _ in range(3)]
            tests.append(
                {
                    "nodeid": f"{suite}::test_serving[{case}]",
                    "case": case,
                    "config": case.rsplit("-", 1)[0],
                    "workload": "sharegpt",
                    "engine": case.split("-")[0],
                    "engine_version": "0.14.0" if case.startswith("vllm") and k >= 20 else "0.13.0",
                    "verdict": "FAIL" if step < 1 and k == 20 else "PASS",
                    "updated": False,
                    "hardware": {"kind": "simulated"},
                    "samples": {
                        "total_token_throughput": [2 * r for r in runs],
                        "output_throughput": runs,
                        "mean_tpot_ms": [20_000.0 / r for r in runs],
                    },
                    "rows": [{"metric": m, "baseline": 1000.0 if m == "output_throughput" else None} for m in METRICS],
                }
            )
    return {
        "run_uid": f"night-{k}",
        "started": f"2026-10-{k + 1:02d}T01:00:00+00:00",
        "suite_commit": f"c{k}",
        "tests": tests,
    }


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("history") / "history.sqlite"
    store = HistoryStore(str(path))
    rng = random.Random(11)
    for k in range(30):
        ingest_summary(store, _night(k, rng))
    store.close()
    return path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_llmperf.cli", "history", *args], capture_output=True, text=True
    )


def test_history_plot_writes_one_png_per_test_and_metric(history: Path, tmp_path: Path) -> None:
    done = _cli("plot", "--db", str(history), "-o", str(tmp_path / "plots"))
    assert done.returncode == 0, done.stderr
    pngs = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert len(pngs) == 3 * len(METRICS) and "vllm-a-sharegpt__output_throughput.png" in pngs
    assert all((tmp_path / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    one = _cli("plot", "--db", str(history), "-k", "sim-c", "--metric", "mean_tpot_ms", "-o", str(tmp_path / "one"))
    assert one.returncode == 0 and [p.name for p in (tmp_path / "one").iterdir()] == ["sim-c-w__mean_tpot_ms.png"]


def _chromium() -> str:
    pytest.importorskip("playwright", reason="the dashboard test drives Chromium with Playwright (the test extra)")
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    return found


def test_the_dashboard_opens_from_disk_with_a_chart_per_test_and_metric(history: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    chromium = _chromium()
    out = tmp_path / "dashboard"
    done = _cli("html", "--db", str(history), str(out))
    assert done.returncode == 0, done.stderr
    assert "dashboard written" in done.stdout and "(2 suite page(s))" in done.stdout
    artifacts = Path(os.environ.get("LLMPERF_TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            problems: list[str] = []
            page.on(
                "console", lambda m: problems.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.goto((out / "index.html").as_uri())
            assert page.locator("table tbody tr").count() == 2  # the two suites
            page.click("text=perf_tests/study/test_study.py")
            # the click only starts the navigation: counting before the page has loaded races its parsing
            page.wait_for_url("**/suite-perf-tests-study-test-study-py.html", wait_until="load")
            charts = page.locator("figure.chart svg")
            assert charts.count() == 2 * len(METRICS)  # the study page: two tests, three gated metrics
            for case in SUITES["perf_tests/study/test_study.py"]:
                assert page.locator(f'section.test[data-test="{case}"] figure.chart').count() == len(METRICS)
            changes = page.locator("h2:text('Change points') + table tbody tr")
            text = changes.all_inner_texts()
            assert any("vllm-a-sharegpt" in t and "REGRESSION" in t and "0.13.0 -> 0.14.0" in t for t in text), text
            assert not any("sglang-b" in t for t in text), text  # its series has no step
            page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)
            page.fill("#filter", "sglang")
            assert page.locator("section.test:visible").count() == 1
            assert problems == []
        finally:
            browser.close()
    assert (artifacts / "dashboard.png").stat().st_size > 10_000
