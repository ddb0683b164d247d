"""Shared fixtures of the plugin's own tests: real simulated-engine servers on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from suite_files import StartSim

from pytest_llmperf.config import EngineConfig, SimOptions
from pytest_llmperf.engines import LaunchSpec, ServerProcess, free_port, render_launch

# pytester for the plugin's own tests only (an initial conftest of `pytest tests` may load plugins): the suites
# under perf_tests/ and their --help stay free of --runpytest and --lsof
pytest_plugins = ("pytester",)


def pytest_configure(config: pytest.Config) -> None:
    # the pytester runs are real subprocesses: what a user's `pytest` invocation is
    if config.getoption("runpytest") == "inprocess":
        config.option.runpytest = "subprocess"


@pytest.fixture
def start_sim(tmp_path: Path) -> Iterator[StartSim]:
    """Start a simulated engine (a real subprocess in its own group); all are stopped at teardown."""
    started: list[ServerProcess] = []

    def start(
        *extra_args: str,
        profile: str = "cpu-small",
        startup_timeout_s: float = 30.0,
        served_model_name: str | None = None,
        pin_cpu: int | None = None,
        **sim: object,
    ) -> ServerProcess:
        cfg = EngineConfig(
            id=f"sim{len(started)}",
            engine="sim",
            model="llmperf-sim",
            served_model_name=served_model_name,
            extra_args=extra_args,
            startup_timeout_s=startup_timeout_s,
            sim=SimOptions(profile=profile, **sim),
        )
        port = free_port()
        spec = render_launch(cfg, port=port)
        if pin_cpu is not None:
            spec = LaunchSpec(spec.config_id, ("taskset", "-c", str(pin_cpu), *spec.argv), spec.env)
        server = ServerProcess(
            spec,
            base_url=f"http://127.0.0.1:{port}",
            model=cfg.request_model,
            log_path=tmp_path / f"{cfg.id}.log",
            startup_timeout_s=startup_timeout_s,
        )
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def shared_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One cpu-small simulated engine shared by a module's HTTP tests."""
    cfg = EngineConfig(id="shared", engine="sim", model="llmperf-sim", max_model_len=4096)
    port = free_port()
    server = ServerProcess(
        render_launch(cfg, port=port),
        base_url=f"http://127.0.0.1:{port}",
        model=cfg.model,
        log_path=tmp_path_factory.mktemp("sim") / "shared.log",
        startup_timeout_s=30,
    )
    server.start()
    yield server
    server.stop()
