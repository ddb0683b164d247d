"""``llmperf history ingest|show|changes``: the nightly history store (SQLite file, or a PostgreSQL URL).

llmperf history ingest --db history.sqlite REPORT_DIR [REPORT_DIR ...]
llmperf history show --db history.sqlite [-k TEXT] [--metric M] [--since DATE] [--nights N]
llmperf history changes --db history.sqlite [-k TEXT] [--last 7]   (exit 1: a new regression step)
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from tabulate import tabulate

from pytest_llmperf.gate.decision import DEFAULT_GATED
from pytest_llmperf.history.ingest import ingest_dir
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
    return ap


GATED_SERIES = tuple(m for m in DEFAULT_GATED if m != "failed")  # the gated performance metrics


def nightly_series(rows: list[dict[str, Any]]) -> dict[str, list[tuple[dict[str, Any], dict[str, float]]]]:
    """Per case, its nights in order: (the night's first run row, the mean of each metric over its runs)."""
    by_case: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_case[row["case_id"]][row["session_uid"]].append(row)
    out = {}
    for case, sessions in by_case.items():
        nights = sorted(sessions.values(), key=lambda runs: (runs[0]["started"], runs[0]["session_uid"]))
        out[case] = [
            (
                runs[0],
                {m: statistics.fmean(r["metrics"][m] for r in runs) for m in GATED_SERIES if m in runs[0]["metrics"]},
            )
            for runs in nights
        ]
    return out


def changes_report(rows: list[dict[str, Any]], last: int) -> tuple[str, list[str]]:
    """The change points as a table, and those in the bad direction within the last ``last`` nights."""
    from pytest_llmperf.gate.decision import higher_is_better
    from pytest_llmperf.history.changes import change_points

    table, alarms = [], []
    for case, nights in sorted(nightly_series(rows).items()):
        for metric in GATED_SERIES:
            series = [means[metric] for _, means in nights if metric in means]
            if len(series) != len(nights):
                continue
            for cp in change_points(series):
                before, after = nights[cp.index - 1][0], nights[cp.index][0]
                across = [
                    f"{label} {before[key]} -> {after[key]}"
                    for label, key in (("engine", "engine_version"), ("hardware", "hardware"))
                    if before[key] != after[key]
                ]
                bad = cp.step < 0 if higher_is_better(metric) else cp.step > 0
                new = cp.index >= len(nights) - last
                table.append(
                    [
                        case,
                        metric,
                        after["started"],
                        f"{cp.before:,.2f} -> {cp.after:,.2f}",
                        f"{cp.step:+.1%}",
                        "; ".join(across) or "-",
                        ("REGRESSION" if bad else "improvement") + (" (new)" if new else ""),
                    ]
                )
                if bad and new:
                    alarms.append(f"{case} {metric} {cp.step:+.1%} from {after['started']}")
    headers = ["test", "metric", "first night after", "level", "step", "changed across it", "direction"]
    return tabulate(table, headers=headers, disable_numparse=True), alarms


def show_table(rows: list[dict[str, Any]], metric: str, nights: int) -> str:
    """Per test, one line per night: the mean of its runs, the change against its reference, the verdict."""
    by_case: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_case[row["case_id"]][row["session_uid"]].append(row)
    out = []
    for case in sorted(by_case):
        sessions = sorted(by_case[case].values(), key=lambda runs: (runs[0]["started"], runs[0]["session_uid"]))
        for runs in sessions[-nights:]:
            values = [r["metrics"][metric] for r in runs if metric in r["metrics"]]
            if not values:
                continue
            mean = statistics.fmean(values)
            ref = runs[0]["reference"].get(metric)
            change = f"{(mean - ref) / ref:+.1%}" if ref else "-"
            verdict = runs[0]["verdict"] + ("" if runs[0]["accepted"] else " (not accepted)")
            out.append(
                [case, runs[0]["started"], f"{mean:,.2f}", change, len(values), verdict, runs[0]["engine_version"]]
            )
    headers = ["test", "night", metric, "change", "runs", "verdict", "engine version"]
    return tabulate(out, headers=headers, disable_numparse=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.verb == "show" and "://" not in args.db and not Path(args.db).exists():  # show never creates a store
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
        rows = store.runs_of(case_like=args.case, since=args.since)
        if not rows:
            print("llmperf history: no run matches", file=sys.stderr)
            return 1
        print(show_table(rows, args.metric, args.nights))
        return 0
    finally:
        store.close()
