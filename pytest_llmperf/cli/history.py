"""``llmperf history ingest|show``: the nightly history store (SQLite file, or a PostgreSQL URL).

llmperf history ingest --db history.sqlite REPORT_DIR [REPORT_DIR ...]
llmperf history show --db history.sqlite [-k TEXT] [--metric M] [--since DATE] [--nights N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from tabulate import tabulate

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
    return ap


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
        rows = store.runs_of(case_like=args.case, since=args.since)
        if not rows:
            print("llmperf history: no run matches", file=sys.stderr)
            return 1
        print(show_table(rows, args.metric, args.nights))
        return 0
    finally:
        store.close()
