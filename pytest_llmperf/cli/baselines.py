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

from pytest_llmperf.errors import BaselineError
from pytest_llmperf.gate.baseline import SCHEMA_VERSION, load_baseline, write_baseline
from pytest_llmperf.gate.decision import DEFAULT_TOLERANCE, compare_samples, overall_verdict
from pytest_llmperf.gate.identity import dataset_identity
from pytest_llmperf.gate.suite import SuitePolicy
from pytest_llmperf.report.terminal import summary_table

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
_RUN = re.compile(r"^run-\d+\.json$")


def _files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise BaselineError(f"{root}: no such file or folder")
    return sorted(p for p in root.rglob("*.json") if "simulated" not in p.relative_to(root).parts[:1])


def _mean(values: list[float] | None) -> str:
    return f"{statistics.fmean(values):,.2f}" if values else "-"


def _hardware(key: dict[str, Any]) -> str:
    """The hardware column: the GPUs, else the CPU (a CPU engine's node says gpus 'none'), else the kind."""
    gpus = key.get("gpus")
    if gpus and gpus != "none":
        return str(gpus)
    if key.get("cpu"):
        return f"{key['cpu']}" + (f" ({key['cpu_isa']})" if key.get("cpu_isa") else "")
    return str((key.get("profile") and f"{key.get('kind')} ({key['profile']})") or key.get("kind", "?"))


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
                _hardware(b.hardware),
                *(_mean(b.metrics.get(key)) for _, key in LIST_METRICS),
            ]
        )
    if not rows:
        print(f"no baselines under {root}")
        return 0
    headers = ["case", "source", "n", "engine", "hardware", *(label for label, _ in LIST_METRICS)]
    print(tabulate(rows, headers=headers, disable_numparse=True))
    simulated = root / "simulated"
    more = len(list(simulated.rglob("*.json"))) if root.is_dir() and simulated.is_dir() else 0
    also = f"; {more} more of --llmperf-simulate runs: llmperf baselines list {simulated}" if more else ""
    print(f"\n{len(rows)} baseline(s) under {root}{also}")
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


def cmd_prune(root: Path, paths: list[str], yes: bool) -> int:
    """Baselines that no test of the collected suite matches, among the test modules it covers: listed, and
    removed only with ``--yes``. A suite that expects no baseline at all removes nothing."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        listing = Path(tmp.name)
    try:
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
        text = listing.read_text()
    finally:
        listing.unlink(missing_ok=True)
    where = " ".join(paths) or "the default test paths (ini testpaths)"
    if proc.returncode not in (0, 5) or not text:
        print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
        print(f"llmperf baselines prune: collecting {where} failed; nothing removed", file=sys.stderr)
        return 2
    collected = json.loads(text)
    expected = {Path(p).resolve() for p in collected["baselines"]}
    covered = {Path(p).resolve() for p in collected["modules"]}
    if not expected:
        print(
            f"llmperf baselines prune: {where} holds no perf test, so every baseline would look stale; nothing "
            "removed. Name the perf-test paths of the whole suite, e.g. `llmperf baselines prune perf_tests`.",
            file=sys.stderr,
        )
        return 2
    files = _files(root)
    stale = [p for p in files if p.resolve() not in expected and p.resolve().parent.parent in covered]
    kept = [p for p in files if p.resolve().parent.parent not in covered]
    for path in stale:
        print(("removed " if yes else "would remove ") + str(path))
        if yes:
            path.unlink()
    print(
        f"{len(stale)} stale baseline(s) of {len(expected)} expected"
        + (f"; {len(kept)} of test modules not collected from {where} left alone" if kept else "")
    )
    if stale and not yes:
        print("Nothing removed: re-run with --yes to remove them.")
    return 0


def cmd_migrate(root: Path, dataset: str | None) -> int:
    """Rewrite older-schema baselines in the current schema, measurements untouched; ``--dataset PATH`` records
    that prompt file's identity in ShareGPT baselines that lack one (say which file they were measured on)."""
    identity = dataset_identity(dataset) if dataset else None
    changed = 0
    for path in _files(root):
        old = json.loads(path.read_text())
        b = load_baseline(path)
        if b is None:
            continue
        if identity is not None and b.dataset is None and b.workload.get("dataset") == "sharegpt":
            b = b.model_copy(update={"dataset": identity})
        if old.get("schema_version") != SCHEMA_VERSION or b.dataset != old.get("dataset"):
            write_baseline(path, b)
            changed += 1
            print(f"migrated {path}")
    print(f"{changed} baseline(s) rewritten in schema {SCHEMA_VERSION}")
    return 0


def baselines_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="llmperf baselines", description="Inspect and tidy baseline files.")
    sub = ap.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="one line per baseline: source, n, engine, hardware, key figures")
    p_list.add_argument("root", nargs="?", type=Path, default=Path("baselines"))
    p_migrate = sub.add_parser("migrate", help="rewrite older-schema baselines in the current schema")
    p_migrate.add_argument("root", nargs="?", type=Path, default=Path("baselines"))
    p_migrate.add_argument(
        "--dataset", metavar="PATH", help="the prompt file that ShareGPT baselines without one were measured on"
    )
    p_show = sub.add_parser("show", help="every metric of one baseline with its samples")
    p_show.add_argument("name", help="a baseline file or a case id")
    p_show.add_argument("--root", type=Path, default=Path("baselines"))
    p_prune = sub.add_parser(
        "prune", help="list (with --yes: remove) baselines that no test of the collected suite matches"
    )
    p_prune.add_argument("paths", nargs="*", default=[], help="perf-test paths of the whole suite (e.g. perf_tests)")
    p_prune.add_argument("--root", type=Path, default=Path("baselines"))
    p_prune.add_argument("--yes", action="store_true", help="remove the stale baselines listed (default: list only)")
    p_prune.add_argument("--dry-run", action="store_true", help="list only (the default; kept for old scripts)")
    args = ap.parse_args(argv)
    try:
        if args.command == "list":
            return cmd_list(args.root)
        if args.command == "migrate":
            return cmd_migrate(args.root, args.dataset)
        if args.command == "show":
            return cmd_show(args.root, args.name)
        return cmd_prune(args.root, args.paths, args.yes and not args.dry_run)
    except BaselineError as exc:
        print(f"llmperf baselines: {exc}", file=sys.stderr)
        return 2


def load_samples(root: Path) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, float]]]:
    """Samples per case, and per-metric tolerances where a baseline file sets them, from baseline files,
    ``vllm bench serve`` result JSON, or report folders (``--llmperf-report-dir``). A report folder's
    ``results/<case>/run-<i>.json`` are the runs of one case; result files that differ only by their
    timestamp are runs of one case; ``summary.json`` and other JSON are not results and are skipped."""
    if not root.exists():
        raise BaselineError(f"{root}: no such file or folder")
    samples: dict[str, dict[str, list[float]]] = {}
    tolerances: dict[str, dict[str, float]] = {}
    files = [root] if root.is_file() else sorted(root.rglob("*.json"))
    for path in files:
        try:
            data: Any = json.loads(path.read_text())
        except ValueError as exc:
            raise BaselineError(f"{path} is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            continue
        if "schema_version" in data and "metrics" in data:
            b = load_baseline(path)
            if b is not None:
                samples.setdefault(b.case, {}).update(b.metrics)
                tolerances.setdefault(b.case, {}).update(b.tolerance)
            continue
        if "output_throughput" not in data or "tests" in data:
            continue
        if _RUN.match(path.name) and path.parent.parent.name == "results":
            key = path.parent.name  # a report folder: results/<case>/run-<i>.json
        else:
            rel = path.name if root.is_file() else str(path.relative_to(root))
            key = _STAMP.sub("", rel.removesuffix(".json"))
        case = samples.setdefault(key, {})
        for k, v in data.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                case.setdefault(k, []).append(float(v))
    return samples, tolerances


def engines_of(root: Path) -> dict[str, str]:
    """Per case, the engine that ran it (its image and the version the server reported), from the report
    folders' ``summary.json`` under ``root``."""
    out: dict[str, str] = {}
    for path in [root] if root.is_file() else sorted(root.rglob("summary.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for rec in data.get("tests", []) if isinstance(data, dict) else []:
            version, image = rec.get("engine_version"), rec.get("image")
            if rec.get("case") and (version or image):
                out[str(rec["case"])] = " ".join(
                    part for part in (image, f"(version {version})" if version else "") if part
                )
    return out


def compare_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="llmperf compare",
        description="Compare two sets of results (baseline files, `vllm bench serve` JSON, report folders, or "
        "folders of either) with the gate's own decision: its default tolerance, a baseline file's per-metric "
        "tolerances, the t-test on run-level samples. Exits 1 on a regression. For an A/B of two engine versions: "
        "run the suite (or llmperf bench serve --save-result) once per version, then compare the two folders.",
    )
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help=f"relative tolerance of gated metrics without their own (default {DEFAULT_TOLERANCE:g}, as the gate)",
    )
    ap.add_argument(
        "--night-cv", type=float, default=0.0, help="night-to-night variation of the metrics, as --llmperf-night-cv"
    )
    ap.add_argument("-v", "--verbose", action="store_true", help="also show the reported (ungated) metrics")
    args = ap.parse_args(argv)
    if not 0 < args.tolerance < 1:
        ap.error(f"--tolerance must be a fraction in (0, 1) (0.06 is 6%), got {args.tolerance}")
    try:
        (old, tolerances), (new, _) = load_samples(args.old), load_samples(args.new)
    except BaselineError as exc:
        print(f"llmperf compare: {exc}", file=sys.stderr)
        return 2
    shared = sorted(set(old) & set(new))
    if not shared:
        print(f"llmperf compare: no case in common between {args.old} and {args.new}", file=sys.stderr)
        return 2
    # the gate's own decision: the compared cases are the suite that shares the false-alarm budget
    policy = SuitePolicy(n_tests=len(shared), night_cv=args.night_cv)
    records: list[dict[str, Any]] = []
    for case in shared:
        rows = compare_samples(
            old[case], new[case], tolerances=tolerances.get(case, {}), default_tolerance=args.tolerance, policy=policy
        )
        records.append(
            {"nodeid": case, "case": case, "verdict": overall_verdict(rows), "rows": [r.as_dict() for r in rows]}
        )
    print(summary_table(records, verbose=args.verbose))
    print(f"gate: {policy.describe()}")
    before, after = engines_of(args.old), engines_of(args.new)
    for case in shared:  # an A/B of engine versions or images: name what ran on each side
        if case in before or case in after:
            print(f"engine: {case}: {before.get(case, '?')} -> {after.get(case, '?')}")
    only = sorted(set(old) ^ set(new))
    if only:
        print(f"\nonly on one side (not compared): {', '.join(only)}")
    failed = [str(r["case"]) for r in records if r["verdict"] == "FAIL"]
    print(f"\n{len(records)} case(s) compared, {len(failed)} regressed" + (f": {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0
