"""Baseline files: one JSON file per test holding the raw per-run samples of every metric.

Format (``schema_version`` 2, documented in docs/baselines.md)::

    {
      "schema_version": 2,
      "test": "perf_tests/test_sim.py::test_serving[sim-default-random-256x64]",
      "case": "sim-default-random-256x64",
      "engine": {"id": ..., "engine": "sim", "version": ..., "model": ..., "command": "...", "sim_slowdown": 1.0},
      "workload": {... the workload definition ...},
      "dataset": {"name": "sharegpt_sample.json", "sha256": "..."} or null (random prompts),
      "hardware": {"kind": "simulated"},
      "provenance": {"date": ..., "plugin_version": ..., "source": "measured", "git_commit": ...},
      "tolerance": {},
      "metrics": {"output_throughput": [1470.5, 1468.9, 1471.2], ...}
    }

Files are written with sorted keys, floats rounded to 4 decimals and a trailing newline, so
that a refresh reviews well as a diff. A write is atomic and leaves nothing behind if the process
is killed: the content goes to an unnamed file in the folder (``O_TMPFILE``) that gets a name only
when complete; the file keeps its mode. Version 1 files (no dataset identity, no slowdown) are
migrated on load: what they do not record is not compared.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pytest_llmperf.errors import BaselineError
from pytest_llmperf.pids import pid_alive

__all__ = [
    "SCHEMA_VERSION",
    "Baseline",
    "BaselineVersionError",
    "baseline_path",
    "load_baseline",
    "migrate",
    "write_baseline",
]

SCHEMA_VERSION = 2
KNOWN_VERSIONS = (1, 2)
FLOAT_DECIMALS = 4
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000


class BaselineVersionError(BaselineError):
    """A baseline written by a newer pytest-llmperf (a schema version this one does not know)."""


class Provenance(BaseModel):
    model_config = ConfigDict(extra="allow")
    date: str
    plugin_version: str
    source: Literal["measured", "published"] = "measured"
    git_commit: str | None = None


class Baseline(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[2] = 2
    test: str
    case: str
    engine: dict[str, Any]
    workload: dict[str, Any]
    dataset: dict[str, str] | None = None  # the prompt file's name and sha256; None: random prompts or unknown
    hardware: dict[str, Any]
    provenance: Provenance
    tolerance: dict[str, float] = Field(default_factory=dict)
    metrics: dict[str, list[float]]

    @field_validator("tolerance")
    @classmethod
    def _fractions(cls, value: dict[str, float]) -> dict[str, float]:
        for metric, tol in value.items():
            if not (math.isfinite(tol) and 0 < tol < 1):
                raise ValueError(f"tolerance of {metric!r} must be a fraction in (0, 1) (0.05 is 5%), got {tol}")
        return value

    @field_validator("metrics")
    @classmethod
    def _samples(cls, value: dict[str, list[float]]) -> dict[str, list[float]]:
        for metric, samples in value.items():
            if not samples:
                raise ValueError(f"metric {metric!r} has no samples (an empty list)")
            bad = [x for x in samples if not math.isfinite(x)]
            if bad:
                raise ValueError(f"metric {metric!r} holds a non-finite sample ({bad[0]})")
        return value


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """A known older version's content in the current version's shape (unrecorded fields stay unknown)."""
    if data.get("schema_version") == 1:
        data = {**data, "schema_version": 2, "dataset": None}
    return data


_UNSAFE = re.compile(r"[^A-Za-z0-9_.+=-]+")


def baseline_path(root: Path, module_path: str, test_name: str, case_id: str) -> Path:
    """``<root>/<module path without .py>/<test name>/<case id>.json``."""
    module = Path(module_path).with_suffix("")
    parts = [_UNSAFE.sub("_", p) for p in module.parts if p not in ("", ".")]
    return root.joinpath(*parts, _UNSAFE.sub("_", test_name), _UNSAFE.sub("_", case_id) + ".json")


def load_baseline(path: Path) -> Baseline | None:
    """The baseline at ``path``, ``None`` if there is none; :class:`BaselineError` if it is unreadable."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    fix = "Restore it from version control, or re-record it with --llmperf-update-baselines (which replaces it)."
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise BaselineError(f"baseline file {path} is not valid JSON ({exc}). {fix}") from None
    if not isinstance(data, dict):
        raise BaselineError(f"baseline file {path} does not hold a JSON object. {fix}")
    version = data.get("schema_version")
    if version not in KNOWN_VERSIONS:
        newer = isinstance(version, int) and version > SCHEMA_VERSION
        raise (BaselineVersionError if newer else BaselineError)(
            f"baseline file {path} has schema_version {version!r}; this pytest-llmperf reads versions "
            f"{', '.join(map(str, KNOWN_VERSIONS))}"
            + (". It was written by a newer pytest-llmperf: upgrade this one to compare with it." if newer else ".")
        )
    try:
        return Baseline.model_validate(migrate(data))
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise BaselineError(f"baseline file {path} is invalid ({fields}). {fix}") from None


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, FLOAT_DECIMALS)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v) for v in value]
    return value


def _encode(value: Any, indent: str = "") -> str:
    """JSON with sorted keys, two-space indents, and a list of plain values on one line (samples read as a row)."""
    inner = indent + "  "
    if isinstance(value, dict) and value:
        items = (f"{inner}{json.dumps(k)}: {_encode(v, inner)}" for k, v in sorted(value.items()))
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(inner + _encode(v, inner) for v in value) + "\n" + indent + "]"
    return json.dumps(value, separators=(", ", ": "))


def dumps(baseline: Baseline) -> str:
    """Sorted keys, rounded floats, one line per list of samples, trailing newline."""
    return _encode(_round(baseline.model_dump(mode="json"))) + "\n"


def _mode(path: Path) -> int:
    """The mode a rewritten file keeps; a new file gets 0666 less the umask, as ``open()`` would give it."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _link_unnamed(fd: int, target: str) -> bool:
    """Give the unnamed (``O_TMPFILE``) file ``fd`` the name ``target``: ``linkat(AT_EMPTY_PATH)`` where
    allowed, else through ``/proc/self/fd`` (open(2)'s recipe). False where neither works."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.linkat(fd, b"", _AT_FDCWD, os.fsencode(target), _AT_EMPTY_PATH) == 0:
            return True
    try:
        os.link(f"/proc/self/fd/{fd}", target, follow_symlinks=True)
    except OSError:
        return False
    return True


def _sweep(folder: Path) -> None:
    """Remove temporary files of writers that died before their rename (``.<name>.<pid>.tmp``)."""
    for tmp in folder.glob(".*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a reader sees the old or the new file, never half of one. The
    content goes to an unnamed file (Linux ``O_TMPFILE``) that gets a name only once it is whole, so a process
    killed mid-write, even by SIGKILL, leaves nothing behind; elsewhere a ``.<name>.<pid>.tmp`` file that the
    next write into the folder removes if its writer is dead. The file keeps its mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep(path.parent)
    data = text.encode("utf-8")
    mode = _mode(path)
    tmp = str(path.parent / f".{path.name}.{os.getpid()}.tmp")
    fd = -1
    with contextlib.suppress(OSError, AttributeError):  # no O_TMPFILE here, or not on this filesystem
        fd = os.open(path.parent, os.O_TMPFILE | os.O_WRONLY, mode)
    try:
        if fd >= 0:
            _write_all(fd, data)
            os.fchmod(fd, mode)
            os.fsync(fd)
            if not _link_unnamed(fd, tmp):
                os.close(fd)
                fd = -1
        if fd < 0:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            _write_all(fd, data)
            os.fchmod(fd, mode)
            os.fsync(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        if fd >= 0:
            os.close(fd)


def write_baseline(path: Path, baseline: Baseline) -> None:
    """Write atomically, keeping the file's mode; see :func:`write_text_atomic`."""
    write_text_atomic(path, dumps(baseline))
