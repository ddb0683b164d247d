"""The server process owner: start an engine in its own process group, wait until it can generate,
and tear the whole group down, also on Ctrl-C, SIGTERM and interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from pytest_llmperf.engines.classify import classify, read_log
from pytest_llmperf.engines.container import descendants, image_present, main_pid, remove_dead_sessions
from pytest_llmperf.engines.container import stop as container_stop
from pytest_llmperf.engines.launch import LaunchSpec
from pytest_llmperf.engines.ports import describe_holder, port_owner, port_taken
from pytest_llmperf.engines.procfs import live_processes
from pytest_llmperf.engines.watchdog import Watchdog, start_watchdog
from pytest_llmperf.errors import (
    ImageMissingError,
    ServerError,
    ServerPortInUseError,
    ServerStartupError,
    ServerTimeoutError,
)
from pytest_llmperf.hardware import wait_for_gpu_memory

__all__ = ["ServerProcess", "free_port", "group_members", "stop_all_servers"]

_LIVE: set[ServerProcess] = set()
_LOCK = threading.Lock()
TERM_GRACE_S = 15.0
KILL_WAIT_S = 10.0
LOG_TAIL_LINES = 40
WARMUP_REQUESTS = 2
WARMUP_TIMEOUT_S = 60.0
READY_ERROR_REPEATS = 5  # the same HTTP 5xx answer this many times in a row ends the start-up wait
WATCHDOG_GRACE_S = 3.0


_CLEANED: set[str] = set()


def remove_dead_sessions_once(runtime: str) -> None:
    """At a session's first container: remove the containers that dead sessions left (SIGKILL, a lost node)."""
    if runtime not in _CLEANED:
        _CLEANED.add(runtime)
        remove_dead_sessions(runtime)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def group_members(pgid: int) -> list[int]:
    """PIDs of live (non-zombie) processes in process group ``pgid``, read from /proc."""
    return [proc.pid for proc in live_processes() if proc.pgid == pgid]


def _set_parent_death_signal() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def tail(path: Path, lines: int = LOG_TAIL_LINES, offset: int = 0) -> str:
    """The last ``lines`` of the log from ``offset`` on (where this launch began: earlier launches of the
    config, in this session or an earlier one, are not shown)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(offset, size - 64 * 1024))
            data = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


class ServerProcess:
    """One engine server. ``start()`` returns once it answers a one-token generation."""

    def __init__(
        self,
        spec: LaunchSpec,
        *,
        base_url: str,
        model: str,
        log_path: Path,
        startup_timeout_s: float,
        env: dict[str, str] | None = None,
        gpu_indices: list[int] | None = None,
        gpu_baseline_mib: int | None = None,
        cwd: Path | None = None,
        fresh_log: bool = False,
    ) -> None:
        self.spec = spec
        self.base_url = base_url
        self.model = model
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.pgid: int | None = None
        self.startup_s: float | None = None
        self.gpu_indices = gpu_indices
        self.gpu_baseline_mib = gpu_baseline_mib  # GPU memory in use before launch, when nvidia-smi exists
        self.cwd = cwd  # relative paths in a config (a local model) are relative to the rootdir
        self.log_offset = 0
        self.fresh_log = fresh_log  # the session's first launch of its config: the log starts empty
        url = urlsplit(base_url)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self._watchdog: Watchdog | None = None
        self._last_answer = ""  # the last HTTP answer seen while waiting for readiness
        self._repeats = 0

    @property
    def config_id(self) -> str:
        return self.spec.config_id

    def log_tail(self) -> str:
        return tail(self.log_path, offset=self.log_offset)

    def error(self, kind: type[ServerError], message: str, matched: tuple[str, ...] = ()) -> ServerError:
        """``kind`` for this server, carrying this launch's log tail (and the lines that identify the failure)."""
        return kind(
            f"[{self.config_id}] {message}",
            config_id=self.config_id,
            log_path=str(self.log_path),
            log_tail=self.log_tail(),
            matched=matched,
            log_offset=self.log_offset,
        )

    def _port_in_use(self, message: str) -> ServerError:
        return self.error(
            ServerPortInUseError,
            f"port {self.port} on {self.host} {message} ({describe_holder(self.host, self.port)}). "
            "Nothing was benchmarked there. Stop that server, or leave 'port' unset in the matrix so that a "
            "free port is chosen.",
        )

    def start(self, *, should_stop: Callable[[], bool] | None = None) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if port_taken(self.host, self.port):
            raise self._port_in_use("is already in use before launch")
        container = self.spec.container
        if container is not None:
            remove_dead_sessions_once(container.runtime)
            if not image_present(container.runtime, container.image):
                raise ImageMissingError(
                    f"[{self.config_id}] image {container.image} is not present on this host ({container.kind}); "
                    f"nothing is pulled implicitly. Pull it first: {container.kind} pull {container.image}",
                    config_id=self.config_id,
                )
        env = dict(os.environ if self.env is None else self.env)
        env.update(self.spec.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        if self.fresh_log:
            self.log_path.write_bytes(b"")  # emptied, then opened for appending: the engine's writes and ours
        with open(self.log_path, "ab") as log:  # (pid, stopped) must all append, never overwrite each other
            self.log_offset = log.tell()
            log.write(f"### llmperf: launching {self.spec.shell()}\n".encode())
            log.flush()
            try:
                self.proc = subprocess.Popen(
                    self.spec.argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    cwd=self.cwd,
                    start_new_session=True,
                    preexec_fn=_set_parent_death_signal,
                )
            except OSError as exc:
                raise ServerStartupError(
                    f"[{self.config_id}] could not launch {self.spec.argv[0]!r}: {exc}. "
                    "Is the engine installed in this environment?",
                    config_id=self.config_id,
                ) from None
        self.pgid = self.proc.pid
        with _LOCK:
            _LIVE.add(self)
        self._start_watchdog()
        with open(self.log_path, "ab") as log:
            log.write(f"### llmperf: server pid {self.proc.pid}, process group {self.pgid}\n".encode())
        t0 = time.monotonic()
        try:
            self._wait_ready(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        self._warm_up()

    def _start_watchdog(self) -> None:
        assert self.pgid is not None
        c = self.spec.container
        cleanup = [c.runtime, "rm", "-f", c.name] if c is not None else []
        self._watchdog = start_watchdog(self.pgid, WATCHDOG_GRACE_S, cleanup)

    def _stop_watchdog(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.disarm()

    def _warm_up(self, requests: int = WARMUP_REQUESTS) -> None:
        """A few short generations after readiness (first-request compilation, caches); results discarded."""
        body: dict[str, Any] = {"model": self.model, "prompt": "warm up the server", "max_tokens": 8}
        with httpx.Client(timeout=WARMUP_TIMEOUT_S, trust_env=False) as client:
            for _ in range(requests):
                try:
                    client.post(self.base_url + "/v1/completions", json=body)
                except httpx.HTTPError:
                    return  # a server that cannot serve these will show it in the benchmark, with its log

    def _wait_ready(self, t0: float) -> None:
        assert self.proc is not None
        deadline = t0 + self.startup_timeout_s
        delay = 0.1
        with httpx.Client(timeout=10.0, trust_env=False) as client:
            while True:
                code = self.proc.poll()
                if code is not None:
                    kind, matched = classify(read_log(self.log_path, self.log_offset))
                    raise self.error(
                        kind,
                        f"{kind.kind}: server exited with code {code} before it became ready (log: {self.log_path})",
                        matched,
                    )
                owner = self.owns_port()
                if owner == "foreign":
                    # another process took the port between the check and the engine's bind: the engine
                    # will fail to bind; never probe (or benchmark) the server that answers there
                    raise self._port_in_use("is held by another process, not by the launched server")
                if owner != "none" and self._can_generate(client):
                    return
                if time.monotonic() > deadline:
                    last = f"; last answer: {self._last_answer}" if self._last_answer else ""
                    raise self.error(
                        ServerTimeoutError,
                        f"server did not become ready within {self.startup_timeout_s:g} s (no completed one-token "
                        f"generation{last}); raise startup_timeout_s in the matrix if it needs longer "
                        f"(log: {self.log_path})",
                    )
                time.sleep(delay)
                delay = min(delay * 1.5, 2.0)

    def owns_port(self) -> str:
        """Who listens on the server's port: ``ours`` (the launched process group), ``foreign``, ``none``,
        or ``unknown`` where /proc cannot tell."""
        if self.pgid is None:
            return "none"
        c = self.spec.container
        if c is not None:  # the engine runs under the runtime's monitor, not in the client's process group
            pid = main_pid(c.runtime, c.name)
            return port_owner(self.port, descendants(pid)) if pid is not None else "none"
        return port_owner(self.port, group_members(self.pgid))

    def _can_generate(self, client: httpx.Client) -> bool:
        try:
            health = client.get(self.base_url + "/health")
            if health.status_code != 200:
                self._note_answer("GET /health", health)
                return False
            body: dict[str, Any] = {"model": self.model, "prompt": "ready", "max_tokens": 1}
            r = client.post(self.base_url + "/v1/completions", json=body)
        except httpx.HTTPError:
            return False
        if r.status_code in (400, 404, 422):  # the request is wrong, not the server slow: waiting will not help
            raise self.error(
                ServerStartupError,
                f"the server is up but rejects a one-token generation for model {self.model!r} with HTTP "
                f"{r.status_code}: {r.text[:300]} (check model / served_model_name)",
            )
        if r.status_code != 200:
            self._note_answer("POST /v1/completions", r)
            return False
        return True

    def _note_answer(self, what: str, r: httpx.Response) -> None:
        """Remember a failing answer; the same server error (5xx but 503, which means 'loading') several
        times in a row ends the wait: an engine that answers 500 to every generation will not recover."""
        answer = f"{what} -> HTTP {r.status_code}: {r.text[:300]}"
        self._repeats = self._repeats + 1 if answer == self._last_answer else 1
        self._last_answer = answer
        if r.status_code >= 500 and r.status_code != 503 and self._repeats >= READY_ERROR_REPEATS:
            raise self.error(
                ServerStartupError,
                f"the server answers every readiness probe with an error ({self._repeats} in a row): {answer}. "
                f"Its log says why (log: {self.log_path})",
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM the group, wait, SIGKILL the group, and wait until no member is left."""
        proc, pgid = self.proc, self.pgid
        if proc is None or pgid is None:
            return
        if self.spec.container is not None:  # the container first, with its grace; then the client
            container_stop(self.spec.container.runtime, self.spec.container.name, TERM_GRACE_S)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + TERM_GRACE_S
        while time.monotonic() < deadline and (proc.poll() is None or group_members(pgid)):
            time.sleep(0.05)
        if proc.poll() is None or group_members(pgid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            deadline = time.monotonic() + KILL_WAIT_S
            while time.monotonic() < deadline and (proc.poll() is None or group_members(pgid)):
                time.sleep(0.05)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)
        self._stop_watchdog()
        note = ""
        if self.gpu_baseline_mib is not None and not wait_for_gpu_memory(
            self.gpu_baseline_mib, indices=self.gpu_indices
        ):
            note = "; GPU memory was not released within the wait: the next server may not fit"
        with open(self.log_path, "ab") as log:
            log.write(f"### llmperf: stopped (exit code {proc.returncode}){note}\n".encode())
        with _LOCK:
            _LIVE.discard(self)
        self.proc = None


def stop_all_servers() -> None:
    with _LOCK:
        live = list(_LIVE)
    for server in live:
        with contextlib.suppress(Exception):
            server.stop()


atexit.register(stop_all_servers)


def install_signal_handlers() -> None:
    """On SIGTERM (and SIGHUP) of the pytest process: stop every server, then die as asked."""

    def handler(signum: int, frame: object) -> None:
        stop_all_servers()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, handler)
