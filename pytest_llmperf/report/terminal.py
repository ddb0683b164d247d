"""What the terminal shows at the end of a run: one row per test and gated (or reported) metric."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import pytest
from tabulate import tabulate

from pytest_llmperf.gate.check import git_commit
from pytest_llmperf.redact import redact_text
from pytest_llmperf.report.files import session_summary, simulated_labels, write_session
from pytest_llmperf.report.record import CALIBRATION_PROPERTY, PERF_TEST_PROPERTY, RESULT_PROPERTY
from pytest_llmperf.report.rows import table, verdict_rows
from pytest_llmperf.session import LlmperfSession

__all__ = [
    "ResultCollector",
    "calibration_table",
    "result_notes",
    "summary_table",
]


_MARKUP: dict[str, dict[str, bool]] = {
    "FAIL": {"red": True, "bold": True},
    "INCONCLUSIVE": {"yellow": True},
    "NEW": {"yellow": True},
    "PASS": {"green": True},
}


def summary_table(records: Sequence[dict[str, Any]], *, verbose: bool = False) -> str:
    """Regressions first; gated metrics always, reported metrics with ``-v``."""
    return "\n".join(table(list(verdict_rows(records, reported=verbose))))


class ResultCollector:
    """Collects each perf test's verdict rows (also from pytest-xdist workers) and prints the summary."""

    def __init__(self, state: LlmperfSession) -> None:
        self.state = state
        self.skips: dict[str, int] = {}  # reason -> perf tests skipped for it

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # an expected failure reports as skipped too (with its traceback): it is not a skip, it has its own line
        expected_failure = hasattr(report, "wasxfail")
        if (
            report.skipped
            and not expected_failure
            and any(name == PERF_TEST_PROPERTY for name, _ in report.user_properties)
        ):
            longrepr = report.longrepr
            reason = str(longrepr[2] if isinstance(longrepr, tuple) else longrepr).removeprefix("Skipped: ")
            self.skips[reason] = self.skips.get(reason, 0) + 1
        if report.when != "call":
            return
        for name, value in report.user_properties:
            if name == RESULT_PROPERTY:
                self.state.results.append(json.loads(str(value)))
            elif name == CALIBRATION_PROPERTY:
                self.state.calibration.append(json.loads(str(value)))

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
        state = self.state
        if state.calibration:
            cal_table, summary = calibration_table(state.calibration)
            terminalreporter.write_sep("=", "llmperf calibration: run-to-run variation")
            terminalreporter.write_line(cal_table)
            out = state.rootdir / ".llmperf" / "calibration.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"tests": state.calibration, "summary": summary}, indent=2) + "\n")
            terminalreporter.write_line(f"llmperf: wrote {state.relative(out)}")
        summary = session_summary(
            state.results,
            gpus=None if state.simulate else describe_gpus(state),
            started=state.started,
            shard=state.shard,
            run_uid=state.run_uid,
            suite_commit=git_commit(state.rootdir) if state.report_dir or state.history else None,
        )
        if state.report_dir is not None:  # also for a shard that ran no test: it reports, empty
            for path in write_session(state.report_dir, summary):
                terminalreporter.write_line(f"llmperf: wrote {path}")
        if state.history:
            said = record_history(state.history, summary)
            if said.startswith("not recorded") and state.report_dir is not None:
                said += f"; record it later with: llmperf history ingest --db URL {state.relative(state.report_dir)}"
            terminalreporter.write_line(f"llmperf: history: {said}", red=said.startswith("not recorded"))
        if self.skips:  # the reasons that matter, without -rs: what is missing and the option that runs them
            terminalreporter.write_sep("=", f"llmperf: {sum(self.skips.values())} perf test(s) skipped")
            for reason, count in sorted(self.skips.items(), key=lambda kv: -kv[1]):
                terminalreporter.write_line(f"{count} x {reason}", yellow=True)
        if not state.results:
            return
        tr = terminalreporter
        simulated = simulated_labels(state.results)
        tr.write_sep("=", "llmperf results (simulated)" if simulated else "llmperf results")
        for label in simulated:
            tr.write_line(f"simulated, not measured on the engines: {label}", yellow=True)
        # colour only on a terminal, never with NO_COLOR: pytest's own markup rules decide
        rows = list(verdict_rows(state.results, reported=config.get_verbosity() > 0))
        lines = table(rows)
        for line in lines[:2]:
            tr.write_line(line)
        for line, row in zip(lines[2:], rows, strict=True):
            tr.write_line(line, **_MARKUP.get(row.verdict, {}))
        tr.write_line(
            "p: one-sided t-test p-value, computed only for a change beyond its tolerance ('-' within it); "
            "n: runs used, baseline/tonight (outlier runs left out)"
        )
        # from the records: an xdist controller collects nothing, its workers know the suite's size
        for policy in dict.fromkeys(str(r.get("gate") or state.policy.describe()) for r in state.results):
            tr.write_line(f"gate: {policy}")
        for line in result_notes(state.results):  # notes people act on: a stale baseline, a new engine version
            tr.write_line(line, yellow=True)
        # from the records, so that the controller of an xdist run names what its workers wrote
        for rec in state.results:
            if rec.get("updated"):
                tr.write_line(f"llmperf: wrote baseline {rec['baseline']}")


def result_notes(records: Sequence[dict[str, Any]]) -> list[str]:
    """One line per note of a test (allowed differences from its baseline) or of a gated metric (a large
    improvement: the baseline may be stale)."""
    lines = []
    for rec in sorted(records, key=lambda r: str(r["case"])):
        for note in rec.get("notes", []):
            lines.append(f"note: [{rec['case']}] {note}")
        for row in rec["rows"]:
            if row["gated"] and row["note"] and row["verdict"] == "PASS":
                change = "" if row["change"] is None else f" {row['change']:+.1%}"
                lines.append(f"note: [{rec['case']}] {row['metric']}{change}: {row['note']}")
    return lines


def suggested_tolerance(cv: float) -> float:
    """The tolerance that keeps false alarms near 1% with 3 runs a side: twice the CV (the gate's default
    6% is this rule at 3% noise; benchmarks/gate_monte_carlo.py), rounded up to half a percent, at least 2%."""
    return max(0.02, math.ceil(2 * cv * 200) / 200)


def calibration_table(records: Sequence[dict[str, Any]]) -> tuple[str, dict[str, dict[str, float]]]:
    by_metric: dict[str, list[float]] = {}
    for rec in records:
        for metric, cv in rec["cv"].items():
            by_metric.setdefault(metric, []).append(cv)
    summary = {}
    rows = []
    for metric in sorted(by_metric):
        values = sorted(by_metric[metric])
        worst = values[-1]
        summary[metric] = {
            "median_cv": values[len(values) // 2],
            "max_cv": worst,
            "suggested_tolerance": suggested_tolerance(worst),
        }
        rows.append(
            [
                metric,
                f"{values[len(values) // 2]:.2%}",
                f"{worst:.2%}",
                f"{suggested_tolerance(worst):.1%}",
                len(values),
            ]
        )
    table = tabulate(
        rows, headers=["metric", "median CV", "max CV", "suggested tolerance", "tests"], disable_numparse=True
    )
    return table, summary


def describe_gpus(state: LlmperfSession) -> str:
    gpus = state._gpus if state._gpus_detected else None
    if not gpus:
        return "none detected"
    return f"{len(gpus)}x {gpus[0].name} (driver {gpus[0].driver})"


def record_history(target: str, summary: dict[str, Any]) -> str:
    """Ingest this session into the history store; a store that cannot be written is said, not raised."""
    from pytest_llmperf.history.ingest import record
    from pytest_llmperf.history.store import HistoryError

    try:
        added = record(target, [summary])
    except HistoryError as exc:
        return f"not recorded: {redact_text(str(exc))}"
    return f"{added} run(s) recorded in {redact_text(target)}"  # a PostgreSQL URL may hold a password
