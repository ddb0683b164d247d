"""Never measure the wrong thing: the right server, the right workload, a baseline that can be trusted, a fast
and true failure. One test (or more) per finding of issue 15, with real servers, sockets and processes."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from suite_files import PERF_TEST, stamped_pytest

from pytest_llmperf.config import EngineConfig
from pytest_llmperf.engines import ServerProcess, free_port, render_launch
from pytest_llmperf.engines.classify import classify
from pytest_llmperf.engines.pool import ServerPool
from pytest_llmperf.errors import ServerCrashError

TINY = """
[[engines]]
id = "e"
engine = "sim"
model = "llmperf-sim"
startup_timeout_s = 600
{engine_extra}
sim = {{ profile = "deterministic", ttft_ms = 10, itl_ms = 5 }}

[gate.tolerance]
output_throughput = 0.25
total_token_throughput = 0.25
mean_tpot_ms = 0.25

[[workloads]]
id = "w"
{workload}
num_prompts = 4
seed = 1
"""
RANDOM = "random_input_len = 16\nrandom_output_len = 6"
NODE = "test_perf.py::test_serving[e-w]"
BASELINE = Path("baselines/test_perf/test_serving/e-w.json")


def suite(p: pytest.Pytester, workload: str = RANDOM, engine_extra: str = "") -> Path:
    p.makefile(".toml", matrix=TINY.format(workload=workload, engine_extra=engine_extra))
    p.makepyfile(test_perf=PERF_TEST)
    p.makeini("[pytest]\nllmperf_repeats = 2\n")
    return p.path / BASELINE


def out_of(result: pytest.RunResult) -> str:
    return result.stdout.str() + result.stderr.str()


def has(result: pytest.RunResult, *parts: str) -> None:
    text = out_of(result)
    for part in parts:
        assert part in text, f"{part!r} not in output:\n{text}"


# -- a foreign OpenAI-compatible server ---------------------------------------------------------------------


class Foreign:
    """A tiny OpenAI-compatible server on loopback that counts the generations it is sent."""

    def __init__(self, port: int = 0) -> None:
        posts: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _json(self, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._json({"object": "list", "data": [{"id": "llmperf-sim", "object": "model"}]})

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                posts.append(self.path)
                self._json({"choices": [{"text": "x", "index": 0}], "usage": {"completion_tokens": 1}})

        self.posts = posts
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def foreign() -> Iterator[Foreign]:
    server = Foreign()
    yield server
    server.close()


def test_a_fixed_port_held_by_another_server_errors_fast_and_benchmarks_nothing(
    pytester: pytest.Pytester, foreign: Foreign
) -> None:
    suite(pytester, engine_extra=f"port = {foreign.port}")
    t0 = time.monotonic()
    result = pytester.runpytest("--llmperf-update-baselines")
    assert time.monotonic() - t0 < 15
    result.assert_outcomes(errors=1)
    has(result, f"[e] port {foreign.port} on 127.0.0.1 is already in use before launch", "GET /v1/models answers")
    assert foreign.posts == []  # not a single generation, let alone a benchmark
    assert not (pytester.path / BASELINE).exists()


def test_a_port_taken_between_the_check_and_the_bind_is_never_probed(tmp_path: Path) -> None:
    from pytest_llmperf.errors import ServerPortInUseError  # new in this release: imported here, not above

    port = free_port()
    cfg = EngineConfig(id="late", engine="sim", model="llmperf-sim", extra_args=("--startup-delay", "3"))
    server = ServerProcess(
        render_launch(cfg, port=port),
        base_url=f"http://127.0.0.1:{port}",
        model="llmperf-sim",
        log_path=tmp_path / "late.log",
        startup_timeout_s=30,
    )
    holder: list[Foreign] = []
    timer = threading.Timer(1.0, lambda: holder.append(Foreign(port)))  # binds while the engine sleeps
    timer.start()
    try:
        with pytest.raises(ServerPortInUseError, match=f"port {port} on 127.0.0.1 is held by another process"):
            server.start()
        assert holder and holder[0].posts == []
        assert server.proc is None  # stopped: nothing of it is left
    finally:
        timer.join()
        for h in holder:
            h.close()


def test_a_chosen_port_found_taken_is_retried_on_another(
    tmp_path: Path, foreign: Foreign, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = iter([foreign.port])
    monkeypatch.setattr("pytest_llmperf.engines.pool.free_port", lambda: next(ports, None) or free_port())
    pool = ServerPool(tmp_path)
    try:
        running = pool.acquire(EngineConfig(id="retry", engine="sim", model="llmperf-sim"))
        assert not running.base_url.endswith(f":{foreign.port}")
        assert pool.launches["retry"] == 2
        assert f"port {foreign.port} was taken; retrying on another" in (tmp_path / "retry.log").read_text()
    finally:
        pool.close()
    assert foreign.posts == []


def test_a_bind_failure_is_classified_as_port_in_use_not_a_crash() -> None:
    from pytest_llmperf.errors import ServerPortInUseError

    log = (
        "Traceback (most recent call last):\n"
        '  File "uvicorn/server.py", line 161, in startup\n'
        "OSError: [Errno 98] error while attempting to bind on address ('127.0.0.1', 8000): address already in use\n"
    )
    kind, matched = classify(log)
    assert kind is ServerPortInUseError and "address already in use" in matched[0]
    assert classify("Traceback (most recent call last):\nValueError: boom\n")[0] is ServerCrashError


# -- the match key -------------------------------------------------------------------------------------------


def test_a_changed_workload_is_not_compared_with_the_old_baseline(pytester: pytest.Pytester) -> None:
    suite(pytester)
    pytester.runpytest("--llmperf-update-baselines").assert_outcomes(passed=1)
    for new_len in (20, 12):  # longer prompts looked faster, shorter ones like a regression
        suite(pytester, workload=f"random_input_len = {new_len}\nrandom_output_len = 6")
        result = pytester.runpytest("--llmperf-on-other-hardware=skip")  # other work is never just skipped
        result.assert_outcomes(failed=1)
        has(
            result,
            f"workload random_input_len: baseline 16, now {new_len}",
            f"re-record it: pytest '{NODE}' --llmperf-update-baselines",
        )
        assert "performance regression" not in out_of(result)
    # the advice works: re-recorded, the changed suite passes
    pytester.runpytest(NODE, "--llmperf-update-baselines").assert_outcomes(passed=1)
    pytester.runpytest().assert_outcomes(passed=1)


def test_a_baseline_of_other_hardware_fails_or_with_the_option_skips(pytester: pytest.Pytester) -> None:
    path = suite(pytester)
    pytester.runpytest("--llmperf-update-baselines").assert_outcomes(passed=1)
    data = json.loads(path.read_text())
    data["hardware"]["profile"] = "h200-vllm"
    path.write_text(json.dumps(data))
    failed = pytester.runpytest()
    failed.assert_outcomes(failed=1)
    has(failed, "hardware profile: baseline 'h200-vllm', now 'deterministic'", "re-record it: pytest")
    skipped = pytester.runpytest("--llmperf-on-other-hardware=skip")
    skipped.assert_outcomes(skipped=1)
    has(skipped, "1 x [e-w] baseline", "(--llmperf-on-other-hardware=skip)")


def test_another_prompt_file_is_not_compared_and_its_identity_is_recorded(pytester: pytest.Pytester) -> None:
    convs = [
        {"conversations": [{"from": "human", "value": "word " * (8 + i)}, {"from": "gpt", "value": "ok " * 8}]}
        for i in range(6)
    ]
    data = pytester.path / "prompts.json"
    data.write_text(json.dumps(convs))
    path = suite(pytester, workload='dataset = "sharegpt"\ndataset_path = "prompts.json"')
    pytester.runpytest("--llmperf-update-baselines").assert_outcomes(passed=1)
    recorded = json.loads(path.read_text())["dataset"]
    assert recorded["name"] == "prompts.json" and len(recorded["sha256"]) == 64
    convs[0]["conversations"][0]["value"] = "other " * 30
    data.write_text(json.dumps(convs))
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    has(result, f"dataset: baseline prompts.json (sha256 {recorded['sha256'][:12]}), now prompts.json (sha256")


def test_the_simulated_slowdown_is_recorded_and_keyed(pytester: pytest.Pytester) -> None:
    path = suite(pytester)
    pytester.runpytest("--llmperf-update-baselines", "--llmperf-sim-slowdown", "1.3").assert_outcomes(passed=1)
    engine = json.loads(path.read_text())["engine"]
    assert engine["sim_slowdown"] == 1.3 and "--slowdown 1.3" in engine["command"]
    plain = pytester.runpytest()  # a baseline accepted under a slowdown never passes a normal run silently
    plain.assert_outcomes(failed=1)
    has(plain, "simulated slowdown: baseline x1.3, now x1")
    pytester.runpytest("--llmperf-update-baselines").assert_outcomes(passed=1)
    slow = pytester.runpytest("--llmperf-sim-slowdown", "2")  # the one allowed difference: proving the gate
    slow.assert_outcomes(failed=1)
    has(slow, "performance regression", "note: simulated slowdown x2 injected (--llmperf-sim-slowdown")


# -- broken baselines and the advice given ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["metrics"]["output_throughput"].__setitem__(0, float("nan")), "holds a non-finite sample (nan)"),
        (lambda d: d["tolerance"].__setitem__("output_throughput", 5), "must be a fraction in (0, 1)"),
        (lambda d: d["metrics"].__setitem__("mean_tpot_ms", []), "metric 'mean_tpot_ms' has no samples"),
        (lambda d: d["metrics"].pop("output_throughput"), "has no samples of gated metric(s) output_throughput"),
        (lambda d: d.__setitem__("schema_version", 3), "written by a newer pytest-llmperf"),
    ],
    ids=["nan", "tolerance-500%", "empty-list", "missing-gated-metric", "newer-schema"],
)
def test_a_broken_baseline_fails_naming_file_and_field_and_the_advice_works(
    pytester: pytest.Pytester, edit: object, message: str
) -> None:
    path = suite(pytester)
    pytester.runpytest("--llmperf-update-baselines").assert_outcomes(passed=1)
    data = json.loads(path.read_text())
    edit(data)  # type: ignore[operator]
    path.write_text(json.dumps(data))
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    has(result, str(BASELINE), message, f"pytest '{NODE}' --llmperf-update-baselines")
    assert "does not exist" not in out_of(result)
    fixed = pytester.runpytest(NODE, "--llmperf-update-baselines")  # exactly what the message says to run
    fixed.assert_outcomes(passed=1)
    has(fixed, f"llmperf: wrote baseline {BASELINE}")
    assert json.loads(path.read_text())["schema_version"] == 2
    pytester.runpytest().assert_outcomes(passed=1)


def test_a_schema_1_baseline_is_read_by_migration(pytester: pytest.Pytester) -> None:
    path = suite(pytester)
    pytester.runpytest("--llmperf-update-baselines").assert_outcomes(passed=1)
    data = json.loads(path.read_text())
    data["schema_version"] = 1
    del data["dataset"]
    path.write_text(json.dumps(data))
    pytester.runpytest().assert_outcomes(passed=1)


# -- failing fast, and saying why ------------------------------------------------------------------------------


def test_an_engine_answering_500_to_every_generation_fails_the_start_fast_showing_the_answer(
    pytester: pytest.Pytester,
) -> None:
    suite(pytester, engine_extra='extra_args = ["--error-rate", "1.0"]')
    t0 = time.monotonic()
    result = pytester.runpytest()
    assert time.monotonic() - t0 < 30
    result.assert_outcomes(errors=1)
    has(result, "the server answers every readiness probe with an error (5 in a row)", "HTTP 500")
    has(result, "simulated internal server error")


STALL_MATRIX = """
[[engines]]
id = "stalls"
engine = "sim"
model = "llmperf-sim"
extra_args = ["--stall-after", "3"]
sim = {{ profile = "deterministic", ttft_ms = 10, itl_ms = 10 }}

[[workloads]]
id = "w"
random_input_len = 8
random_output_len = 20
num_prompts = 8
max_concurrency = 4
"""


def test_a_stalled_engine_gets_its_verdict_within_60_s_with_progress_every_10_s(pytester: pytest.Pytester) -> None:
    """Default stall settings and repeats; the verdict comes once the server stall timeout (30 s) fires, and no
    further repeat is run against the stalled engine."""
    pytester.makefile(".toml", matrix=STALL_MATRIX.format())
    pytester.makepyfile(test_perf=PERF_TEST)
    stamped = stamped_pytest(pytester.path, "--llmperf-update-baselines")
    text = "\n".join(line for _, line in stamped)
    progress = [t for t, line in stamped if "[stalls-w run 1]" in line]
    verdict = next(t for t, line in stamped if "FAILURES" in line)
    assert verdict < 60, text
    assert len(progress) >= 3, text
    gaps = [b - a for a, b in zip(progress, [*progress[1:], verdict], strict=True)]
    assert max(gaps) <= 10, f"{gaps}\n{text}"
    assert "it has stalled (server stall timeout)" in text and "no further repeats were run" in text
    assert "[stalls-w run 2]" not in text


# -- nothing leaks, nothing is lost -----------------------------------------------------------------------------


def test_the_simulated_engine_reaps_its_children_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest_llmperf.sim", "serve", "m", "--port", str(port), "--spawn-children", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = ""
        while "child processes" not in line:
            line = proc.stdout.readline()
            assert line, "the simulator exited"
        children = [int(p) for p in re.findall(r"\d+", line.split("[", 1)[1])]
        proc.terminate()  # the engine alone, not its process group
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    from suite_files import pid_alive

    assert not any(pid_alive(c) for c in children)


def test_each_refreshed_baseline_is_written_when_its_test_ends(pytester: pytest.Pytester) -> None:
    """A session killed (SIGKILL) after the first test keeps that test's refreshed baseline, with no temporary
    file beside it."""
    path = suite(pytester)
    killer = "\n\ndef test_zz_killed():\n    import os, signal\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    pytester.makepyfile(test_perf=PERF_TEST + killer)
    result = pytester.runpytest("--llmperf-update-baselines")
    assert result.ret != 0  # killed
    assert path.exists() and json.loads(path.read_text())["case"] == "e-w"
    assert [p.name for p in path.parent.iterdir()] == ["e-w.json"]


def test_a_refresh_keeps_the_file_mode_and_a_new_file_gets_the_umask(pytester: pytest.Pytester) -> None:
    path = suite(pytester)
    pytester.runpytest("--llmperf-update-baselines").assert_outcomes(passed=1)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    path.chmod(0o664)
    pytester.runpytest("--llmperf-update-baselines=all").assert_outcomes(passed=1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o664


def test_a_writer_killed_mid_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "b.json"
    code = (
        "import sys\nfrom pathlib import Path\nfrom pytest_llmperf.gate.baseline import write_text_atomic\n"
        "text = 'x' * (8 << 20)\nprint('go', flush=True)\n"
        f"while True: write_text_atomic(Path({str(target)!r}), text)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "go\n"
    time.sleep(1.0)
    proc.kill()
    proc.wait()
    from pytest_llmperf.gate.baseline import write_text_atomic

    write_text_atomic(target, "{}")  # a later write into the folder sweeps what a dead writer left, if anything
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json"]


def test_two_sessions_refreshing_one_folder_the_second_is_refused(pytester: pytest.Pytester) -> None:
    import fcntl

    suite(pytester)
    folder = pytester.path / "baselines"
    folder.mkdir()
    fd = os.open(folder, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a refreshing session holds
    try:
        result = pytester.runpytest("--llmperf-update-baselines")
    finally:
        os.close(fd)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    has(result, f"another pytest session is refreshing baselines in {folder}", f"(pid {os.getpid()})")
    pytester.runpytest("--llmperf-update-baselines").assert_outcomes(passed=1)  # once released


def test_under_xdist_the_controller_names_every_baseline_written(pytester: pytest.Pytester) -> None:
    suite(pytester)
    stale = Path(os.environ.get("TMPDIR", "/tmp")) / "llmperf-xdist-groups-999999999-1.json"
    stale.write_text("{}")  # a killed controller's map: removed by the next xdist session
    result = pytester.runpytest("-n", "2", "--llmperf-update-baselines")
    result.assert_outcomes(passed=1)
    has(result, f"llmperf: wrote baseline {BASELINE}")
    assert not stale.exists()


def test_credentials_in_urls_and_secret_variables_are_written_nowhere(
    pytester: pytest.Pytester, shared_sim: ServerProcess
) -> None:
    # the simulator, like vLLM, prints arguments it was given: "ignoring flags it does not model: --api-key ..."
    suite(
        pytester,
        engine_extra='env = { HF_TOKEN = "hf_SECRETVALUE", TOKENIZERS_PARALLELISM = "false" }\n'
        'extra_args = ["--api-key", "sk-SECRETKEY"]',
    )
    url = shared_sim.base_url.replace("http://", "http://user:SECRETTOKEN@")
    external = pytester.runpytest(
        "--llmperf-base-url", url, "--llmperf-report-dir", "report", "--llmperf-update-baselines"
    )
    external.assert_outcomes(passed=1)
    launched = pytester.runpytest(
        "--llmperf-report-dir", "report2", "--llmperf-log-dir", "logs", "--llmperf-update-baselines=all"
    )
    launched.assert_outcomes(passed=1)
    inputs = {"matrix.toml", "tox.ini"}
    engine_output = pytester.path / "logs"  # the engine's own output, as its terminal would show it
    assert "sk-SECRETKEY" in (engine_output / "e.log").read_text()
    written = [
        p
        for p in pytester.path.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and p.name not in inputs and engine_output not in p.parents
    ]
    assert (pytester.path / "report2" / "logs" / "e.log").is_file()
    assert any(p.name == "summary.json" for p in written)
    for p in written:
        text = p.read_text(errors="replace")
        assert "SECRETTOKEN" not in text and "hf_SECRETVALUE" not in text and "sk-SECRETKEY" not in text, p
    assert "HF_TOKEN='***'" in (pytester.path / BASELINE).read_text()
    assert "TOKENIZERS_PARALLELISM=false" in (pytester.path / BASELINE).read_text()


def test_an_external_server_that_is_down_fails_each_config_fast(pytester: pytest.Pytester) -> None:
    pytester.makefile(
        ".toml",
        matrix=TINY.format(workload=RANDOM, engine_extra="")
        + '\n[[engines]]\nid = "f"\nengine = "sim"\nmodel = "llmperf-sim"\n',
    )
    pytester.makepyfile(test_perf=PERF_TEST)
    t0 = time.monotonic()
    result = pytester.runpytest("--llmperf-base-url", f"http://127.0.0.1:{free_port()}")
    assert time.monotonic() - t0 < 30
    result.assert_outcomes(errors=2)
    has(result, "found by an earlier test of this session")


def test_the_log_tail_after_a_death_shows_this_launch_only(pytester: pytest.Pytester) -> None:
    suite(pytester, engine_extra='extra_args = ["--crash-after", "5"]')  # 1 readiness probe, 2 warm-ups
    logs = pytester.path / "logs"
    logs.mkdir()
    (logs / "e.log").write_text("### llmperf: launching an earlier session\nLINE OF AN EARLIER SESSION\n")
    result = pytester.runpytest("--llmperf-log-dir", "logs")
    result.assert_outcomes(failed=1)
    has(result, "the server died during the benchmark", "crashing on request 6")
    assert "LINE OF AN EARLIER SESSION" not in out_of(result)


# -- tools: prune, compare, bench serve -------------------------------------------------------------------------


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_llmperf.cli", *args], cwd=cwd, capture_output=True, text=True)


def test_prune_with_default_arguments_removes_nothing_and_says_why(pytester: pytest.Pytester) -> None:
    """The repository's layout: ini testpaths name the plugin's own tests, which hold no perf test."""
    path = suite(pytester)
    pytester.runpytest("--llmperf-update-baselines").assert_outcomes(passed=1)
    pytester.makeini("[pytest]\ntestpaths = tests\nllmperf_repeats = 2\n")
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_unit.py").write_text("def test_x():\n    pass\n")
    done = cli("baselines", "prune", "--yes", cwd=pytester.path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "holds no perf test" in done.stderr and "nothing removed" in done.stderr
    assert path.exists()


def test_prune_lists_by_default_removes_with_yes_and_leaves_uncollected_modules_alone(
    pytester: pytest.Pytester,
) -> None:
    path = suite(pytester)
    pytester.runpytest("--llmperf-update-baselines").assert_outcomes(passed=1)
    stale = path.parent / "gone-w.json"
    stale.write_text(path.read_text())
    other = pytester.path / "baselines" / "other_module" / "test_serving" / "x-w.json"
    other.parent.mkdir(parents=True)
    other.write_text(path.read_text())
    listed = cli("baselines", "prune", "test_perf.py", cwd=pytester.path)
    assert listed.returncode == 0 and f"would remove {Path('baselines/test_perf/test_serving/gone-w.json')}" in (
        listed.stdout
    )
    assert "re-run with --yes" in listed.stdout and "1 of test modules not collected" in listed.stdout
    assert stale.exists()
    removed = cli("baselines", "prune", "test_perf.py", "--yes", cwd=pytester.path)
    assert removed.returncode == 0 and "1 stale baseline(s) of 1 expected" in removed.stdout
    assert not stale.exists() and path.exists() and other.exists()


def test_compare_decides_as_the_gate_does_on_report_folders(pytester: pytest.Pytester) -> None:
    suite(pytester)
    pytester.runpytest("--llmperf-update-baselines", "--llmperf-report-dir", "old").assert_outcomes(passed=1)
    pytester.runpytest("--llmperf-report-dir", "same").assert_outcomes(passed=1)
    pytester.runpytest("--llmperf-sim-slowdown", "1.5", "--llmperf-report-dir", "slow").assert_outcomes(failed=1)
    same = cli("compare", "old", "same", cwd=pytester.path)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "e-w" in same.stdout and "2/2" in same.stdout and "summary" not in same.stdout  # runs pooled: n = 2
    slow = cli("compare", "old", "slow", cwd=pytester.path)
    assert slow.returncode == 1 and "1 case(s) compared, 1 regressed: e-w" in slow.stdout
    gone = cli("compare", "old", "nowhere", cwd=pytester.path)
    assert gone.returncode == 2 and "nowhere: no such file or folder" in gone.stderr
    assert "default 0.06, as the gate" in cli("compare", "--help", cwd=pytester.path).stdout


def test_bench_serve_exits_nonzero_when_no_request_succeeded(shared_sim: ServerProcess, tmp_path: Path) -> None:
    args = ["bench", "serve", "--base-url", shared_sim.base_url, "--num-prompts", "4", "--random-input-len", "8"]
    bad = cli(*args, "--model", "no-such-model", "--tokenizer", "sim", cwd=tmp_path)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "no request succeeded" in bad.stderr and "client CPU" not in bad.stdout
    down = cli("bench", "serve", "--base-url", f"http://127.0.0.1:{free_port()}", cwd=tmp_path)
    assert down.returncode == 1 and "cannot reach a server at" in down.stderr


def test_bench_serve_dataset_hints_name_its_own_flags(shared_sim: ServerProcess, tmp_path: Path) -> None:
    base = ["bench", "serve", "--base-url", shared_sim.base_url, "--model", "llmperf-sim", "--tokenizer", "sim"]
    base += ["--dataset-name", "sharegpt"]
    missing = cli(*base, "--dataset-path", "nope.json", cwd=tmp_path)
    assert missing.returncode == 1 and "check --dataset-path" in missing.stderr
    assert "--llmperf-sharegpt" not in missing.stderr
    obj = tmp_path / "obj.json"
    obj.write_text('{"conversations": []}')
    wrong = cli(*base, "--dataset-path", str(obj), cwd=tmp_path)
    assert wrong.returncode == 1 and "holds a JSON dict; a ShareGPT file is a list of conversations" in wrong.stderr
