"""The history store at nightly scale: ingest ~100,000 run rows, then one test's trend over a year.

34 tests x 3 runs x ``--nights`` nights of synthetic summaries go into a fresh store (a SQLite file by
default, or ``--db URL``), one night per ingest as a nightly job does; then the runs of one test over
its last 365 nights are read back, ``--queries`` times.

    python benchmarks/history_scale.py [--nights 1000] [--db PATH_OR_URL]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pytest_llmperf.history.ingest import ingest_summary
from pytest_llmperf.history.store import HistoryStore


def night(i: int, tests: int, runs: int) -> dict[str, Any]:
    started = (dt.datetime(2024, 1, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(days=i)).isoformat()
    return {
        "run_uid": f"night-{i:05d}",
        "started": started,
        "environment": {"plugin_version": "0.1.0"},
        "tests": [
            {
                "nodeid": f"perf_tests/study/test_deepseek_v32_h200.py::test_serving[config{t:02d}-sharegpt]",
                "case": f"config{t:02d}-sharegpt",
                "config": f"config{t:02d}",
                "workload": "sharegpt",
                "engine": "vllm",
                "engine_version": "0.13.0",
                "verdict": "PASS",
                "hardware": {"kind": "host", "gpus": "8x NVIDIA H200"},
                "samples": {
                    "output_throughput": [2700.0 + r for r in range(runs)],
                    "total_token_throughput": [5700.0 + r for r in range(runs)],
                    "mean_tpot_ms": [90.0 + r / 10 for r in range(runs)],
                    "failed": [0.0] * runs,
                },
                "rows": [{"metric": "output_throughput", "baseline": 2701.0}],
            }
            for t in range(tests)
        ],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nights", type=int, default=1000)
    ap.add_argument("--tests", type=int, default=34)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--db", default=None, help="a SQLite path or database URL (default: a temporary SQLite file)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        target = args.db or str(Path(tmp) / "history.sqlite")
        store = HistoryStore(target)
        started = time.perf_counter()
        for i in range(args.nights):
            ingest_summary(store, night(i, args.tests, args.runs))
        ingest_s = time.perf_counter() - started
        rows = store.count()
        since = (dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(days=args.nights - 365)).isoformat()
        times = []
        for _ in range(args.queries):
            t0 = time.perf_counter()
            trend = store.runs_of(case_id="config07-sharegpt", since=since)
            times.append(time.perf_counter() - t0)
        store.close()
    print(
        f"{rows:,} run rows from {args.nights} nights ingested in {ingest_s:.1f} s "
        f"({ingest_s / args.nights * 1000:.1f} ms a night); one test's last 365 nights ({len(trend)} rows): "
        f"median {statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms over {args.queries} queries"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
