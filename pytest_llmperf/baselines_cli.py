"""``llmperf baselines list|show|prune`` and ``llmperf compare OLD NEW``."""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tabulate import tabulate

from pytest_llmperf.baseline import load_baseline
from pytest_llmperf.errors import BaselineError
from pytest_llmperf.gate import compare_samples, overall_verdict
from pytest_llmperf.report import summary_table

__all__ = ["baselines_main", "compare_main", "load_samples"]

LIST_METRICS = (
    ("total tok/s", "total_token_throughput"),
    ("output tok/s", "output_throughput"),
    ("req/s", "request_throughput"),
    ("TTFT ms", "mean_ttft_ms"),
    ("TPOT ms", "mean_tpot_ms"),
    ("ITL ms", "mean_itl_ms"),
)
_STAMP = re.compile(r"-\d{8}-\d{6}$")


def _files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise BaselineError(f"{root}: no such file or folder")
    return sorted(p for p in root.rglob("*.json") if "simulated" not in p.relative_to(root).parts[:1])


def _mean(values: list[float] | None) -> str:
    return f"{statistics.fmean(values):,.2f}" if values else "-"


def cmd_list(root: Path) -> int:
    rows = []
    for path in _files(root):
        b = load_baseline(path)
        if b is None:
            continue
        engine = f"{b.engine.get('engine', '?')} {b.engine.get('version') or ''}".strip()
        n = max((len(v) for v in b.metrics.values()), default=0)
        rows.append(
            [
                b.case,
                b.provenance.source,
                n,
                engine,
                b.hardware.get("gpus") or b.hardware.get("kind"),
                *(_mean(b.metrics.get(key)) for _, key in LIST_METRICS),
            ]
        )
    if not rows:
        print(f"no baselines under {root}")
        return 0
    headers = ["case", "source", "n", "engine", "hardware", *(label for label, _ in LIST_METRICS)]
    print(tabulate(rows, headers=headers, disable_numparse=True))
    print(f"\n{len(rows)} baseline(s) under {root}")
    return 0


def _find(root: Path, name: str) -> Path:
    p = Path(name)
    if p.is_file():
        return p
    hits = [f for f in _files(root) if f.stem == name]
    if len(hits) != 1:
        raise BaselineError(
            f"{name}: {'no' if not hits else len(hits)} baseline file(s) under {root} with that case id"
        )
    return hits[0]


def cmd_show(root: Path, name: str) -> int:
    path = _find(root, name)
    b = load_baseline(path)
    assert b is not None
    print(
        f"{path}\n  test:       {b.test}\n  engine:     {json.dumps(b.engine)}\n  hardware:   {json.dumps(b.hardware)}"
    )
    print(f"  provenance: {json.dumps(b.provenance.model_dump(mode='json'))}")
    if b.tolerance:
        print(f"  tolerance:  {json.dumps(b.tolerance)}")
    rows = []
    for key, values in sorted(b.metrics.items()):
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(
            [key, f"{statistics.fmean(values):,.4f}", f"{std:,.4f}", len(values), ", ".join(f"{v:g}" for v in values)]
        )
    print(tabulate(rows, headers=["metric", "mean", "std", "n", "samples"], disable_numparse=True))
    return 0


def cmd_prune(root: Path, paths: list[str], dry_run: bool) -> int:
    """Remove baselines that no test of the *whole* suite matches (collects it with no selection)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        listing = Path(tmp.name)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--llmperf-baseline-dir={root}",
            f"--llmperf-expected-baselines={listing}",
            *paths,
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode not in (0, 5) or not listing.read_text():
        print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
        print("llmperf baselines prune: collecting the suite failed; nothing removed", file=sys.stderr)
        return 2
    expected = {Path(p).resolve() for p in json.loads(listing.read_text())}
    stale = [p for p in _files(root) if p.resolve() not in expected]
    for path in stale:
        print(("would remove " if dry_run else "removed ") + str(path))
        if not dry_run:
            path.unlink()
    print(f"{len(stale)} stale baseline(s) of {len(expected)} expected")
    return 0


def baselines_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="llmperf baselines", description="Inspect and tidy baseline files.")
    sub = ap.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="one line per baseline: source, n, engine, hardware, key figures")
    p_list.add_argument("root", nargs="?", type=Path, default=Path("baselines"))
    p_show = sub.add_parser("show", help="every metric of one baseline with its samples")
    p_show.add_argument("name", help="a baseline file or a case id")
    p_show.add_argument("--root", type=Path, default=Path("baselines"))
    p_prune = sub.add_parser("prune", help="remove baselines that no test of the whole suite matches")
    p_prune.add_argument("paths", nargs="*", default=[], help="test paths of the whole suite (default: testpaths)")
    p_prune.add_argument("--root", type=Path, default=Path("baselines"))
    p_prune.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.command == "list":
            return cmd_list(args.root)
        if args.command == "show":
            return cmd_show(args.root, args.name)
        return cmd_prune(args.root, args.paths, args.dry_run)
    except BaselineError as exc:
        print(f"llmperf baselines: {exc}", file=sys.stderr)
        return 2


def load_samples(root: Path) -> dict[str, dict[str, list[float]]]:
    """Samples per case from baseline files or ``vllm bench serve`` result JSON (one run per file);
    result files that differ only by their timestamp are runs of one case."""
    out: dict[str, dict[str, list[float]]] = {}
    files = [root] if root.is_file() else sorted(root.rglob("*.json"))
    for path in files:
        try:
            data: Any = json.loads(path.read_text())
        except ValueError as exc:
            raise BaselineError(f"{path} is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            continue
        if "schema_version" in data:
            b = load_baseline(path)
            if b is not None:
                out.setdefault(b.case, {}).update(b.metrics)
            continue
        if "output_throughput" not in data:
            continue
        rel = path.name if root.is_file() else str(path.relative_to(root))
        key = _STAMP.sub("", rel.removesuffix(".json"))
        case = out.setdefault(key, {})
        for k, v in data.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None:
                case.setdefault(k, []).append(float(v))
    return out


def compare_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="llmperf compare",
        description="Compare two sets of results (baseline files, `vllm bench serve` JSON, or folders of either) "
        "with the gate's verdict logic; exits 1 on a regression. For an A/B of two engine versions: run the "
        "suite (or llmperf bench serve --save-result) once per version, then compare the two folders.",
    )
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--tolerance", type=float, default=0.05, help="relative tolerance of gated metrics")
    ap.add_argument("-v", "--verbose", action="store_true", help="also show the reported (ungated) metrics")
    args = ap.parse_args(argv)
    try:
        old, new = load_samples(args.old), load_samples(args.new)
    except BaselineError as exc:
        print(f"llmperf compare: {exc}", file=sys.stderr)
        return 2
    shared = sorted(set(old) & set(new))
    if not shared:
        print(f"llmperf compare: no case in common between {args.old} and {args.new}", file=sys.stderr)
        return 2
    records: list[dict[str, Any]] = []
    for case in shared:
        rows = compare_samples(old[case], new[case], tolerances={}, default_tolerance=args.tolerance)
        records.append(
            {"nodeid": case, "case": case, "verdict": overall_verdict(rows), "rows": [r.as_dict() for r in rows]}
        )
    print(summary_table(records, verbose=args.verbose))
    only = sorted(set(old) ^ set(new))
    if only:
        print(f"\nonly on one side (not compared): {', '.join(only)}")
    failed = [str(r["case"]) for r in records if r["verdict"] == "FAIL"]
    print(f"\n{len(records)} case(s) compared, {len(failed)} regressed" + (f": {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0
