"""Run rows into nightly series: per test, its nights in order, each the mean of its runs per metric.

What ``llmperf history show``, ``changes``, ``plot`` and ``html`` all read.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pytest_llmperf.gate.decision import DEFAULT_GATED, higher_is_better
from pytest_llmperf.history.changes import ChangePoint, change_points

__all__ = ["GATED_SERIES", "Change", "Night", "changes_of", "nightly_series", "run_values", "suite_of"]

GATED_SERIES = tuple(m for m in DEFAULT_GATED if m != "failed")  # the gated performance metrics


@dataclass(frozen=True)
class Night:
    """One test on one night (one session): its runs' values, their means, and how the night was judged."""

    session_uid: str
    started: str
    nodeid: str
    engine_version: str
    hardware: str
    verdict: str
    accepted: bool
    runs: Mapping[str, list[float]]
    means: Mapping[str, float]
    reference: Mapping[str, float]
    tolerance: Mapping[str, float]
    suite_commit: str = ""


def nightly_series(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[Night]]:
    """Per case, its nights oldest first."""
    by_case: dict[str, dict[str, list[Mapping[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_case[row["case_id"]][row["session_uid"]].append(row)
    out = {}
    for case, sessions in by_case.items():
        nights = sorted(sessions.values(), key=lambda runs: (runs[0]["started"], runs[0]["session_uid"]))
        out[case] = [_night(runs) for runs in nights]
    return out


def run_values(runs: Iterable[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Each metric's values over a night's run rows, in run order."""
    values: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        for metric, value in run["metrics"].items():
            values[metric].append(float(value))
    return dict(values)


def _night(runs: list[Mapping[str, Any]]) -> Night:
    first = runs[0]
    values = run_values(runs)
    return Night(
        session_uid=first["session_uid"],
        started=first["started"],
        nodeid=first["nodeid"],
        engine_version=first["engine_version"],
        hardware=first["hardware"],
        verdict=first["verdict"],
        accepted=bool(first["accepted"]),
        runs=values,
        means={m: statistics.fmean(v) for m, v in values.items()},
        reference=dict(first["reference"] or {}),
        tolerance=dict(first.get("tolerance") or {}),
        suite_commit=str(first.get("suite_commit") or ""),
    )


@dataclass(frozen=True)
class Change:
    """A change point of one test's metric, with the nights on either side."""

    case: str
    metric: str
    point: ChangePoint
    before: Night
    after: Night

    @property
    def bad(self) -> bool:
        return self.point.step < 0 if higher_is_better(self.metric) else self.point.step > 0

    @property
    def across(self) -> list[str]:
        """What changed between the last night before and the first night after."""
        return [
            f"{label} {getattr(self.before, key)[:width]} -> {getattr(self.after, key)[:width]}"
            for label, key, width in (
                ("engine", "engine_version", 64),
                ("suite commit", "suite_commit", 10),
                ("hardware", "hardware", 200),
            )
            if getattr(self.before, key) != getattr(self.after, key)
        ]


def changes_of(case: str, nights: list[Night], metrics: Iterable[str] = GATED_SERIES) -> list[Change]:
    """The change points of each metric of one test's series (metrics some night lacks are skipped)."""
    out = []
    for metric in metrics:
        series = [n.means[metric] for n in nights if metric in n.means]
        if len(series) != len(nights):
            continue
        for cp in change_points(series):
            out.append(Change(case, metric, cp, nights[cp.index - 1], nights[cp.index]))
    return out


def suite_of(nodeid: str) -> str:
    """The suite a test belongs to: its file (``perf_tests/study/test_study.py``)."""
    return nodeid.split("::", 1)[0]
