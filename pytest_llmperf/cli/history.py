"""``llmperf history ingest|show|changes``: the nightly history store (SQLite file, or a PostgreSQL URL).

llmperf history ingest --db history.sqlite REPORT_DIR [REPORT_DIR ...]
llmperf history show --db history.sqlite [-k TEXT] [--metric M] [--since DATE] [--nights N]
llmperf history changes --db history.sqlite [-k TEXT] [--last 7]   (exit 1: a new regression step)
llmperf history plot --db history.sqlite [-k TEXT] [--metric M] [-o history-plots/]
llmperf history html --db history.sqlite OUT/                     (open OUT/index.html from disk)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tabulate import tabulate

from pytest_llmperf.history.ingest import ingest_dir
from pytest_llmperf.history.series import GATED_SERIES, changes_of, nightly_series
from pytest_llmperf.history.store import HistoryError, HistoryStore

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="llmperf history", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="verb", required=True)
    ing = sub.add_parser("ingest", help="add report folders (--llmperf-report-dir) to the store")
    ing.add_argument("--db", required=True, help="SQLite file path or database URL (postgresql://...)")
    ing.add_argument("dirs", nargs="+", type=Path)
    show = sub.add_parser("show", help="the recent nights of each test: value, change, verdict, engine version")
    show.add_argument("--db", required=True, help="SQLite file path or database URL")
    show.add_argument("-k", dest="case", default=None, help="only the cases whose id contains TEXT")
    show.add_argument("--metric", default="output_throughput")
    show.add_argument("--since", default=None, help="only nights started on or after DATE (YYYY-MM-DD)")
    show.add_argument("--nights", type=int, default=10, help="the last N nights of each test (default 10)")
    ch = sub.add_parser(
        "changes", help="change points of each test's gated metrics; exit 1 on a new one in the bad direction"
    )
    ch.add_argument("--db", required=True, help="SQLite file path or database URL")
    ch.add_argument("-k", dest="case", default=None, help="only the cases whose id contains TEXT")
    ch.add_argument(
        "--last",
        type=int,
        default=7,
        help="a bad change point in the last N nights fails (default 7; a step shows once 4 nights follow it)",
    )
    plot = sub.add_parser("plot", help="one PNG per test and gated metric (needs the 'plot' extra)")
    plot.add_argument("--db", required=True, help="SQLite file path or database URL")
    plot.add_argument("-k", dest="case", default=None, help="only the cases whose id contains TEXT")
    plot.add_argument("--metric", action="append", default=None, help="a metric to draw (repeatable; default: gated)")
    plot.add_argument("-o", "--out", type=Path, default=Path("history-plots"), help="folder (default history-plots)")
    page = sub.add_parser("html", help="a static dashboard that opens from disk (needs the 'plot' extra)")
    page.add_argument("--db", required=True, help="SQLite file path or database URL")
    page.add_argument("-k", dest="case", default=None, help="only the cases whose id contains TEXT")
    page.add_argument("out", type=Path, help="the folder to write index.html and one page per suite into")
    return ap


def _plot(rows: list[dict[str, Any]], metrics: list[str], out: Path) -> int:
    from pytest_llmperf.history.charts import write_png

    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for case, nights in sorted(nightly_series(rows).items()):
        changes = changes_of(case, nights, metrics)
        for metric in metrics:
            if any(metric in n.means for n in nights):
                write_png(case, metric, nights, [c for c in changes if c.metric == metric], out)
                written += 1
    print(f"llmperf history: {written} chart(s) written to {out}")
    return 0


def changes_report(rows: list[dict[str, Any]], last: int) -> tuple[str, list[str]]:
    """The change points as a table, and those in the bad direction within the last ``last`` nights."""
    table, alarms = [], []
    for case, nights in sorted(nightly_series(rows).items()):
        for change in changes_of(case, nights):
            cp = change.point
            new = cp.index >= len(nights) - last
            table.append(
                [
                    case,
                    change.metric,
                    change.after.started,
                    f"{cp.before:,.2f} -> {cp.after:,.2f}",
                    f"{cp.step:+.1%}",
                    "; ".join(change.across) or "-",
                    ("REGRESSION" if change.bad else "improvement") + (" (new)" if new else ""),
                ]
            )
            if change.bad and new:
                alarms.append(f"{case} {change.metric} {cp.step:+.1%} from {change.after.started}")
    headers = ["test", "metric", "first night after", "level", "step", "changed across it", "direction"]
    return tabulate(table, headers=headers, disable_numparse=True), alarms


def show_table(rows: list[dict[str, Any]], metric: str, nights: int) -> str:
    """Per test, one line per night: the mean of its runs, the change against its reference, the verdict."""
    out = []
    for case, series in sorted(nightly_series(rows).items()):
        for night in series[-nights:]:
            if metric not in night.means:
                continue
            mean, ref = night.means[metric], night.reference.get(metric)
            change = f"{(mean - ref) / ref:+.1%}" if ref else "-"
            verdict = night.verdict + ("" if night.accepted else " (not accepted)")
            runs = len(night.runs[metric])
            out.append([case, night.started, f"{mean:,.2f}", change, runs, verdict, night.engine_version])
    headers = ["test", "night", metric, "change", "runs", "verdict", "engine version"]
    return tabulate(out, headers=headers, disable_numparse=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.verb != "ingest" and "://" not in args.db and not Path(args.db).exists():  # only ingest creates a store
        print(f"llmperf history: no history store at {args.db} (record one with --llmperf-history)", file=sys.stderr)
        return 2
    try:
        store = HistoryStore(args.db)
    except HistoryError as exc:
        print(f"llmperf history: {exc}", file=sys.stderr)
        return 2
    try:
        if args.verb == "ingest":
            status = 0
            for folder in args.dirs:
                try:
                    added = ingest_dir(store, folder)
                except HistoryError as exc:
                    print(f"llmperf history: {exc}", file=sys.stderr)
                    status = 2
                    continue
                print(f"llmperf history: {folder}: {added} run(s) added" + ("" if added else " (already there)"))
            return status
        if args.verb == "changes":
            rows = store.runs_of(case_like=args.case)
            table, alarms = changes_report(rows, args.last)
            print(table)
            for alarm in alarms:
                print(f"llmperf history: new change point in the bad direction: {alarm}", file=sys.stderr)
            return 1 if alarms else 0
        if args.verb in ("plot", "html"):
            rows = store.runs_of(case_like=args.case)
            if not rows:
                print("llmperf history: no run matches", file=sys.stderr)
                return 1
            try:
                if args.verb == "plot":
                    return _plot(rows, args.metric or list(GATED_SERIES), args.out)
                from pytest_llmperf.history.dashboard import write_dashboard

                pages = write_dashboard(nightly_series(rows), args.out)
            except HistoryError as exc:
                print(f"llmperf history: {exc}", file=sys.stderr)
                return 2
            print(f"llmperf history: dashboard written: {pages[0]} ({len(pages) - 1} suite page(s))")
            return 0
        rows = store.runs_of(case_like=args.case, since=args.since)
        if not rows:
            print("llmperf history: no run matches", file=sys.stderr)
            return 1
        print(show_table(rows, args.metric, args.nights))
        return 0
    finally:
        store.close()
