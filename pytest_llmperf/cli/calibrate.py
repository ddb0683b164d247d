"""``llmperf sim calibrate RESULTS... -o PROFILE.toml``: fit the simulated engine's profiles to measured results.

RESULTS are baseline files or report folders (their result ``*.json`` files). Each engine family is fitted on
the calibration workload (``--workload``, default sharegpt): its base on its root configuration, then each
configuration's knob factors along ``derives_from``. It prints every fitted value with its bounds and the fit's
residuals, and with ``--check`` also the predictions of the results on other workloads (held out), the
leave-one-out errors, and the rank correlation on the calibration workload.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scipy.stats import spearmanr
from tabulate import tabulate

from pytest_llmperf.errors import LlmperfError
from pytest_llmperf.sim.calibrate import TARGETS, Measured, calibrate, leave_one_out, predict, read_results
from pytest_llmperf.sim.calibrated import BASE_BOUNDS, ProfileSet, factor_bounds

__all__ = ["main"]

SHOWN = ("total_token_throughput", "output_throughput", "mean_tpot_ms", "median_itl_ms", "mean_ttft_ms")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="llmperf sim calibrate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("results", nargs="+", type=Path, help="baseline files or report folders")
    ap.add_argument("-o", "--out", type=Path, required=True, help="the profile file to write (TOML)")
    ap.add_argument("--workload", default="sharegpt", help="the workload to calibrate on (default sharegpt)")
    ap.add_argument("--check", action="store_true", help="also: held-out predictions, leave-one-out, rank order")
    ap.add_argument(
        "--simulate-into",
        type=Path,
        default=None,
        metavar="DIR",
        help="also replay every result with the new profiles and write DIR/summary.json (labelled simulated): "
        "`llmperf report DIR` then gives the study view the simulator predicts",
    )
    return ap


def simulated_summary(ps: ProfileSet, results: Sequence[Measured]) -> dict[str, Any]:
    """A report folder's summary of ``results`` replayed on ``ps``: every record says it is a simulation."""
    records = []
    for m in results:
        label = f"llmperf-sim, H200 profiles {ps.label} (virtual-time replay)"
        means = predict(ps, m)
        records.append(
            {
                "nodeid": f"simulated::{m.config}-{m.workload}",
                "case": f"{m.config}-{m.workload}",
                "config": m.config,
                "engine": m.engine,
                "workload": m.workload,
                "knob": m.knob,
                "derives_from": m.derives_from,
                "command": m.command,
                "simulated": label,
                "verdict": "NEW",
                "rows": [],
                "notes": [f"replayed from {m.source}"],
                "means": means,
            }
        )
    return {"schema_version": 1, "simulated": sorted({r["simulated"] for r in records}), "tests": records}


def _pct(pred: float, meas: float) -> str:
    return f"{pred / meas - 1:+.1%}" if meas else "-"


def _fit_table(ps: ProfileSet) -> str:
    rows = []
    for engine, fam in ps.families.items():
        for name, (lo, hi) in BASE_BOUNDS.items():
            v = fam.base[name]
            edge = " (at a bound)" if v <= lo * 1.01 or v >= hi * 0.99 else ""
            rows.append([engine, "base", name, f"{v:.4g}", f"[{lo:g}, {hi:g}]{edge}", fam.fitted_on.get("base", "")])
        for key, factors in fam.knobs.items():
            for name, v in factors.items():
                lo, hi = factor_bounds(name)
                edge = " (at a bound)" if v <= lo * 1.01 or v >= hi * 0.99 else ""
                rows.append([engine, key, name, f"{v:.3f}", f"[{lo:g}, {hi:g}]{edge}", fam.fitted_on.get(key, "")])
    return tabulate(rows, headers=("engine", "setting", "parameter", "value", "bounds", "fitted on"))


def _residual_table(ps: ProfileSet, ms: Sequence[Measured]) -> tuple[str, dict[str, float]]:
    rows = []
    errors: dict[str, float] = {}
    for m in ms:
        p = predict(ps, m)
        rows.append([m.config, m.workload, *(_pct(p[k], m.metrics[k]) for k in SHOWN if k in m.metrics)])
        errors[m.config] = p["total_token_throughput"] / m.metrics["total_token_throughput"] - 1
    return tabulate(rows, headers=("configuration", "workload", *SHOWN)), errors


def _check(ps: ProfileSet, results: Sequence[Measured], workload: str) -> list[str]:
    out: list[str] = []
    held = [m for m in results if m.workload != workload]
    if held:
        rows, within25, within40, n = [], 0, 0, 0
        for m in held:
            p = predict(ps, m)
            pairs = [(p[k], m.metrics[k]) for k in ("output_throughput", "mean_tpot_ms")]
            worst = max(abs(a / b - 1) for a, b in pairs)
            within25 += worst <= 0.25
            within40 += worst <= 0.40
            n += 1
            rows.append(
                [m.config, m.workload, *(f"{a:.4g} / {b:.4g} ({a / b - 1:+.0%})" for a, b in pairs), f"{worst:.0%}"]
            )
        out += [
            f"held out (not calibrated on): predicted / measured on {len(held)} results",
            tabulate(rows, headers=("configuration", "workload", "output tok/s", "mean TPOT ms", "worst")),
            f"both within 25%: {within25}/{n}; within 40%: {within40}/{n}",
            "",
        ]
    loo = leave_one_out(results, ps, workload=workload)
    signed = [p["total_token_throughput"] / m.metrics["total_token_throughput"] - 1 for m, p in loo]
    errs = [abs(e) for e in signed]
    rows = [
        [m.config, f"{p['total_token_throughput']:.0f}", f"{m.metrics['total_token_throughput']:.0f}", f"{e:+.1%}"]
        for (m, p), e in zip(loo, signed, strict=True)
    ]
    out += [
        f"leave-one-out on {workload}: each configuration predicted by a calibration without it",
        tabulate(rows, headers=("configuration", "predicted total tok/s", "measured", "error")),
        f"median absolute error: {statistics.median(errs):.1%} over {len(errs)}",
        "",
    ]
    cal = [m for m in results if m.workload == workload]
    sim = [predict(ps, m)["total_token_throughput"] for m in cal]
    rho = spearmanr(sim, [m.metrics["total_token_throughput"] for m in cal]).statistic
    out.append(f"rank correlation (Spearman), simulated vs measured total tok/s on {workload}: {rho:.3f} ({len(cal)})")
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        results = read_results(args.results)
        cal = [m for m in results if m.workload == args.workload]
        print(f"calibrating on {len(cal)} results of workload {args.workload} ({len(results)} read)", flush=True)
        t0 = time.perf_counter()
        ps = calibrate(results, workload=args.workload)
    except LlmperfError as exc:
        print(f"llmperf sim calibrate: {exc}", file=sys.stderr)
        return 2
    ps.path = args.out  # what the results it replays will name as their calibration
    table, errors = _residual_table(ps, cal)
    worst = max(abs(e) for e in errors.values())
    ps.source = {
        "calibrated_from": ", ".join(str(p) for p in args.results) + f" (workload {args.workload}, {len(cal)} results)",
        "command": "llmperf sim calibrate " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "date": dt.date.today().isoformat(),
        "targets": ", ".join(f"{k} x{w:g}" for k, w in TARGETS.items()),
        "worst_total_throughput_residual": round(worst, 4),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(ps.dumps(), encoding="utf-8")
    print(_fit_table(ps), "", "residuals (simulated vs measured):", table, "", sep="\n")
    print(f"wrote {args.out} ({time.perf_counter() - t0:.0f} s)")
    if args.simulate_into is not None:
        args.simulate_into.mkdir(parents=True, exist_ok=True)
        target = args.simulate_into / "summary.json"
        target.write_text(json.dumps(simulated_summary(ps, results), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {target}: the replay of {len(results)} results (llmperf report {args.simulate_into})")
    if args.check:
        print("", *_check(ps, results, args.workload), sep="\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
