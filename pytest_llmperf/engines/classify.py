"""Classify a server's start-up failure from its log: unsupported configuration, out of memory, crash.

The root cause is usually printed by a worker, EngineCore or scheduler process, not by the API
process, so the whole log of the process group is scanned (its last 1 MiB). Patterns come from
the engines' sources and issues (../shared/reference/engine-lifecycle.md, a.6).
"""

from __future__ import annotations

import re
from pathlib import Path

from pytest_llmperf.errors import (
    ServerCrashError,
    ServerOutOfMemoryError,
    ServerPortInUseError,
    ServerStartupError,
    UnsupportedConfigError,
)

__all__ = ["PATTERNS", "classify", "read_log"]

Kind = type[ServerStartupError]

_UNSUPPORTED_COMMON = [
    r"Selected (MLA prefill )?backend (AttentionBackendEnum\.)?\w+ is not valid for this configuration",
    r"No valid attention backend found",
    r"(DCP|Decode Context Parallelism).*softmax (lse|LSE)",
    r"Unsupported CPU attention configuration",
    r"NameError: name 'deep_gemm' is not defined",
    r"DeepGEMM only supports Hopper",
]
_OOM = [
    r"CUDA out of memory",
    r"OutOfMemoryError",
    r"No available memory for the cache blocks",
    r"is less than desired GPU memory utilization",
    r"KV cache is needed, which is larger than the available KV cache memory",
    r"Not enough memory",
]
_PORT_IN_USE = [
    r"(?i)address already in use",
    r"\[Errno 98\]",
    r"(?i)port \d* ?is already in use",
    r"EADDRINUSE",
]
_CRASH = [
    r"Scheduler hit an exception",
    r"scheduler is dead",
    r"Engine core initialization failed",
    r"WorkerProc failed to start",
    r"Segmentation fault|Illegal instruction",
]


def _compiled(kind: Kind, patterns: list[str]) -> list[tuple[Kind, re.Pattern[str]]]:
    return [(kind, re.compile(p)) for p in patterns]


PATTERNS: list[tuple[Kind, re.Pattern[str]]] = (
    _compiled(ServerPortInUseError, _PORT_IN_USE)  # a bind failure's traceback is no crash of the engine
    + _compiled(UnsupportedConfigError, _UNSUPPORTED_COMMON)
    + _compiled(ServerOutOfMemoryError, _OOM)
    + _compiled(ServerCrashError, _CRASH)
    # generic wordings last, so that a specific cause always wins
    + _compiled(UnsupportedConfigError, [r"(?i)\b(not supported|unsupported)\b"])
    + _compiled(ServerCrashError, [r"Traceback \(most recent call last\)"])
)
MAX_LOG_BYTES = 1 << 20


def read_log(path: str | Path | None, offset: int = 0) -> str:
    """The log from ``offset`` (where this launch began: a log file collects every launch of its
    config) to the end, at most its last MiB."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(offset, size - MAX_LOG_BYTES))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def classify(log: str) -> tuple[Kind, tuple[str, ...]]:
    """The most specific failure class whose pattern matches, and the log lines that matched it."""
    lines = [line for line in log.splitlines() if not line.startswith("### llmperf:")]
    for kind, pattern in PATTERNS:
        hits = tuple(dict.fromkeys(line.strip() for line in lines if pattern.search(line)))
        if hits:
            return kind, hits[:5]
    return ServerStartupError, ()
