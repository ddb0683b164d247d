"""The history store against real databases: SQLite always, PostgreSQL from Debian's package in a throwaway
cluster on a loopback port (skipped, with the reason, where it is not installed)."""

from __future__ import annotations

import glob
import importlib.util
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from suite_files import PERF_TEST

pytest.importorskip("sqlalchemy")

from pytest_llmperf.cli.history import show_table
from pytest_llmperf.engines import free_port
from pytest_llmperf.history.ingest import ingest_summary, summary_rows
from pytest_llmperf.history.store import HistoryError, HistoryStore


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1, run as the ``postgres`` user when we are root."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed here (Debian's postgresql package; .ci/run installs it)")
    pytest.importorskip("psycopg")
    root = Path(tempfile.mkdtemp(prefix="llmperf-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()

    def run(*argv: str) -> None:
        subprocess.run([*as_user, *argv], check=True, capture_output=True, timeout=120)

    run(str(bindir / "initdb"), "-D", str(data), "-U", "llmperf", "--auth=trust", "-E", "UTF8")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start")
    try:
        yield f"postgresql+psycopg://llmperf@127.0.0.1:{port}/postgres"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "history.sqlite")
        return
    url = request.getfixturevalue("postgres_url")
    store = HistoryStore(url)  # a clean schema for each test
    store.metadata.drop_all(store.engine)
    store.close()
    yield url


def summary(
    uid: str, started: str, *, tests: int = 2, runs: int = 3, scale: float = 1.0, verdict: str = "PASS"
) -> dict[str, Any]:
    return {
        "run_uid": uid,
        "started": started,
        "shard": None,
        "environment": {"plugin_version": "0.1.0"},
        "tests": [
            {
                "nodeid": f"perf_tests/test_x.py::test_serving[c{t}-w]",
                "case": f"c{t}-w",
                "config": f"c{t}",
                "workload": "w",
                "engine": "sim",
                "engine_version": "llmperf-sim-0.1.0",
                "verdict": verdict,
                "updated": False,
                "hardware": {"kind": "simulated", "profile": "cpu-small"},
                "samples": {"output_throughput": [1000.0 * scale + i for i in range(runs)], "failed": [0.0] * runs},
                "rows": [{"metric": "output_throughput", "baseline": 1001.0}],
            }
            for t in range(tests)
        ],
    }


def test_ingesting_twice_adds_nothing_and_show_lists_the_nights(db: str) -> None:
    store = HistoryStore(db)
    nights = [
        summary("n1", "2026-11-28T01:00:00+00:00"),
        summary("n2", "2026-11-29T01:00:00+00:00"),
        summary("n3", "2026-11-30T01:00:00+00:00", scale=0.8, verdict="FAIL"),
    ]
    assert [ingest_summary(store, s) for s in nights] == [6, 6, 6]
    assert [ingest_summary(store, s) for s in nights] == [0, 0, 0]  # the same reports again
    assert store.count() == 18
    table = show_table(store.runs_of(case_like="c1"), "output_throughput", 10).splitlines()
    rows = [line for line in table if line.startswith("c1-w")]
    assert len(rows) == 3 and "2026-11-30" in rows[2] and "FAIL (not accepted)" in rows[2] and "-20.0%" in rows[2]
    assert "+0.0%" in rows[0] and "PASS" in rows[0]
    assert not [line for line in table if line.startswith("c0-w")]  # -k
    assert len(store.runs_of(since="2026-11-29")) == 12
    store.close()


def _ingest_many(db: str, uid: str, barrier: Any) -> None:
    store = HistoryStore(db)
    barrier.wait()
    for _ in range(2):  # each shard also retries its ingest once
        ingest_summary(store, summary(uid, "2026-12-01T01:00:00+00:00", tests=60))
    store.close()


def test_two_shards_ingesting_at_once_lose_nothing(db: str) -> None:
    HistoryStore(db).close()  # the schema first, as the first night creates it
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    shards = [ctx.Process(target=_ingest_many, args=(db, f"shard{k}", barrier)) for k in (1, 2)]
    for p in shards:
        p.start()
    for p in shards:
        p.join(60)
        assert p.exitcode == 0
    store = HistoryStore(db)
    assert store.count() == 2 * 60 * 3
    store.close()


def test_a_newer_schema_is_refused_naming_the_upgrade(tmp_path: Path) -> None:
    path = str(tmp_path / "h.sqlite")
    store = HistoryStore(path)
    with store.engine.begin() as conn:
        conn.execute(store.meta.update().values(value="99"))
    store.close()
    with pytest.raises(HistoryError, match=r"schema 99 is newer than this pytest-llmperf's \(2\): upgrade it"):
        HistoryStore(path)


def test_a_schema_1_store_is_migrated_in_place_and_keeps_its_nights(db: str) -> None:
    import sqlalchemy as sa

    store = HistoryStore(db)
    ingest_summary(store, summary("old", "2026-11-01T01:00:00+00:00"))
    with store.engine.begin() as conn:  # the store as schema 1 wrote it
        conn.execute(sa.text("ALTER TABLE llmperf_runs DROP COLUMN tolerance"))
        conn.execute(store.meta.update().values(value="1"))
    store.close()
    store = HistoryStore(db)
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(store.meta.c.value)).scalar() == "2"
    night = summary("new", "2026-11-02T01:00:00+00:00")
    night["tests"][0]["rows"][0]["tolerance"] = 0.08
    assert ingest_summary(store, night) == 6
    rows = store.runs_of(case_like="c0")
    assert [r["tolerance"] for r in rows] == [None] * 3 + [{"output_throughput": 0.08}] * 3
    assert rows[0]["metrics"]["output_throughput"] == 1000.0  # the old night is kept
    store.close()


def test_a_summary_without_a_run_uid_is_keyed_by_its_content() -> None:
    old = summary("", "2026-11-01T00:00:00+00:00")
    del old["run_uid"]
    (first, rows), (again, _) = summary_rows(old), summary_rows(dict(old))
    assert first["uid"] == again["uid"] and len(rows) == 6


def test_three_nights_of_a_suite_recorded_by_pytest_and_shown(pytester: pytest.Pytester) -> None:
    """End to end: three runs of a suite with --llmperf-history, the third under a 20% slowdown."""
    pytester.makefile(
        ".toml",
        matrix='[[engines]]\nid = "e"\nengine = "sim"\nmodel = "llmperf-sim"\n'
        'sim = { profile = "deterministic", ttft_ms = 20, itl_ms = 20 }\n\n'
        # a host pause can move one run's TPOT by a few percent: the 20% slowdown is what must show
        "[gate.tolerance]\noutput_throughput = 0.12\ntotal_token_throughput = 0.12\nmean_tpot_ms = 0.12\n\n"
        '[[workloads]]\nid = "w"\nrandom_input_len = 16\nrandom_output_len = 12\nnum_prompts = 8\n',
    )
    pytester.makepyfile(test_perf=PERF_TEST)
    # a relative path: pytest takes the common folder of the paths on its command line as the rootdir
    db = "nightly.sqlite"
    pytester.runpytest("--llmperf-update-baselines", "--llmperf-repeats", "2").assert_outcomes(passed=1)
    second = pytester.runpytest("--llmperf-repeats", "2", "--llmperf-history", db)
    second.assert_outcomes(passed=1)
    assert "llmperf: history: 2 run(s) recorded in nightly.sqlite" in second.stdout.str()
    pytester.runpytest("--llmperf-repeats", "2", "--llmperf-history", db).assert_outcomes(passed=1)
    slow = pytester.runpytest("--llmperf-repeats", "2", "--llmperf-history", db, "--llmperf-sim-slowdown", "1.2")
    slow.assert_outcomes(failed=1)
    shown = subprocess.run(
        [sys.executable, "-m", "pytest_llmperf.cli", "history", "show", "--db", str(pytester.path / db)],
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0, shown.stderr
    rows = [line for line in shown.stdout.splitlines() if line.startswith("e-w")]
    assert len(rows) == 3
    assert "PASS" in rows[0] and "PASS" in rows[1] and "FAIL (not accepted)" in rows[2]
    assert " 7 " in rows[2]  # 2 runs and 5 to confirm the failure: every run is kept
    if importlib.util.find_spec("matplotlib") is not None:
        page = subprocess.run(
            [sys.executable, "-m", "pytest_llmperf.cli", "history", "html", "--db", db, "dashboard"],
            capture_output=True,
            text=True,
            cwd=pytester.path,
        )
        assert page.returncode == 0, page.stderr
        suite_page = (pytester.path / "dashboard" / "suite-test-perf-py.html").read_text()
        assert suite_page.count('<figure class="chart"') == 3 and "e-w" in suite_page
    # the gate's reference from history: the two accepted nights (the failed third one is not accepted)
    by_history = ["--llmperf-repeats", "2", "--llmperf-history", db, "--llmperf-reference", "history:10"]
    fourth = pytester.runpytest(*by_history, "--llmperf-report-dir", "night4")
    fourth.assert_outcomes(passed=1)
    record = json.loads((pytester.path / "night4" / "summary.json").read_text())["tests"][0]
    assert record["reference"] == "history:2", record
    assert any(n.startswith("reference: the last 2 accepted night(s) in history") for n in record["notes"])
    assert "up to 10 reference nights" in fourth.stdout.str()
    slow_again = pytester.runpytest(*by_history, "--llmperf-sim-slowdown", "1.2")
    slow_again.assert_outcomes(failed=1)
    assert "reference: the last 3 accepted night(s) in history" in slow_again.stdout.str()


def test_a_history_reference_needs_the_store_and_a_well_formed_k(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_perf=PERF_TEST)
    alone = pytester.runpytest("--llmperf-reference", "history")
    assert alone.ret == pytest.ExitCode.USAGE_ERROR
    alone.stderr.fnmatch_lines(["*--llmperf-reference history reads past nights*--llmperf-history URL*"])
    bad = pytester.runpytest("--llmperf-reference", "history:1", "--llmperf-history", "h.sqlite")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*'history:K' with K at least 2, e.g. --llmperf-reference history:10*"])


def test_a_store_that_cannot_be_reached_is_said_without_its_password(pytester: pytest.Pytester) -> None:
    pytest.importorskip("psycopg")
    pytester.makefile(
        ".toml",
        matrix='[[engines]]\nid = "e"\nengine = "sim"\nmodel = "llmperf-sim"\n'
        'sim = { profile = "deterministic", ttft_ms = 5, itl_ms = 5 }\n\n'
        '[[workloads]]\nid = "w"\nrandom_input_len = 16\nrandom_output_len = 4\nnum_prompts = 4\n',
    )
    pytester.makepyfile(test_perf=PERF_TEST)
    url = "postgresql+psycopg://nightly:s3cret-pw@127.0.0.1:1/history"  # nothing listens on port 1
    result = pytester.runpytest("--llmperf-update-baselines", "--llmperf-repeats", "1", "--llmperf-history", url)
    result.assert_outcomes(passed=1)  # the night's verdicts stand; the history line says what happened
    out = result.stdout.str()
    assert "llmperf: history: not recorded: history store postgresql+psycopg://" in out
    assert "s3cret-pw" not in out


def test_show_of_a_missing_store_says_so_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "none.sqlite"
    shown = subprocess.run(
        [sys.executable, "-m", "pytest_llmperf.cli", "history", "show", "--db", str(path)],
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 2 and f"no history store at {path}" in shown.stderr
    assert not path.exists()


def test_change_points_find_a_step_and_none_in_noise() -> None:
    pytest.importorskip("ruptures")
    from pytest_llmperf.history.changes import change_points

    rng = __import__("random").Random(3)
    flat = [1000 * (1 + 0.02 * rng.gauss(0, 1)) for _ in range(60)]
    assert change_points(flat) == []
    stepped = flat[:40] + [v * 0.93 for v in flat[40:]]
    (cp,) = change_points(stepped)
    assert abs(cp.index - 40) <= 2 and cp.step == pytest.approx(-0.07, abs=0.02)


def test_history_changes_names_the_step_what_changed_across_it_and_fails_on_a_new_one(tmp_path: Path) -> None:
    pytest.importorskip("ruptures")
    db = str(tmp_path / "h.sqlite")
    store = HistoryStore(db)
    rng = __import__("random").Random(5)
    for i in range(30):
        s = summary(f"n{i:02d}", f"2026-11-{i + 1:02d}T01:00:00+00:00", tests=1, scale=0.9 if i >= 24 else 1.0)
        s["tests"][0]["engine_version"] = "0.14.0" if i >= 24 else "0.13.0"
        for metric, values in s["tests"][0]["samples"].items():
            s["tests"][0]["samples"][metric] = [v * (1 + 0.01 * rng.gauss(0, 1)) for v in values]
        s["tests"][0]["samples"]["mean_tpot_ms"] = [20.0 * (1 + 0.01 * rng.gauss(0, 1)) for _ in range(3)]
        ingest_summary(store, s)
    store.close()

    def changes(*extra: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "pytest_llmperf.cli", "history", "changes", "--db", db, *extra]
        return subprocess.run(cmd, capture_output=True, text=True)

    new = changes()
    assert new.returncode == 1, new.stdout + new.stderr
    line = next(x for x in new.stdout.splitlines() if "output_throughput" in x)
    assert "2026-11-25" in line and "-10.0%" in line and "engine 0.13.0 -> 0.14.0" in line
    assert "REGRESSION (new)" in line
    assert "new change point in the bad direction: c0-w output_throughput -10.0%" in new.stderr
    old = changes("--last", "3")  # the step is 6 nights back: listed, no longer new
    assert old.returncode == 0 and "REGRESSION" in old.stdout and "(new)" not in old.stdout
