"""Per-session plugin state, kept in ``config.stash``: options, the server pool, queued baseline writes."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_llmperf.baseline import Baseline, write_baseline
from pytest_llmperf.config import EngineConfig, Matrix, load_matrix
from pytest_llmperf.engines import ServerProcess, free_port, render_launch
from pytest_llmperf.engines.process import tail
from pytest_llmperf.errors import ServerError

__all__ = ["LlmperfSession", "RunningServer", "ServerPool", "session_key"]


@dataclass(frozen=True)
class RunningServer:
    """What a test sees of its engine server."""

    config: EngineConfig
    base_url: str
    model: str
    command: str
    log_path: Path
    version: str | None
    startup_s: float | None
    process: ServerProcess | None = field(default=None, compare=False, repr=False)  # None for external servers

    def check_alive(self) -> None:
        """Raise :class:`ServerError` with the log tail if the server process has exited."""
        proc = self.process
        if proc is not None and not proc.alive():
            code = proc.proc.returncode if proc.proc is not None else "?"
            raise ServerError(
                f"[{self.config.id}] the server died during the benchmark (exit code {code})",
                config_id=self.config.id,
                log_path=str(self.log_path),
                log_tail=tail(self.log_path),
            )


class ServerPool:
    """At most one server per engine config, started on first use and stopped after its last test.

    A config whose server failed to start is not started again in this session: its remaining
    tests get the same error at once.
    """

    def __init__(self, log_dir: Path, sim_slowdown: float) -> None:
        self.log_dir = log_dir
        self.sim_slowdown = sim_slowdown
        self._servers: dict[str, tuple[ServerProcess, RunningServer]] = {}
        self._failed: dict[str, ServerError] = {}
        self.launches: dict[str, int] = {}

    def acquire(self, cfg: EngineConfig) -> RunningServer:
        if cfg.id in self._failed:
            raise self._failed[cfg.id]
        entry = self._servers.get(cfg.id)
        if entry is not None:
            proc, running = entry
            if proc.alive():
                return running
            del self._servers[cfg.id]
            err = ServerError(
                f"[{cfg.id}] server died while in use (exit code {proc.proc.returncode if proc.proc else '?'})",
                config_id=cfg.id,
                log_path=str(proc.log_path),
                log_tail=tail(proc.log_path),
            )
            proc.stop()
            self._failed[cfg.id] = err
            raise err
        port = free_port()
        spec = render_launch(cfg, port=port, sim_slowdown=self.sim_slowdown)
        base_url = f"http://127.0.0.1:{port}"
        log_path = self.log_dir / f"{cfg.id}.log"
        proc = ServerProcess(
            spec, base_url=base_url, model=cfg.request_model, log_path=log_path, startup_timeout_s=cfg.startup_timeout_s
        )
        self.launches[cfg.id] = self.launches.get(cfg.id, 0) + 1
        try:
            proc.start()
        except ServerError as exc:
            self._failed[cfg.id] = exc
            raise
        running = RunningServer(
            cfg, base_url, cfg.request_model, spec.shell(), log_path, proc.version(), proc.startup_s, proc
        )
        self._servers[cfg.id] = (proc, running)
        return running

    def release(self, config_id: str) -> None:
        entry = self._servers.pop(config_id, None)
        if entry is not None:
            entry[0].stop()

    def close(self) -> None:
        for config_id in list(self._servers):
            self.release(config_id)


@dataclass
class LlmperfSession:
    rootdir: Path
    baseline_dir: Path
    update: str | None  # None, "failing" or "all"
    repeats: int
    default_tolerance: float
    sharegpt: str | None
    pool: ServerPool
    pending: dict[Path, Baseline] = field(default_factory=dict)
    written: list[Path] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    _matrices: dict[Path, Matrix] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def matrix(self, path: Path) -> Matrix:
        path = path.resolve()
        if path not in self._matrices:
            self._matrices[path] = load_matrix(path)
        return self._matrices[path]

    def queue_baseline(self, path: Path, baseline: Baseline) -> None:
        self.pending[path] = baseline

    def flush_baselines(self) -> None:
        """Write every queued baseline, once, at session end (each atomically)."""
        for path, baseline in sorted(self.pending.items()):
            write_baseline(path, baseline)
            self.written.append(path)
        self.pending.clear()

    def relative(self, path: Path) -> str:
        try:
            return os.path.relpath(path, self.rootdir)
        except ValueError:
            return str(path)


session_key = pytest.StashKey[LlmperfSession]()
