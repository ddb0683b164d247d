"""llmperf report DIR [DIR ...]: one summary, one study view and one exit code over result folders.

A folder is a --llmperf-report-dir of one run or of one shard (summary.json), or a folder of
baseline files (the suite's published results, for instance). Several folders are merged; a folder
that is missing, or a shard that did not write its summary, is named and makes the exit code 2.
Exit code 1 when any merged test regressed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from pytest_llmperf.config import EngineConfig, find_matrices
from pytest_llmperf.engines.launch import canonical_command
from pytest_llmperf.errors import BaselineError, ConfigError
from pytest_llmperf.gate.baseline import load_baseline
from pytest_llmperf.report.files import markdown_summary
from pytest_llmperf.report.study import Entry, StudyView, build_view, render_markdown
from pytest_llmperf.report.terminal import summary_table

__all__ = ["main"]


class InputError(Exception):
    pass


def _configs(matrix: Path | None) -> dict[str, EngineConfig]:
    if matrix is None:
        return {}
    return {cfg.id: cfg for _, m in find_matrices(matrix) for cfg in m.engines}


def load_dir(path: Path, configs: dict[str, EngineConfig]) -> tuple[list[dict[str, Any]], list[Entry], str | None]:
    """(test records, study entries, shard "K/N" or None) of one folder."""
    if not path.is_dir():
        raise InputError(f"{path}: missing (a shard that never ran, or a wrong path)")
    summary = path / "summary.json"
    if summary.is_file():
        try:
            data = json.loads(summary.read_text())
        except ValueError as exc:
            raise InputError(f"{summary}: not valid JSON ({exc}); the shard's run did not finish writing it") from None
        records = list(data.get("tests", []))
        entries = [
            Entry(
                r["config"],
                r.get("engine", ""),
                r["workload"],
                r.get("means", {}),
                r.get("knob"),
                r.get("derives_from"),
                r.get("command", ""),
                str(r.get("simulated") or ""),
            )
            for r in records
            if r.get("config") and r.get("workload")
        ]
        return records, entries, data.get("shard")
    entries = []
    for file in sorted(path.rglob("*.json")):
        try:
            b = load_baseline(file)
        except BaselineError:
            continue
        if b is None:
            continue
        # the baseline carries its study place (knob, derives_from) and command; a --matrix fills older files
        cfg = configs.get(str(b.engine.get("id")))
        knob = b.engine.get("knob") or (cfg.knob if cfg else None)
        derives_from = b.engine.get("derives_from") or (cfg.derives_from if cfg else None)
        command = str(b.engine.get("command") or (canonical_command(cfg) if cfg else ""))
        simulated = ""
        if b.hardware.get("kind") == "simulated":
            cal = b.hardware.get("calibration", "uncalibrated")
            simulated = f"llmperf-sim, profile {b.hardware.get('profile', '?')} ({cal})"
        entries.append(
            Entry(
                str(b.engine.get("id")),
                str(b.engine.get("engine", "")),
                str(b.workload.get("id", "")),
                {k: statistics.fmean(v) for k, v in b.metrics.items() if v},
                str(knob) if knob else None,
                str(derives_from) if derives_from else None,
                command,
                simulated,
            )
        )
    if not entries:
        raise InputError(f"{path}: no summary.json and no baseline files: the shard failed to report")
    return [], entries, None


def plot(view: StudyView, entries: list[Entry], out_dir: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("llmperf report --plot needs matplotlib: pip install 'pytest-llmperf[plot]'") from None
    written = []
    ref = sorted(
        (e for e in entries if e.workload == view.workload and "total_token_throughput" in e.metrics),
        key=lambda e: e.metrics["total_token_throughput"],
    )
    if ref:
        fig, ax = plt.subplots(figsize=(9, 0.35 * len(ref) + 1.5))
        ax.barh([e.config for e in ref], [e.metrics["total_token_throughput"] for e in ref], color="#4c72b0")
        ax.set_xlabel("total token throughput (tok/s)")
        ax.set_title(f"{view.workload}: throughput per configuration")
        fig.tight_layout()
        path = out_dir / "throughput-by-config.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    rows = [(w, b, n) for w, b, n in view.comparison if b or n]
    if rows:
        fig, ax = plt.subplots(figsize=(9, 4))
        xs = range(len(rows))
        base = [b.metrics.get("total_token_throughput", 0) if b else 0 for _, b, _ in rows]
        best = [n.metrics.get("total_token_throughput", 0) if n else 0 for _, _, n in rows]
        ax.bar([x - 0.2 for x in xs], base, width=0.4, label=view.start.config if view.start else "baseline")
        ax.bar([x + 0.2 for x in xs], best, width=0.4, label=view.best.config if view.best else "best")
        ax.set_xticks(list(xs), [w for w, _, _ in rows], rotation=20, ha="right")
        ax.set_ylabel("total token throughput (tok/s)")
        ax.set_title("baseline vs best configuration per workload")
        ax.legend()
        fig.tight_layout()
        path = out_dir / "throughput-by-workload.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def _record_history(target: str, folders: list[Path]) -> tuple[str, str]:
    """(what was recorded, the problem when the store could not be written)."""
    from pytest_llmperf.history.ingest import read_summary, record
    from pytest_llmperf.history.store import HistoryError
    from pytest_llmperf.redact import redact_text

    shown = redact_text(target)
    try:
        added = record(target, [read_summary(folder) for folder in folders])
    except HistoryError as exc:
        return "not recorded", f"history store {shown}: {redact_text(str(exc))}"
    return f"{added} run(s) of {len(folders)} report folder(s) recorded in {shown}", ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="llmperf report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("dirs", nargs="+", type=Path, help="report folders (one per shard) or baseline folders")
    ap.add_argument(
        "--matrix",
        type=Path,
        default=None,
        help="matrix file or folder giving knobs and derivations to baseline files written before they "
        "carried them (results and current baselines carry their own; the current folder is never searched)",
    )
    ap.add_argument("--workload", default="sharegpt", help="the reference workload of the study view")
    ap.add_argument(
        "--out", type=Path, default=None, help="also write the report as Markdown to this file (default: print only)"
    )
    ap.add_argument(
        "--plot", action="store_true", help="also draw PNG charts beside the --out file (needs the 'plot' extra)"
    )
    ap.add_argument(
        "--llmperf-history",
        dest="history",
        metavar="URL",
        default=None,
        help="also record the report folders' runs in this history store (a SQLite file or postgresql://...): "
        "the merged night of a sharded nightly; a folder already there adds nothing",
    )
    args = ap.parse_args(argv)
    if args.plot and args.out is None:
        ap.error("--plot writes its PNG files beside the report: give --out FILE (e.g. --out report/study.md)")
    matrix = args.matrix
    problems: list[str] = []
    records: list[dict[str, Any]] = []
    entries: list[Entry] = []
    try:
        configs = _configs(matrix)
    except ConfigError as exc:
        print(f"llmperf report: {exc}", file=sys.stderr)
        return 2
    shards: dict[int, Path] = {}
    total_shards = 0
    for d in args.dirs:
        try:
            r, e, shard = load_dir(d, configs)
        except InputError as exc:
            problems.append(str(exc))
            continue
        records += r
        entries += e
        if shard:
            k, n = (int(x) for x in shard.split("/"))
            if k in shards:
                problems.append(f"shard {shard} appears twice: {shards[k]} and {d}")
            shards[k] = d
            total_shards = max(total_shards, n)
    for k in range(1, total_shards + 1):
        if k not in shards:
            problems.append(f"shard {k}/{total_shards} did not report: no folder with its summary.json was given")
    seen: dict[str, str] = {}
    for rec in records:  # a test reported by two shards is a sharding error: never silently merged
        if rec["nodeid"] in seen:
            problems.append(f"{rec['nodeid']} was reported twice")
        seen[rec["nodeid"]] = rec["verdict"]
    parts = []
    if any(r.get("rows") for r in records):  # a replay's summary (llmperf sim calibrate) has no verdicts
        print(summary_table(records))
        parts.append(markdown_summary(records, title="Verdicts"))
    view = build_view(entries, workload=args.workload)
    study = render_markdown(view)
    print()
    print(study)
    parts.append(study)
    present = sorted({e.workload for e in entries})
    if entries and args.workload not in present:
        print(
            f"llmperf report: no result of workload {args.workload!r}, the study view's reference; the workloads "
            f"here are {', '.join(present)}: pass --workload NAME",
            file=sys.stderr,
        )
    out = args.out
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(parts))
        print(f"llmperf report: wrote {out}")
    if args.plot and out is not None:
        try:
            for path in plot(view, entries, out.parent):
                print(f"llmperf report: wrote {path}")
        except InputError as exc:
            print(f"llmperf report: {exc}", file=sys.stderr)
            return 2
    if args.history:
        said, problem = _record_history(args.history, [d for d in args.dirs if (d / "summary.json").is_file()])
        print(f"llmperf report: history: {said}")
        problems += [problem] if problem else []
    for problem in problems:
        print(f"llmperf report: {problem}", file=sys.stderr)
    if problems:
        return 2
    failed = sorted(r["case"] for r in records if r["verdict"] == "FAIL")
    if failed:
        print(f"llmperf report: {len(failed)} regressed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
