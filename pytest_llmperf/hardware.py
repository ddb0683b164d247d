"""GPU detection through ``nvidia-smi``, hardware requirements of markers, and per-worker GPU slices.

Everything GPU-specific crosses one process boundary, ``nvidia-smi``, so it is tested with
recorded outputs of that command (a fake ``nvidia-smi`` on ``PATH``).
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Any

__all__ = [
    "REQUIREMENTS",
    "Gpu",
    "Requirement",
    "cpu_isa",
    "detect_gpus",
    "gpu_memory_used_mib",
    "gpu_slice",
    "hardware_key",
    "missing_hardware",
    "wait_for_gpu_memory",
]

QUERY = "--query-gpu=index,name,memory.total,memory.used,driver_version"


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_total_mib: int
    memory_used_mib: int
    driver: str


@dataclass(frozen=True)
class Requirement:
    count: int
    name: str  # a substring of nvidia-smi's GPU name, e.g. "H200"

    def describe(self) -> str:
        return f"one node with {self.count} NVIDIA {self.name} GPUs"


REQUIREMENTS: dict[str, Requirement] = {"h200": Requirement(8, "H200")}


def _run_smi(*args: str) -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        return subprocess.run([exe, *args], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def detect_gpus() -> list[Gpu] | None:
    """The node's NVIDIA GPUs; ``None`` when ``nvidia-smi`` is absent or fails."""
    out = _run_smi(QUERY, "--format=csv,noheader,nounits")
    if out is None:
        return None
    gpus = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 5:
            continue
        try:
            gpus.append(Gpu(int(parts[0]), parts[1], int(float(parts[2])), int(float(parts[3])), parts[4]))
        except ValueError:
            continue
    return gpus


def describe_found(gpus: list[Gpu] | None) -> str:
    if gpus is None:
        return "no NVIDIA GPU (nvidia-smi not found or failing)"
    if not gpus:
        return "no GPU listed by nvidia-smi"
    names = sorted({g.name for g in gpus})
    return f"{len(gpus)}x {' + '.join(names)}"


def missing_hardware(marker: str, gpus: list[Gpu] | None) -> str | None:
    """A skip reason when the node does not meet ``marker``'s requirement, else ``None``."""
    req = REQUIREMENTS.get(marker)
    if req is None:
        return None
    matching = [g for g in gpus or [] if req.name in g.name]
    if len(matching) >= req.count:
        return None
    return (
        f"needs {req.describe()}; found {describe_found(gpus)}. Run it on such a node, or dry-run it on the "
        "simulated engine with --llmperf-simulate"
    )


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# the vector extensions a CPU engine's kernels pick from, newest last: a virtual machine often hides the
# model name ("Intel Xeon Processor"), and these tell its generation apart
ISA_LEVELS = (("avx2", "avx2"), ("avx512f", "avx512"), ("avx512_bf16", "avx512-bf16"), ("amx_tile", "amx"))


@functools.lru_cache(maxsize=1)
def _cpuinfo_flags() -> str | None:
    """The first ``flags`` line of /proc/cpuinfo, read once per process (the hardware key is taken per test)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1] for line in f if line.startswith("flags")), None)
    except OSError:
        return None


def cpu_isa(cpuinfo_flags: str | None = None) -> str:
    """The newest vector extension this CPU has, from ``/proc/cpuinfo`` ("amx", "avx512-bf16", "avx512",
    "avx2", or "baseline"); "unknown" where the flags cannot be read."""
    if cpuinfo_flags is None:
        cpuinfo_flags = _cpuinfo_flags()
        if cpuinfo_flags is None:
            return "unknown"
    flags = set(cpuinfo_flags.split())
    level = "baseline"
    for flag, name in ISA_LEVELS:
        if flag in flags:
            level = name
    return level


def hardware_key(gpus: list[Gpu] | None) -> dict[str, Any]:
    """The hardware a result was measured on (compared before any metric): GPUs, driver, and the CPU class
    (model, count and vector extensions: what a CPU-only engine's results depend on)."""
    key: dict[str, Any] = {"kind": "host", "cpu": f"{os.cpu_count()}x {cpu_model()}", "cpu_isa": cpu_isa()}
    if not gpus:
        key["gpus"] = "none"
        return key
    names = sorted({g.name for g in gpus})
    key.update({"gpus": f"{len(gpus)}x {' + '.join(names)}", "driver": gpus[0].driver})
    return key


def gpu_slice(worker: str | None, workers: int, needed: int, gpus: list[Gpu] | None) -> list[int] | None:
    """The GPU indices of a pytest-xdist worker ``gwN`` when configs need ``needed`` GPUs each.

    ``None`` when no slicing applies (no xdist, no GPUs, or a config that needs none).
    Raises ``ValueError`` when the node cannot give every worker its own slice.
    """
    if not worker or workers <= 1 or not gpus or needed <= 0:
        return None
    n = int(worker.removeprefix("gw"))
    if (n + 1) * needed > len(gpus):
        raise ValueError(
            f"worker {worker} needs GPUs {n * needed}..{(n + 1) * needed - 1} but the node has {len(gpus)}; "
            f"run with at most -n {max(1, len(gpus) // needed)} for configs of {needed} GPU(s)"
        )
    indices = sorted(g.index for g in gpus)
    return indices[n * needed : (n + 1) * needed]


def gpu_memory_used_mib(indices: list[int] | None = None) -> int | None:
    gpus = detect_gpus()
    if gpus is None:
        return None
    return sum(g.memory_used_mib for g in gpus if indices is None or g.index in indices)


def wait_for_gpu_memory(
    baseline_mib: int,
    *,
    indices: list[int] | None = None,
    slack_mib: int = 1024,
    timeout_s: float = 120.0,
    poll_s: float = 1.0,
) -> bool:
    """Wait until GPU memory in use is back near ``baseline_mib`` (a dead server's memory is freed late)."""
    deadline = time.monotonic() + timeout_s
    while True:
        used = gpu_memory_used_mib(indices)
        if used is None or used <= baseline_mib + slack_mib:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
