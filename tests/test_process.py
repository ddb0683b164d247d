"""The server process owner: readiness, start-up failures with the log tail, and group teardown."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from suite_files import StartSim, pid_alive

from pytest_llmperf.engines import group_members
from pytest_llmperf.errors import ServerStartupError, ServerTimeoutError, UnsupportedConfigError


def test_stop_kills_the_whole_group_children_included(start_sim: StartSim) -> None:
    server = start_sim("--spawn-children", "2")
    pgid = server.pgid
    assert pgid is not None
    listed = re.search(r"child processes \[(.*)\]", server.log_path.read_text())
    assert listed is not None
    children = [int(p) for p in re.findall(r"\d+", listed.group(1))]
    assert len(children) == 2 and all(pid_alive(p) for p in children)
    assert len(group_members(pgid)) >= 3
    server.stop()
    assert group_members(pgid) == []
    assert not any(pid_alive(p) for p in children)
    assert "### llmperf: stopped" in server.log_path.read_text()


def test_stop_escalates_to_sigkill_for_a_server_ignoring_sigterm(tmp_path: Path) -> None:
    from pytest_llmperf.engines import ServerProcess, process
    from pytest_llmperf.engines.launch import LaunchSpec

    script = (
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(60)"
    )
    spec = LaunchSpec("stubborn", ("python3", "-c", script))
    server = ServerProcess(
        spec, base_url="http://127.0.0.1:9", model="m", log_path=tmp_path / "s.log", startup_timeout_s=0.5
    )
    old = process.TERM_GRACE_S
    process.TERM_GRACE_S = 0.5
    try:
        with pytest.raises(ServerTimeoutError):
            server.start()
    finally:
        process.TERM_GRACE_S = old
    assert server.proc is None and group_members(server.pgid or 0) == []


def test_startup_failure_shows_exit_code_and_log_tail(start_sim: StartSim) -> None:
    with pytest.raises(ServerStartupError) as exc:
        start_sim("--fail-at-startup", "ValueError: backend FLASHMLA is not supported", "--fail-exit-code", "7")
    msg = str(exc.value)
    assert "[sim0] unsupported configuration: server exited with code 7 before it became ready" in msg
    assert isinstance(exc.value, UnsupportedConfigError)
    assert exc.value.matched == ("ValueError: backend FLASHMLA is not supported",)
    assert "--- last lines of" in msg and "ValueError: backend FLASHMLA is not supported" in msg
    assert exc.value.config_id == "sim0"


def test_startup_timeout_names_the_config_and_leaves_nothing(tmp_path: Path) -> None:
    from pytest_llmperf.config import EngineConfig
    from pytest_llmperf.engines import ServerProcess, free_port, render_launch

    cfg = EngineConfig(
        id="slow", engine="sim", model="m", extra_args=("--startup-delay", "30", "--spawn-children", "1")
    )
    port = free_port()
    server = ServerProcess(
        render_launch(cfg, port=port),
        base_url=f"http://127.0.0.1:{port}",
        model="m",
        log_path=tmp_path / "slow.log",
        startup_timeout_s=1.5,
    )
    t0 = time.monotonic()
    with pytest.raises(ServerTimeoutError) as exc:
        server.start()
    assert time.monotonic() - t0 < 10
    msg = str(exc.value)
    assert "[slow] server did not become ready within 1.5 s" in msg and "start-up delay of 30.0 s" in msg
    assert server.pgid is not None and group_members(server.pgid) == []


def test_missing_engine_binary_is_a_clear_error(tmp_path: Path) -> None:
    from pytest_llmperf.engines import ServerProcess
    from pytest_llmperf.engines.launch import LaunchSpec

    server = ServerProcess(
        LaunchSpec("ghost", ("no-such-engine-binary",)),
        base_url="http://127.0.0.1:9",
        model="m",
        log_path=tmp_path / "g.log",
        startup_timeout_s=1,
    )
    with pytest.raises(ServerStartupError, match=r"could not launch 'no-such-engine-binary'.*installed"):
        server.start()
