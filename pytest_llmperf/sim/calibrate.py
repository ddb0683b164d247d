"""``llmperf sim calibrate``: fit simulated-engine profiles to measured results.

Each measured configuration is replayed in virtual time (:mod:`pytest_llmperf.sim.virtual`) with the
workload it was measured on, and the profile's parameters are fitted (bounded least squares on log
ratios) to its output throughput, mean TPOT, median ITL and mean TTFT:

1. an engine family's base constants on its root configuration (the one no other derives from);
2. then, along ``derives_from``, each configuration's knob factors (``KNOB_FIT``) with everything it
   inherits held fixed.

:func:`leave_one_out` predicts each configuration from a calibration without it: its own knob factors
fall back to their priors (the mechanism alone), a root's base is fitted on its nearest child.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from pytest_llmperf.errors import LlmperfError
from pytest_llmperf.sim.calibrated import (
    BASE_BOUNDS,
    KNOB_FIT,
    PRIOR,
    FamilyProfile,
    ProfileSet,
    factor_bounds,
)
from pytest_llmperf.sim.knobs import KNOB_NAMES, Knobs, knobs_from_command
from pytest_llmperf.sim.virtual import Shape, random_shape, replay, sharegpt_shape

__all__ = ["TARGETS", "Measured", "calibrate", "leave_one_out", "predict", "read_results"]

# metric -> weight in the fit (log ratio residuals): throughput first, it orders configurations
TARGETS: dict[str, float] = {
    "output_throughput": 5.0,
    "mean_tpot_ms": 1.0,
    "median_tpot_ms": 1.0,
    "median_itl_ms": 1.0,
    "p99_itl_ms": 0.5,
    "mean_ttft_ms": 0.5,
    "median_ttft_ms": 0.5,
    "max_output_tokens_per_s": 1.0,
}
KNOB_OF_LABEL = {
    "parallelism": "parallel",
    "mtp": "spec",
    "attention-backend": "attention",
    "kv-cache-dtype": "kv_dtype",
    "context-length": "context",
    "deepgemm": "deep_gemm",
    "tool-call": "tool_call",
}


@dataclass(frozen=True)
class Measured:
    """One measured (configuration, workload): what calibration fits and predicts."""

    config: str
    engine: str
    command: str
    workload: str
    shape: Shape
    metrics: dict[str, float]
    knob: str | None = None
    derives_from: str | None = None
    source: str = ""

    @property
    def knobs(self) -> Knobs:
        return knobs_from_command(self.engine, self.command)


def _mean(v: Any) -> float | None:
    if isinstance(v, list):
        v = [x for x in v if isinstance(x, int | float)]
        return float(sum(v) / len(v)) if v else None
    if isinstance(v, dict):
        return _mean(v.get("mean", v.get("values")))
    return float(v) if isinstance(v, int | float) else None


def _shape(workload: dict[str, Any], metrics: dict[str, float], where: str) -> Shape:
    n = int(metrics.get("completed") or workload.get("num_prompts") or 0)
    if n <= 0:
        raise LlmperfError(f"{where}: no completed requests to calibrate on")
    if workload.get("dataset") == "sharegpt":
        return sharegpt_shape(n, metrics["total_input_tokens"] / n, metrics["total_output_tokens"] / n)
    ins = round(metrics.get("total_input_tokens", 0) / n) or int(workload.get("random_input_len", 0))
    outs = round(metrics.get("total_output_tokens", 0) / n) or int(workload.get("random_output_len", 0))
    return random_shape(ins, outs, n)


def read_results(paths: Iterable[str | Path]) -> list[Measured]:
    """Results to calibrate on: baseline files, and the ``*.json`` result files under report folders."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(p.rglob("*.json"))
        elif p.is_file():
            files.append(p)
        else:
            raise LlmperfError(f"{p}: no such file or folder of results")
    out: list[Measured] = []
    for f in files:
        try:
            doc = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise LlmperfError(f"{f}: not a JSON result ({exc})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("engine"), dict) or "metrics" not in doc:
            continue  # a summary or another file of a report folder
        eng, wl = doc["engine"], doc.get("workload") or {}
        if eng.get("engine") not in ("vllm", "sglang", "trtllm") or not eng.get("command"):
            continue
        metrics = {k: m for k, v in doc["metrics"].items() if (m := _mean(v)) is not None}
        missing = [k for k in (*TARGETS, "total_input_tokens", "total_output_tokens") if k not in metrics]
        if missing:
            raise LlmperfError(f"{f}: lacks {', '.join(missing)}; calibration needs them")
        out.append(
            Measured(
                config=str(eng["id"]),
                engine=str(eng["engine"]),
                command=str(eng["command"]),
                workload=str(wl.get("id", "")),
                shape=_shape(wl, metrics, str(f)),
                metrics=metrics,
                knob=eng.get("knob"),
                derives_from=eng.get("derives_from"),
                source=str(f),
            )
        )
    if not out:
        raise LlmperfError("no engine results among " + ", ".join(map(str, paths)))
    return out


def predict(profiles: ProfileSet, m: Measured) -> dict[str, float]:
    prof, _ = profiles.profile(m.engine, m.knobs)
    return replay(prof, m.shape)


def _residuals(pred: dict[str, float], meas: dict[str, float]) -> list[float]:
    return [w * math.log(max(pred.get(k, 0.0), 1e-9) / meas[k]) for k, w in TARGETS.items()]


def _fit(cost: Any, x0: Sequence[float], lo: Sequence[float], hi: Sequence[float], *, samples: int) -> np.ndarray:
    """Bounded least squares in log space, started from the best of ``samples`` seeded random points (the
    replay is piecewise constant in its parameters: a local method alone stalls on its steps)."""
    rng = np.random.default_rng(0)
    lo_, hi_ = np.log(lo), np.log(hi)
    x_best = np.log(x0)
    c_best = float(np.sum(np.square(cost(x_best))))
    for _ in range(samples):
        x = rng.uniform(lo_, hi_)
        c = float(np.sum(np.square(cost(x))))
        if c < c_best:
            x_best, c_best = x, c
    res = least_squares(cost, x_best, bounds=(lo_, hi_), diff_step=0.03, max_nfev=20)
    x_final = res.x if float(np.sum(np.square(res.fun))) < c_best else x_best
    return np.exp(x_final)


def fit_base(engine: str, root: Measured, seed: FamilyProfile | None = None) -> FamilyProfile:
    fam = seed or FamilyProfile.uncalibrated(engine)
    names = list(BASE_BOUNDS)
    knobs = root.knobs

    def cost(logx: np.ndarray) -> list[float]:
        trial = FamilyProfile(engine, {**fam.base, **dict(zip(names, np.exp(logx), strict=True))}, fam.knobs)
        return _residuals(replay(trial.profile(knobs), root.shape), root.metrics)

    x0 = [fam.base[n] for n in names]
    x = _fit(cost, x0, [BASE_BOUNDS[n][0] for n in names], [BASE_BOUNDS[n][1] for n in names], samples=120)
    base = {**fam.base, **dict(zip(names, (float(v) for v in x), strict=True))}
    # the root's own settings are in the base: they need no factors, and are not "uncalibrated"
    settings = {f"{k}={v}": root.config for k, v in knobs.values().items() if v != "default"}
    return FamilyProfile(engine, base, dict(fam.knobs), {**fam.fitted_on, **settings, "base": root.config})


def varied_knob(m: Measured, parent: Knobs | None) -> str | None:
    """The knob ``m`` turns: its declared one, else the first that differs from its parent's setting."""
    if m.knob in KNOB_OF_LABEL:
        return KNOB_OF_LABEL[m.knob]
    if parent is None:
        return None
    mine, theirs = m.knobs.values(), parent.values()
    return next((k for k in KNOB_NAMES if mine[k] != theirs[k]), None)


def fit_knob(fam: FamilyProfile, m: Measured, knob: str) -> FamilyProfile:
    key = f"{knob}={m.knobs.values()[knob]}"
    names = list(KNOB_FIT[knob])
    knobs = m.knobs
    rest = FamilyProfile(fam.engine, fam.base, {k: v for k, v in fam.knobs.items() if k != key}, fam.fitted_on)

    def cost(logx: np.ndarray) -> list[float]:
        extra = dict(zip(names, np.exp(logx), strict=True))
        return _residuals(replay(rest.profile(knobs, extra=extra), m.shape), m.metrics)

    x0 = [PRIOR.get(n, 1.0) for n in names]
    x = _fit(cost, x0, [factor_bounds(n)[0] for n in names], [factor_bounds(n)[1] for n in names], samples=16)
    knobs_out = {**rest.knobs, key: {n: float(v) for n, v in zip(names, x, strict=True)}}
    return FamilyProfile(fam.engine, fam.base, knobs_out, {**fam.fitted_on, key: m.config})


def _order(ms: Sequence[Measured]) -> list[Measured]:
    """Roots first, then each configuration after the one it derives from."""
    by = {m.config: m for m in ms}
    done: list[Measured] = []
    seen: set[str] = set()

    def visit(m: Measured, trail: tuple[str, ...] = ()) -> None:
        if m.config in seen or m.config in trail:
            return
        parent = by.get(m.derives_from or "")
        if parent is not None:
            visit(parent, (*trail, m.config))
        seen.add(m.config)
        done.append(m)

    for m in ms:
        visit(m)
    return done


def calibrate(results: Sequence[Measured], *, workload: str = "sharegpt") -> ProfileSet:
    """Fit every family present in ``results`` on ``workload``."""
    ms = [m for m in results if m.workload == workload]
    if not ms:
        raise LlmperfError(f"no results on workload {workload!r} to calibrate on")
    by = {m.config: m for m in ms}
    fams: dict[str, FamilyProfile] = {}
    for m in _order(ms):
        parent = by.get(m.derives_from or "")
        fam = fams.get(m.engine)
        if fam is None:
            fams[m.engine] = fit_base(m.engine, m)  # the family's root (or the first result of it given)
            continue
        knob = varied_knob(m, parent.knobs if parent else None)
        if parent is None or knob is None:
            continue  # a second root of the same family: the first one's base stands
        fams[m.engine] = fit_knob(fam, m, knob)
    return ProfileSet(fams)


def leave_one_out(
    results: Sequence[Measured], profiles: ProfileSet, *, workload: str = "sharegpt"
) -> list[tuple[Measured, dict[str, float]]]:
    """Each configuration of ``workload`` predicted by ``profiles`` without what was fitted on it: the knob
    setting it introduced falls back to its mechanism alone (factors at their priors); a root's base is
    refitted on its nearest child (whose own settings then count at their priors too)."""
    ms = [m for m in results if m.workload == workload]
    by_parent: dict[str, list[Measured]] = {}
    for m in ms:
        by_parent.setdefault(m.derives_from or "", []).append(m)
    out = []
    for m in ms:
        fam = profiles.family(m.engine)
        own = [k for k, cfg in fam.fitted_on.items() if cfg == m.config and k != "base"]
        if fam.fitted_on.get("base") == m.config:
            child = next(iter(by_parent.get(m.config, [])), None)
            if child is None:
                continue  # a configuration alone in its family: nothing to predict it from
            fam = fit_base(m.engine, child, FamilyProfile(m.engine, dict(fam.base)))
        else:
            fam = FamilyProfile(fam.engine, fam.base, {k: v for k, v in fam.knobs.items() if k not in own})
        out.append((m, predict(ProfileSet({m.engine: fam}), m)))
    return out
