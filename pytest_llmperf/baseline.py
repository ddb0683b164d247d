"""Baseline files: one JSON file per test holding the raw per-run samples of every metric.

Format (``schema_version`` 1, documented in docs/baselines.md)::

    {
      "schema_version": 1,
      "test": "perf_tests/test_sim.py::test_serving[sim-default-random-256x64]",
      "case": "sim-default-random-256x64",
      "engine": {"id": ..., "engine": "sim", "version": ..., "model": ..., "command": "..."},
      "workload": {... the workload definition ...},
      "hardware": {"kind": "simulated"},
      "provenance": {"date": ..., "plugin_version": ..., "source": "measured", "git_commit": ...},
      "tolerance": {},
      "metrics": {"output_throughput": [1470.5, 1468.9, 1471.2], ...}
    }

Files are written with sorted keys, floats rounded to 4 decimals and a trailing newline, so
that a refresh reviews well as a diff; writes are atomic (temporary file + rename).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pytest_llmperf.errors import BaselineError

__all__ = ["SCHEMA_VERSION", "Baseline", "baseline_path", "load_baseline", "write_baseline"]

SCHEMA_VERSION = 1
FLOAT_DECIMALS = 4


class Provenance(BaseModel):
    model_config = ConfigDict(extra="allow")
    date: str
    plugin_version: str
    source: Literal["measured", "published"] = "measured"
    git_commit: str | None = None


class Baseline(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    test: str
    case: str
    engine: dict[str, Any]
    workload: dict[str, Any]
    hardware: dict[str, Any]
    provenance: Provenance
    tolerance: dict[str, float] = Field(default_factory=dict)
    metrics: dict[str, list[float]]


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
    fix = "Restore it from version control, or delete it and re-run with --llmperf-update-baselines."
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise BaselineError(f"baseline file {path} is not valid JSON ({exc}). {fix}") from None
    if not isinstance(data, dict):
        raise BaselineError(f"baseline file {path} does not hold a JSON object. {fix}")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BaselineError(
            f"baseline file {path} has schema_version {version!r}; this pytest-llmperf reads version "
            f"{SCHEMA_VERSION}. Upgrade pytest-llmperf if the file is newer, or re-record it with "
            "--llmperf-update-baselines."
        )
    try:
        return Baseline.model_validate(data)
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


_FLAT_LIST = re.compile(r"\[\s+([^\[\]{}]*?)\s+\]")


def dumps(baseline: Baseline) -> str:
    """Sorted keys, rounded floats, one line per list of samples, trailing newline."""
    text = json.dumps(_round(baseline.model_dump(mode="json")), sort_keys=True, indent=2)
    text = _FLAT_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    return text + "\n"


def write_baseline(path: Path, baseline: Baseline) -> None:
    """Write atomically: a crash or a concurrent reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(dumps(baseline))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
