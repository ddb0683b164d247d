"""Files under ``--llmperf-report-dir``: every run's JSON, the session summary, Markdown, server logs.

Layout::

    DIR/results/<case>/run-<i>.json   one `vllm bench serve`-compatible JSON per measured run
    DIR/summary.json                  schema-versioned: environment, engine versions, every verdict
    DIR/summary.md                    Markdown tables for a pull request or a CI job summary
    DIR/logs/...                      every server's log

``summary.md`` is also appended to ``$GITHUB_STEP_SUMMARY`` when that variable is set.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
from collections.abc import Collection, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pytest_llmperf import __version__
from pytest_llmperf.redact import MASK, redact_argv, redact_text
from pytest_llmperf.report.rows import ORDER, table, verdict_rows

__all__ = [
    "SUMMARY_SCHEMA_VERSION",
    "copy_logs",
    "markdown_summary",
    "session_summary",
    "simulated_labels",
    "write_run",
    "write_session",
]

SUMMARY_SCHEMA_VERSION = 1


def write_run(report_dir: Path, case: str, index: int, data: dict[str, Any]) -> Path:
    path = report_dir / "results" / case / f"run-{index}.json"  # pooled as one case by `llmperf compare`
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) + "\n")
    return path


def markdown_summary(records: Sequence[dict[str, Any]], *, title: str = "pytest-llmperf results") -> str:
    """One row per test and gated metric, regressions first."""
    counts: dict[str, int] = {}
    for rec in records:
        counts[rec["verdict"]] = counts.get(rec["verdict"], 0) + 1
    head = ", ".join(f"{n} {v}" for v, n in sorted(counts.items(), key=lambda kv: ORDER.get(kv[0], 9)))
    lines = [f"## {title}", "", f"{len(records)} test(s): {head or 'none'}", ""]
    simulated = simulated_labels(records)
    if simulated:
        lines[0] += " (simulated)"
        lines += [f"Simulated, not measured on the engines: {'; '.join(simulated)}", ""]
    lines += table(list(verdict_rows(records)), markdown=True)
    engines = {
        rec["config"]: (rec.get("engine_version"), rec.get("image"))
        for rec in records
        if rec.get("config") and (rec.get("engine_version") or rec.get("image"))
    }
    if engines:  # what ran: an A/B of two releases names them
        lines += ["", "Engines: " + "; ".join(_engine_text(c, v, i) for c, (v, i) in sorted(engines.items()))]
    return "\n".join(lines) + "\n"


def simulated_labels(records: Sequence[dict[str, Any]]) -> list[str]:
    """The simulators (and their profiles' calibration sources) behind ``records``, one each."""
    return sorted({str(r["simulated"]) for r in records if r.get("simulated")})


def _engine_text(config: str, version: str | None, image: str | None) -> str:
    return f"`{config}` " + ", ".join(
        p for p in (f"version {version}" if version else "", f"image `{image}`" if image else "") if p
    )


def _environment(gpus: Any) -> dict[str, Any]:
    return {
        "plugin_version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "gpus": gpus,
        "argv": redact_argv(sys.argv),  # --llmperf-base-url http://user:TOKEN@host must not be saved
    }


def session_summary(
    records: Sequence[dict[str, Any]],
    *,
    gpus: Any,
    started: float,
    shard: str | None = None,
    run_uid: str = "",
    suite_commit: str | None = None,
) -> dict[str, Any]:
    """What ``summary.json`` holds, and what the history store ingests: one session's every verdict."""
    engines: dict[str, str | None] = {}
    images: dict[str, str] = {}
    for rec in records:
        if rec.get("config"):
            engines[rec["config"]] = rec.get("engine_version")
            if rec.get("image"):
                images[rec["config"]] = rec["image"]
    return {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "run_uid": run_uid,  # one pytest session (one shard): ingesting it twice adds nothing
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        "shard": shard,
        "suite_commit": suite_commit,
        "environment": _environment(gpus),
        "engine_versions": engines,
        "engine_images": images,  # configs run from a container image
        "simulated": simulated_labels(records),  # [] when every result was measured on an engine
        "tests": list(records),
    }


def write_session(report_dir: Path, summary: dict[str, Any]) -> list[Path]:
    report_dir.mkdir(parents=True, exist_ok=True)
    records = summary["tests"]
    written = []
    path = report_dir / "summary.json"
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    written.append(path)
    md = markdown_summary(records)
    md_path = report_dir / "summary.md"
    md_path.write_text(md)
    written.append(md_path)
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        with open(step_summary, "a", encoding="utf-8") as f:
            f.write(md)
    return written


def copy_logs(report_dir: Path, logs: Sequence[Path], secrets: Collection[str] = ()) -> None:
    """The logs of the servers this process launched (each xdist worker copies its own), with the launches'
    secrets and any URL credentials masked: an engine may print its own arguments and environment."""
    target = report_dir / "logs"
    for log in logs:
        if log.is_file():
            target.mkdir(parents=True, exist_ok=True)
            text = redact_text(log.read_text(encoding="utf-8", errors="replace"))
            for secret in sorted(secrets, key=len, reverse=True):
                text = text.replace(secret, MASK)
            (target / log.name).write_text(text, encoding="utf-8")
