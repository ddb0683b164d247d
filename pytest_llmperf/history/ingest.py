"""Report folders and in-memory results into the history store: ``summary.json`` as the plugin writes it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_llmperf.history.store import HistoryError, HistoryStore, RunRow, hardware_text

__all__ = ["ingest_dir", "ingest_summary", "read_summary", "record", "summary_rows"]


def summary_rows(summary: Mapping[str, Any]) -> tuple[dict[str, Any], list[RunRow]]:
    """The session row and the run rows of one ``summary.json``."""
    env = summary.get("environment") or {}
    # summaries written before run_uid existed are keyed by their content: re-ingesting them adds nothing
    uid = str(summary.get("run_uid") or hashlib.sha256(json.dumps(summary, sort_keys=True).encode()).hexdigest()[:32])
    started = str(summary.get("started") or summary.get("created") or "")
    session = {
        "uid": uid,
        "started": started,
        "shard": summary.get("shard"),
        "suite_commit": summary.get("suite_commit"),
        "plugin_version": env.get("plugin_version"),
    }
    rows = []
    for rec in summary.get("tests", []):
        samples: Mapping[str, Sequence[float]] = rec.get("samples") or {k: [v] for k, v in rec.get("means", {}).items()}
        n = max((len(v) for v in samples.values()), default=0)
        reference = {r["metric"]: r["baseline"] for r in rec.get("rows", []) if r.get("baseline") is not None}
        tolerance = {r["metric"]: r["tolerance"] for r in rec.get("rows", []) if r.get("tolerance")}
        verdict = str(rec.get("verdict", ""))
        for i in range(n):
            rows.append(
                RunRow(
                    session_uid=uid,
                    started=started,
                    nodeid=str(rec["nodeid"]),
                    case_id=str(rec.get("case", "")),
                    config=str(rec.get("config", "")),
                    workload=str(rec.get("workload", "")),
                    engine=str(rec.get("engine", "")),
                    engine_version=str(rec.get("engine_version") or ""),
                    hardware=hardware_text(rec.get("hardware")),
                    verdict=verdict,
                    accepted=verdict == "PASS" or bool(rec.get("updated")),
                    run_index=i,
                    metrics={k: float(v[i]) for k, v in samples.items() if i < len(v)},
                    reference=reference,
                    tolerance=tolerance,
                )
            )
    return session, rows


def ingest_summary(store: HistoryStore, summary: Mapping[str, Any]) -> int:
    session, rows = summary_rows(summary)
    return store.add(session, rows)


def read_summary(folder: Path) -> dict[str, Any]:
    """The ``summary.json`` of one report folder (a --llmperf-report-dir of a finished run)."""
    path = folder / "summary.json"
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise HistoryError(f"{folder}: no summary.json (a --llmperf-report-dir of a finished run)") from None
    except ValueError as exc:
        raise HistoryError(f"{path}: not valid JSON ({exc})") from None


def ingest_dir(store: HistoryStore, folder: Path) -> int:
    """Ingest one report folder (its ``summary.json``); returns the runs added (0 when it was there)."""
    return ingest_summary(store, read_summary(folder))


def record(target: str, summaries: Iterable[Mapping[str, Any]]) -> int:
    """Open the store at ``target``, ingest ``summaries``, close it; the runs added. HistoryError when the
    store cannot be opened or written."""
    store = HistoryStore(target)
    try:
        return sum(ingest_summary(store, summary) for summary in summaries)
    finally:
        store.close()
