"""One perf test's gate, without pytest: its reference (the baseline as loaded and keyed) and its verdict.

``fixtures.PerfGate`` calls these and turns the answer into the test's outcome; ``report.record`` turns
it into the result record. Nothing here fails a test, prints or writes except :func:`new_baseline`'s
caller.
"""

from __future__ import annotations

import datetime as _dt
import json
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_llmperf import __version__
from pytest_llmperf.config import EngineConfig, Workload
from pytest_llmperf.errors import BaselineError
from pytest_llmperf.gate.baseline import Baseline, Provenance, load_baseline
from pytest_llmperf.gate.decision import (
    DEFAULT_GATED,
    MetricVerdict,
    compare_samples,
    higher_is_better,
    overall_verdict,
)
from pytest_llmperf.gate.identity import WorkIdentity, differences
from pytest_llmperf.gate.suite import DEFAULT_POLICY, SuitePolicy
from pytest_llmperf.hardware import Gpu, hardware_key
from pytest_llmperf.sim.calibrated import calibration_key

__all__ = [
    "Decision",
    "Reference",
    "borderline",
    "decide",
    "from_history",
    "git_commit",
    "hardware_for",
    "load_reference",
    "new_baseline",
    "tolerances",
]


@dataclass
class Reference:
    """The baseline as loaded and keyed: what it may be compared with, and why not when it may not."""

    baseline: Baseline | None
    invalid: str = ""  # why the file could not be used (corrupt, invalid, newer schema)
    hardware: list[str] = field(default_factory=list)  # hardware key differences: not compared
    work: list[str] = field(default_factory=list)  # workload, prompt file, engine config differences: not compared
    notes: list[str] = field(default_factory=list)  # allowed differences, shown
    missing: list[str] = field(default_factory=list)  # gated metrics the file has no samples of
    history: dict[str, list[float]] | None = None  # --llmperf-reference history: past nights' runs, centred
    nights: int = 1  # nights the reference holds (a baseline file: 1)
    source: str = "baseline"  # "baseline", or "history:N" for N past nights

    @property
    def mismatches(self) -> list[str]:
        return self.hardware + self.work

    @property
    def stale(self) -> bool:
        """The file cannot serve as this test's reference as it is: a refresh of failing tests rewrites it."""
        return bool(self.invalid or self.mismatches or self.missing)

    @property
    def metrics(self) -> dict[str, list[float]] | None:
        if self.history is not None:
            return self.history
        usable = self.baseline is not None and not self.invalid and not self.mismatches
        return self.baseline.metrics if usable and self.baseline is not None else None


def from_history(
    file: Reference, metrics: dict[str, list[float]], *, nights: int, described: str, measured: set[str]
) -> Reference:
    """The reference of past accepted nights (same test, engine version and hardware key, so never a
    mismatch), keeping the baseline file for its tolerances and the refresh flow."""
    return Reference(
        file.baseline if file.metrics is not None else None,
        notes=[f"reference: {described}"],
        missing=[m for m in DEFAULT_GATED if m in measured and m not in metrics],
        history=metrics,
        nights=nights,
        source=f"history:{nights}",
    )


@dataclass
class Decision:
    rows: list[MetricVerdict]
    verdict: str  # PASS, FAIL, INCONCLUSIVE, NEW
    confirmation: str = ""  # why fresh runs were added before deciding (sequential confirmation)

    @property
    def functional(self) -> bool:
        """Requests failed: a correctness failure, whatever the speed (a baseline is never accepted from it)."""
        return any(r.metric == "failed" and r.verdict == "FAIL" for r in self.rows)


def hardware_for(cfg: EngineConfig, *, simulate: bool, gpus: list[Gpu] | None) -> dict[str, Any]:
    """The hardware key a result of ``cfg`` is recorded and compared under."""
    if cfg.engine == "sim":
        # modelled time: results do not depend on the host, only on the simulator's profile
        return {"kind": "simulated", "profile": cfg.sim.profile}
    if simulate:  # a recalibrated simulator is another machine: the calibration is part of the key
        return {"kind": "simulated", "profile": f"h200-{cfg.engine}", "calibration": calibration_key(cfg.engine)}
    return hardware_key(gpus)


def load_reference(
    path: Path, *, shown_as: str, hardware_now: Mapping[str, Any], identity: WorkIdentity, measured: set[str]
) -> Reference:
    """Load ``path`` and key it against what is measured now (``measured``: the metrics with samples)."""
    try:
        baseline = load_baseline(path)
    except BaselineError as exc:
        return Reference(None, invalid=str(exc).replace(str(path), shown_as))
    if baseline is None:
        return Reference(None)
    # hardware keys known on both sides must agree (a published baseline may not know the driver)
    hardware = [
        f"hardware {k}: baseline {baseline.hardware[k]!r}, now {hardware_now[k]!r}"
        for k in sorted(set(baseline.hardware) & set(hardware_now))
        if baseline.hardware[k] != hardware_now[k]
    ]
    work, notes = differences(baseline, identity)
    missing = [m for m in DEFAULT_GATED if m in measured and m not in baseline.metrics]
    return Reference(baseline, hardware=hardware, work=work, notes=notes, missing=missing)


def tolerances(*layers: Mapping[str, float]) -> dict[str, float]:
    """Per-metric tolerances, later layers winning: the case's, the test marker's, the baseline file's."""
    out: dict[str, float] = {}
    for layer in layers:
        out.update(layer)
    return out


BORDERLINE = 0.6  # a first verdict with a gated metric worse by more than this share of its tolerance is confirmed


def borderline(rows: list[MetricVerdict]) -> list[MetricVerdict]:
    """The gated performance rows a first verdict cannot rest on: failing, inconclusive, or worse by more than
    ``BORDERLINE`` of the tolerance."""
    out = []
    for r in rows:
        if not r.gated or r.metric == "failed" or r.change is None:
            continue
        worse_by = -r.change if higher_is_better(r.metric) else r.change
        if r.verdict in ("FAIL", "INCONCLUSIVE") or worse_by > BORDERLINE * r.tolerance:
            out.append(r)
    return out


def decide(
    reference: Mapping[str, Sequence[float]] | None,
    samples: dict[str, list[float]],
    *,
    tolerance: dict[str, float],
    default_tolerance: float,
    policy: SuitePolicy = DEFAULT_POLICY,
    confirm: Callable[[], int] | None = None,
    more: Callable[[], bool] | None = None,
) -> Decision:
    """Compare ``samples`` with the ``reference`` runs (None: there is none).

    A failing or borderline first verdict is confirmed: ``confirm`` measures fresh runs into ``samples``
    (it returns how many) and the verdict is taken again on all runs. Then, while the verdict is
    inconclusive and ``more`` measures another run (it returns False when it may not), compare again.
    """

    def compare() -> list[MetricVerdict]:
        return compare_samples(
            reference, samples, tolerances=tolerance, default_tolerance=default_tolerance, policy=policy
        )

    rows = compare()
    confirmation = ""
    doubtful = borderline(rows) if reference is not None else []
    if doubtful and confirm is not None:
        first = ", ".join(f"{r.metric} {r.change:+.1%}" for r in doubtful if r.change is not None)
        n_first = max(len(v) for v in samples.values())
        added = confirm()
        if added:
            rows = compare()
            # still beyond tolerance but not significant: once more, where the noise is the runs' own (with a
            # night-to-night term, every run of the night carries its offset and more runs cannot decide)
            if overall_verdict(rows) == "INCONCLUSIVE" and not policy.night_cv:
                added += confirm()
                rows = compare()
            confirmation = (
                f"confirmation: the first {n_first} run(s) showed {first} (failing, or beyond "
                f"{BORDERLINE:.0%} of the tolerance); {added} fresh run(s) were added before deciding"
            )
    while overall_verdict(rows) == "INCONCLUSIVE" and more is not None and more():
        rows = compare()
    return Decision(rows, overall_verdict(rows), confirmation)


def git_commit(root: Path) -> str | None:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None


def new_baseline(
    *,
    test: str,
    case: str,
    identity: WorkIdentity,
    workload: Workload,
    dataset: dict[str, str] | None,
    hardware: dict[str, Any],
    samples: dict[str, list[float]],
    previous: Baseline | None,
    root: Path,
) -> Baseline:
    """The baseline a refresh writes: this run's samples, keyed as it was measured; a file's own
    tolerances survive its refresh."""
    return Baseline(
        test=test,
        case=case,
        engine=identity.engine_record(),
        workload=json.loads(workload.model_dump_json(exclude={"markers"})),
        dataset=dataset,
        hardware=hardware,
        provenance=Provenance(
            date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            plugin_version=__version__,
            source="measured",
            git_commit=git_commit(root),
        ),
        tolerance=previous.tolerance if previous is not None else {},
        metrics={k: v for k, v in sorted(samples.items())},
    )
