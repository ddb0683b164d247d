"""The server pool: at most one server per engine config, launched on first use, stopped after its
last test; or an already running server (external-endpoint mode)."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from pytest_llmperf.config import EngineConfig
from pytest_llmperf.engines.container import find_runtime, owner_label
from pytest_llmperf.engines.launch import LaunchSpec, container_for, containerize, render_launch, simulate_launch
from pytest_llmperf.engines.process import ServerProcess, free_port
from pytest_llmperf.errors import ServerError, ServerPortInUseError, ServerStartupError, ServerTimeoutError
from pytest_llmperf.hardware import Gpu, gpu_memory_used_mib, gpu_slice
from pytest_llmperf.redact import redact_text, secret_values

__all__ = ["RunningServer", "ServerPool", "engine_version"]

PORT_RETRIES = 3
EXTERNAL_WAIT_S = 120.0  # an external server that answers, but not yet with a generation
EXTERNAL_REFUSED_S = 10.0  # an external server that refuses connections this long is down


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
            raise proc.error(ServerError, f"the server died during the benchmark (exit code {code})")


def engine_version(base_url: str) -> str | None:
    """The engine version a running server reports: vLLM's ``/version``, SGLang's ``/get_server_info``."""
    with httpx.Client(timeout=5.0, trust_env=False) as client:
        for path in ("/version", "/get_server_info"):
            try:
                r = client.get(base_url + path)
                if r.status_code == 200:
                    version = r.json().get("version")
                    if version:
                        return str(version)
            except (httpx.HTTPError, ValueError, AttributeError):
                continue
    return None


class ServerPool:
    """At most one server per engine config. A config whose server failed to start is not started
    again in the session: its remaining tests get the same error at once."""

    def __init__(
        self,
        log_dir: Path,
        sim_slowdown: float = 1.0,
        *,
        simulate: bool = False,
        endpoints: dict[str, str] | None = None,
        gpus: list[Gpu] | None = None,
        cwd: Path | None = None,
        images: dict[str, str] | None = None,
        pythons: dict[str, str] | None = None,
        container_runtime: str | None = None,
        session: str = "",
    ) -> None:
        self.images = images or {}  # --llmperf-engine-image: an engine's image for this run (upgrade candidates)
        self.pythons = pythons or {}  # --llmperf-engine-python
        self.container_runtime = container_runtime  # --llmperf-container-runtime (default: podman, else docker)
        self.session = session or uuid.uuid4().hex
        self.log_dir = log_dir
        self.cwd = cwd
        self.sim_slowdown = sim_slowdown
        self.simulate = simulate
        self.endpoints = endpoints or {}
        self.gpus = gpus
        self._servers: dict[str, tuple[ServerProcess | None, RunningServer]] = {}
        self._failed: dict[str, ServerError] = {}
        self._down_urls: dict[str, str] = {}  # external URLs found down: later configs fail at once
        self.launches: dict[str, int] = {}
        self.log_paths: set[Path] = set()
        self.secrets: set[str] = set()  # the launches' secret values: masked in the logs' copies

    def effective(self, cfg: EngineConfig) -> EngineConfig:
        """``cfg`` with this run's engine environment overrides (--llmperf-engine-image / -python)."""
        if cfg.engine in self.images:
            return cfg.model_copy(update={"image": self.images[cfg.engine], "python": None})
        if cfg.engine in self.pythons:
            return cfg.model_copy(update={"python": self.pythons[cfg.engine], "image": None})
        return cfg

    def acquire(self, cfg: EngineConfig) -> RunningServer:
        cfg = self.effective(cfg)
        if cfg.id in self._failed:
            raise self._failed[cfg.id]
        entry = self._servers.get(cfg.id)
        if entry is not None:
            proc, running = entry
            if proc is None or proc.alive():
                return running
            del self._servers[cfg.id]
            err = proc.error(
                ServerError, f"server died while in use (exit code {proc.proc.returncode if proc.proc else '?'})"
            )
            proc.stop()
            self._failed[cfg.id] = err
            raise err
        try:
            running = self._external(cfg) if self._endpoint(cfg) else self._launch(cfg)
        except ServerError as exc:
            self._failed[cfg.id] = exc
            raise
        self._servers[cfg.id] = (running.process, running)
        return running

    def _endpoint(self, cfg: EngineConfig) -> str | None:
        return self.endpoints.get(cfg.id) or self.endpoints.get("*")

    def _external(self, cfg: EngineConfig) -> RunningServer:
        url = str(self._endpoint(cfg)).rstrip("/")
        shown = redact_text(url)
        if url in self._down_urls:
            raise ServerTimeoutError(
                f"[{cfg.id}] the external server at {shown} is down ({self._down_urls[url]}, found by an earlier "
                "test of this session). Start it, or check --llmperf-base-url / --llmperf-endpoints.",
                config_id=cfg.id,
            )
        t0 = time.monotonic()
        deadline = t0 + min(cfg.startup_timeout_s, EXTERNAL_WAIT_S)
        body = {"model": cfg.request_model, "prompt": "ready", "max_tokens": 1}
        last = ""
        with httpx.Client(timeout=30.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                try:
                    r = client.post(url + "/v1/completions", json=body)
                    if r.status_code == 200:
                        return RunningServer(
                            cfg,
                            url,
                            cfg.request_model,
                            f"external: {shown}",
                            Path(os.devnull),
                            engine_version(url),
                            None,
                            None,
                        )
                    last = f"HTTP {r.status_code}: {r.text[:300]}"
                    if r.status_code in (400, 404, 422):
                        break
                except httpx.ConnectError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                    if time.monotonic() - t0 > EXTERNAL_REFUSED_S:  # nothing listens: it is down, not loading
                        self._down_urls[url] = last
                        break
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                time.sleep(1.0)
        raise ServerTimeoutError(
            f"[{cfg.id}] the external server at {shown} did not complete a one-token generation for model "
            f"{cfg.request_model!r} ({last}). Check the endpoint mapping (--llmperf-endpoints) and the model name.",
            config_id=cfg.id,
        )

    def _spec(self, cfg: EngineConfig, port: int) -> LaunchSpec:
        if self.simulate:
            return simulate_launch(cfg, port=port, sim_slowdown=self.sim_slowdown)
        spec = render_launch(cfg, port=port, sim_slowdown=self.sim_slowdown)
        worker = os.environ.get("PYTEST_XDIST_WORKER")
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        if cfg.engine != "sim" and "CUDA_VISIBLE_DEVICES" not in spec.env:
            try:
                indices = gpu_slice(worker, workers, cfg.gpus_needed, self.gpus)
            except ValueError as exc:
                raise ServerStartupError(f"[{cfg.id}] {exc}", config_id=cfg.id) from None
            if indices is not None:
                spec = LaunchSpec(
                    spec.config_id, spec.argv, {**spec.env, "CUDA_VISIBLE_DEVICES": ",".join(map(str, indices))}
                )
        if cfg.image is not None:
            runtime = find_runtime(self.container_runtime)
            if runtime is None:
                wanted = self.container_runtime or "podman or docker"
                raise ServerStartupError(
                    f"[{cfg.id}] runs in the image {cfg.image}, but no container runtime ({wanted}) is on PATH: "
                    "install Podman or Docker, or name one with --llmperf-container-runtime",
                    config_id=cfg.id,
                )
            cwd = str(self.cwd) if self.cwd is not None else None
            container = container_for(cfg, spec, runtime=runtime, session=self.session, owner=owner_label(), cwd=cwd)
            spec = containerize(spec, container)
        return spec

    def _launch(self, cfg: EngineConfig) -> RunningServer:
        log_path = self.log_dir / f"{cfg.id}.log"
        for attempt in range(1, PORT_RETRIES + 1):
            port = cfg.port if (cfg.port is not None and not self.simulate) else free_port()
            spec = self._spec(cfg, port)
            visible = spec.env.get("CUDA_VISIBLE_DEVICES")
            indices = [int(i) for i in visible.split(",")] if visible else None
            watch_gpu = self.gpus is not None and not self.simulate and cfg.engine != "sim"
            base_url = f"http://127.0.0.1:{port}"
            proc = ServerProcess(
                spec,
                base_url=base_url,
                model=cfg.request_model,
                log_path=log_path,
                startup_timeout_s=cfg.startup_timeout_s,
                gpu_indices=indices,
                gpu_baseline_mib=gpu_memory_used_mib(indices) if watch_gpu else None,
                cwd=self.cwd,
                fresh_log=cfg.id not in self.launches,  # a log per session: earlier sessions' launches are gone
            )
            self.launches[cfg.id] = self.launches.get(cfg.id, 0) + 1
            self.log_paths.add(log_path)
            self.secrets |= secret_values(spec.argv, {**os.environ, **spec.env})
            try:
                proc.start()
            except ServerPortInUseError:
                # a port the plugin chose was taken between the choice and the bind: choose again; a port
                # the matrix fixes is the user's to free
                if attempt < PORT_RETRIES and (cfg.port is None or self.simulate):
                    with open(log_path, "ab") as f:
                        f.write(f"### llmperf: port {port} was taken; retrying on another\n".encode())
                    continue
                raise
            return RunningServer(
                cfg, base_url, cfg.request_model, spec.shell(), log_path, engine_version(base_url), proc.startup_s, proc
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def release(self, config_id: str) -> None:
        entry = self._servers.pop(config_id, None)
        if entry is not None and entry[0] is not None:
            entry[0].stop()

    def close(self) -> None:
        for config_id in list(self._servers):
            self.release(config_id)
