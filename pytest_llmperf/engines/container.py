"""Engines from release container images: the ``run`` command line for Docker or Podman, and the container's
life (the image present, the processes it runs, stop then remove, a dead session's containers removed).

The command inside the container is exactly the config's engine command (``launch.render_launch``). Around
it: the container named and labelled with the session; host networking (the engine's ``--port`` is on
loopback as for a process); ``--ipc=host`` as vLLM's and SGLang's docs ask; the GPUs of the config's slice
the way each runtime does it (Docker: ``--gpus``, the NVIDIA toolkit; Podman: CDI devices); the Hugging
Face cache and a local model mounted from the host; the environment passed by name only, its values in
the runtime client's own environment, so a token's value is never on a command line, in a log or a result.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pytest_llmperf.engines.procfs import live_processes

__all__ = [
    "RUNTIMES",
    "Container",
    "container_argv",
    "container_name",
    "descendants",
    "find_runtime",
    "image_present",
    "main_pid",
    "owner_label",
    "remove",
    "remove_dead_sessions",
    "stop",
]

RUNTIMES = ("podman", "docker")
SESSION_LABEL = "llmperf.session"
OWNER_LABEL = "llmperf.owner"  # host:pid:start-ticks of the pytest process that owns the container
CONFIG_LABEL = "llmperf.config"
HF_CACHE_IN_CONTAINER = "/root/.cache/huggingface"
PASSED_THROUGH = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT")  # by name, when set


@dataclass(frozen=True)
class Container:
    """How one engine config runs in a container."""

    runtime: str  # "podman" or "docker" (the executable's name or path)
    image: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    gpus: tuple[int, ...] | None = None  # None: no GPU; (): all; else the device indices of the slice
    mounts: tuple[tuple[str, str, str], ...] = ()  # (host path, container path, "ro"/"rw")
    env_names: tuple[str, ...] = ()
    workdir: str | None = None
    # the image's own entrypoint is left out: vllm/vllm-openai's is `vllm serve`, and the config's command
    # names it itself; NVIDIA's (which sets up the environment, then runs the command) is kept
    reset_entrypoint: bool = False

    @property
    def kind(self) -> str:
        return "docker" if os.path.basename(self.runtime).startswith("docker") else "podman"


def find_runtime(preferred: str | None = None) -> str | None:
    """The runtime to use: the one asked for (a name on PATH or a path), else Podman, else Docker."""
    for name in (preferred,) if preferred else RUNTIMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def container_name(config_id: str, session: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", f"llmperf-{config_id}-{session[:8]}")  # 8: a uuid's first part


def owner_label() -> str:
    """This process, in a way a later session can tell it is gone: host, pid and the pid's start time."""
    return f"{os.uname().nodename}:{os.getpid()}:{_start_ticks(os.getpid())}"


def _start_ticks(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rfind(b")") + 2 :].split()[19].decode()
    except (OSError, IndexError):
        return ""


def _owner_alive(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid, _, ticks = rest.partition(":")
    if host != os.uname().nodename or not pid.isdigit():
        return True  # another host's session: not ours to judge
    return _start_ticks(int(pid)) == ticks and ticks != ""


def gpu_flags(kind: str, gpus: tuple[int, ...] | None) -> list[str]:
    """GPU access: Docker with the NVIDIA container toolkit takes ``--gpus``; Podman takes CDI devices."""
    if gpus is None:
        return []
    if kind == "docker":
        # Docker reads --gpus as CSV: a list of devices is quoted inside the value (its docs: '"device=1,2"')
        return ["--gpus", "all" if not gpus else '"device=' + ",".join(map(str, gpus)) + '"']
    if not gpus:
        return ["--device", "nvidia.com/gpu=all"]
    return [word for i in gpus for word in ("--device", f"nvidia.com/gpu={i}")]


def container_argv(c: Container, inner: Sequence[str]) -> list[str]:
    """``RUNTIME run ... IMAGE`` followed by the engine's command, as it is run in the foreground (the
    container's output is the client's: it streams into the config's log)."""
    argv = [c.runtime, "run", "--rm", "--name", c.name]
    argv += [word for key, value in sorted(c.labels.items()) for word in ("--label", f"{key}={value}")]
    argv += ["--network", "host", "--ipc", "host"]
    argv += gpu_flags(c.kind, c.gpus)
    argv += [word for host, inside, mode in c.mounts for word in ("-v", f"{host}:{inside}:{mode}")]
    argv += [word for name in c.env_names for word in ("-e", name)]
    if c.workdir:
        argv += ["--workdir", c.workdir]
    if c.reset_entrypoint:
        argv += ["--entrypoint", ""]
    return [*argv, c.image, *inner]


def mounts_for(model: str, cwd: Path | None, *, real_engine: bool) -> tuple[tuple[str, str, str], ...]:
    """The Hugging Face cache (a real engine), the suite's folder read-only at the same path (relative paths
    in a config, a chat template or a local model, resolve as on the host: it is also the working
    directory), and an absolute local model path outside it."""
    out: list[tuple[str, str, str]] = []
    if real_engine:
        cache = os.environ.get("HF_HOME") or os.path.expanduser("~/.cache/huggingface")
        out.append((cache, HF_CACHE_IN_CONTAINER, "rw"))
    if cwd is not None:
        out.append((str(cwd), str(cwd), "ro"))
    if os.path.isabs(model) and os.path.exists(model):
        inside_cwd = cwd is not None and Path(model).resolve().is_relative_to(cwd)
        if not inside_cwd:
            out.append((model, model, "ro"))
    return tuple(out)


def env_names(env: Mapping[str, str]) -> tuple[str, ...]:
    """The names passed into the container: the config's environment, and the hub's variables when set."""
    names = [k for k in env if k != "CUDA_VISIBLE_DEVICES"]  # the runtime maps the slice's devices instead
    names += [k for k in PASSED_THROUGH if k in os.environ and k not in names]
    return tuple(sorted(names))


def _run(runtime: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [runtime, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False
    )


def image_present(runtime: str, image: str) -> bool:
    try:
        return _run(runtime, "image", "inspect", image).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def main_pid(runtime: str, name: str) -> int | None:
    """The host pid of the container's first process, while it runs."""
    try:
        done = _run(runtime, "inspect", "--format", "{{.State.Pid}}", name, timeout=20.0)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = done.stdout.strip()
    return int(text) if done.returncode == 0 and text.isdigit() and int(text) > 0 else None


def descendants(root: int) -> list[int]:
    """``root`` and every process below it, from /proc (the container's processes, seen from the host)."""
    children: dict[int, list[int]] = {}
    for proc in live_processes():
        children.setdefault(proc.ppid, []).append(proc.pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def stop(runtime: str, name: str, grace_s: float) -> None:
    """Stop with a grace period (SIGTERM, then SIGKILL), then remove."""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        _run(runtime, "stop", "-t", str(int(grace_s)), name, timeout=grace_s + 30.0)
    remove(runtime, name)


def remove(runtime: str, name: str) -> None:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        _run(runtime, "rm", "-f", name, timeout=60.0)


def remove_dead_sessions(runtime: str) -> list[str]:
    """Remove the containers of sessions whose pytest is gone (SIGKILL, a lost node); returns their names."""
    try:
        done = _run(runtime, "ps", "-a", "--filter", f"label={SESSION_LABEL}", "--format", "json", timeout=30.0)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if done.returncode != 0:
        return []
    removed = []
    for entry in _ps_entries(done.stdout):
        labels: object = entry.get("Labels") or {}
        if isinstance(labels, str):  # docker prints "k=v,k=v"
            labels = dict(part.split("=", 1) for part in labels.split(",") if "=" in part)
        owner = str(labels.get(OWNER_LABEL, "")) if isinstance(labels, dict) else ""
        names = entry.get("Names") or entry.get("Name") or ""
        name = names[0] if isinstance(names, list) and names else str(names)
        if owner and name and not _owner_alive(owner):
            remove(runtime, name)
            removed.append(name)
    return removed


def _ps_entries(text: str) -> list[dict[str, object]]:
    """``ps --format json``: Podman prints one JSON array, Docker one object per line."""
    text = text.strip()
    if not text:
        return []
    try:
        data = json.loads(text)
        return list(data) if isinstance(data, list) else [data]
    except ValueError:
        return [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]
