"""``llmperf history html OUT/``: a static dashboard that opens from disk, with no server and nothing fetched.

``index.html`` lists the suites (a suite: one test file) with their latest night; each suite's page has
its latest verdicts, its change points with what changed across them (engine version, suite commit,
hardware), and a trend chart per test and gated metric (inline SVG, ``history.charts``). One small
inline script filters the tests by name.
"""

from __future__ import annotations

import datetime as _dt
import html
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from pytest_llmperf import __version__
from pytest_llmperf.history.charts import chart_svg
from pytest_llmperf.history.series import GATED_SERIES, Change, Night, changes_of, suite_of

__all__ = ["write_dashboard"]

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: left; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.FAIL, .REGRESSION { color: #b00; font-weight: 600; } .PASS { color: #070; }
section.test { border-top: 1px solid #ccc; margin-top: 1em; }
figure.chart { margin: 0.3em 0; } figure.chart svg { width: 100%; height: auto; }
input#filter { font-size: 14px; padding: 3px 6px; width: 24em; }
"""

SCRIPT = """
document.getElementById("filter").addEventListener("input", function (event) {
  var text = event.target.value.toLowerCase();
  document.querySelectorAll("section.test").forEach(function (section) {
    section.hidden = text !== "" && section.dataset.test.toLowerCase().indexOf(text) < 0;
  });
});
"""


CHANGE_HEADERS = ["test", "metric", "first night after", "level", "step", "changed across it", "direction"]


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _page(title: str, body: str, *, script: str = "") -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n{body}\n"
        + (f"<script>{script}</script>" if script else "")
        + "</body></html>\n"
    )


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Rows of already-escaped cells; a cell starting with '<td' is taken as it is."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "suite"


def _latest_row(case: str, night: Night) -> list[str]:
    cells = [_e(case), _e(night.started[:16]), f'<td class="{_e(night.verdict)}">{_e(night.verdict)}</td>']
    for metric in GATED_SERIES:
        mean, ref = night.means.get(metric), night.reference.get(metric)
        shown = "-" if mean is None else f"{mean:,.2f}" + (f" ({(mean - ref) / ref:+.1%})" if ref else "")
        cells.append(f'<td class="num">{_e(shown)}</td>')
    cells.append(_e(night.engine_version))
    return cells


def _change_row(change: Change) -> list[str]:
    cp = change.point
    direction = "REGRESSION" if change.bad else "improvement"
    return [
        _e(change.case),
        _e(change.metric),
        _e(change.after.started[:16]),
        f'<td class="num">{_e(f"{cp.before:,.2f} -> {cp.after:,.2f}")}</td>',
        f'<td class="num">{_e(f"{cp.step:+.1%}")}</td>',
        _e("; ".join(change.across) or "-"),
        f'<td class="{direction}">{direction}</td>',
    ]


def _suite_page(suite: str, series: dict[str, list[Night]]) -> str:
    latest = [_latest_row(case, nights[-1]) for case, nights in sorted(series.items())]
    changes = {case: changes_of(case, nights) for case, nights in series.items()}
    change_rows = [_change_row(c) for case in sorted(changes) for c in changes[case]]
    sections = []
    for case, nights in sorted(series.items()):
        charts = "".join(
            f'<figure class="chart" data-metric="{_e(m)}">'
            + chart_svg(case, m, nights, [c for c in changes[case] if c.metric == m])
            + "</figure>"
            for m in GATED_SERIES
            if any(m in n.means for n in nights)
        )
        sections.append(f'<section class="test" data-test="{_e(case)}"><h3>{_e(case)}</h3>{charts}</section>')
    metric_heads = [f"{m} (vs reference)" for m in GATED_SERIES]
    body = (
        f'<p><a href="index.html">all suites</a></p><h1>{_e(suite)}</h1>'
        "<h2>Latest verdicts</h2>"
        + _table(["test", "night", "verdict", *metric_heads, "engine version"], latest)
        + "<h2>Change points</h2>"
        + (_table(CHANGE_HEADERS, change_rows) if change_rows else "<p>None found.</p>")
        + '<h2>Trends</h2><p><input id="filter" placeholder="filter tests by name"></p>'
        + "".join(sections)
    )
    return _page(f"{suite}: nightly history", body, script=SCRIPT)


def write_dashboard(series: dict[str, list[Night]], out_dir: Path) -> list[Path]:
    """Write ``index.html`` and one page per suite into ``out_dir``; returns the pages written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    by_suite: dict[str, dict[str, list[Night]]] = defaultdict(dict)
    for case, nights in series.items():
        by_suite[suite_of(nights[-1].nodeid)][case] = nights
    written, index_rows = [], []
    for suite, cases in sorted(by_suite.items()):
        name = f"suite-{_slug(suite)}.html"
        (out_dir / name).write_text(_suite_page(suite, cases), encoding="utf-8")
        written.append(out_dir / name)
        verdicts = Counter(nights[-1].verdict for nights in cases.values())
        last = max(nights[-1].started for nights in cases.values())
        index_rows.append(
            [
                f'<a href="{_e(name)}">{_e(suite)}</a>',
                f'<td class="num">{len(cases)}</td>',
                _e(last[:16]),
                _e(", ".join(f"{v} {k}" for k, v in sorted(verdicts.items()))),
            ]
        )
    made = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    body = (
        "<h1>pytest-llmperf: nightly history</h1>"
        + _table(["suite", "tests", "latest night", "latest verdicts"], index_rows)
        + f"<p>Written {_e(made)} by pytest-llmperf {_e(__version__)}.</p>"
    )
    (out_dir / "index.html").write_text(_page("pytest-llmperf nightly history", body), encoding="utf-8")
    return [out_dir / "index.html", *written]
