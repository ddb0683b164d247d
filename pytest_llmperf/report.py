"""What the terminal shows at the end of a run: one row per test and gated (or reported) metric."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from tabulate import tabulate

from pytest_llmperf.session import LlmperfSession

__all__ = ["RESULT_PROPERTY", "ResultCollector", "summary_table"]

RESULT_PROPERTY = "llmperf"

_ORDER = {"FAIL": 0, "NEW": 1, "INCONCLUSIVE": 2, "PASS": 3}


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.2f}"


def summary_table(records: Sequence[dict[str, Any]], *, verbose: bool = False) -> str:
    """Regressions first; gated metrics always, reported metrics with ``-v``."""
    rows = []
    for rec in sorted(records, key=lambda r: (_ORDER.get(r["verdict"], 9), r["nodeid"])):
        for row in rec["rows"]:
            if not row["gated"] and not verbose:
                continue
            change = "-" if row["change"] is None else f"{row['change']:+.1%}"
            tol = f"{row['tolerance']:.0%}" if row["metric"] != "failed" else "0"
            p = "-" if row["p_value"] is None else f"{row['p_value']:.3g}"
            verdict = row["verdict"] + (" (updated)" if rec.get("updated") else "")
            if not row["gated"]:
                verdict = "info"
            rows.append(
                [
                    rec["case"],
                    row["metric"],
                    _num(row["baseline"]),
                    _num(row["current"]),
                    change,
                    tol,
                    p,
                    f"{row['n_baseline']}/{row['n_current']}",
                    verdict,
                ]
            )
    headers = ["test", "metric", "baseline", "current", "change", "tol", "p", "n", "verdict"]
    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)


class ResultCollector:
    """Collects each perf test's verdict rows (also from pytest-xdist workers) and prints the summary."""

    def __init__(self, state: LlmperfSession) -> None:
        self.state = state

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        for name, value in report.user_properties:
            if name == RESULT_PROPERTY:
                self.state.results.append(json.loads(str(value)))

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
        state = self.state
        if not state.results:
            return
        tr = terminalreporter
        tr.write_sep("=", "llmperf results")
        tr.write_line(summary_table(state.results, verbose=config.get_verbosity() > 0))
        for path in state.written:
            tr.write_line(f"llmperf: wrote baseline {state.relative(path)}")
