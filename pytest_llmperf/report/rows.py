"""One verdict row per test and metric: the cells every table shows, built once for the terminal,
Markdown and the study view, with the verdict kept beside the cells so that colour comes from data."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from tabulate import tabulate

__all__ = ["HEADERS", "ORDER", "VerdictRow", "fmt_num", "table", "verdict_rows"]

ORDER = {"FAIL": 0, "NEW": 1, "INCONCLUSIVE": 2, "PASS": 3}  # regressions first
HEADERS = ("test", "metric", "baseline", "current", "change", "tol", "p", "n", "verdict")


def fmt_num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def fmt_change(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


@dataclass(frozen=True)
class VerdictRow:
    verdict: str  # PASS, FAIL, INCONCLUSIVE, NEW, or "info" for a metric that is reported, not gated
    cells: tuple[str, ...]  # in the order of HEADERS


def verdict_rows(records: Sequence[dict[str, Any]], *, reported: bool = False) -> Iterator[VerdictRow]:
    """Regressions first; gated metrics always, reported ones with ``reported``."""
    for rec in sorted(records, key=lambda r: (ORDER.get(r["verdict"], 9), r["nodeid"])):
        for row in rec["rows"]:
            if not row["gated"] and not reported:
                continue
            verdict = row["verdict"] if row["gated"] else "info"
            shown = verdict + (" (updated)" if rec.get("updated") and row["gated"] else "")
            yield VerdictRow(
                verdict,
                (
                    rec["case"],
                    row["metric"],
                    fmt_num(row["baseline"]),
                    fmt_num(row["current"]),
                    fmt_change(row["change"]),
                    "0" if row["metric"] == "failed" else f"{row['tolerance']:.0%}",
                    "-" if row["p_value"] is None else f"{row['p_value']:.3g}",
                    f"{row['n_baseline']}/{row['n_current']}",
                    shown,
                ),
            )


def table(rows: Sequence[VerdictRow], *, markdown: bool = False) -> list[str]:
    """The table's lines: a header, a rule, then one line per row, in the order of ``rows``."""
    if markdown:
        cells = [
            (f"`{r.cells[0]}`", *r.cells[1:-1], f"**{r.cells[-1]}**" if r.verdict == "FAIL" else r.cells[-1])
            for r in rows
        ]
        return tabulate(cells, headers=HEADERS, tablefmt="github", disable_numparse=True).splitlines()
    return tabulate([r.cells for r in rows], headers=HEADERS, tablefmt="simple", disable_numparse=True).splitlines()
