"""One perf test's result as the records every report reads: the result record, JUnit properties,
the calibration record and the per-run files of the report folder."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from pytest_llmperf.config import Case
from pytest_llmperf.gate.check import Decision, Reference
from pytest_llmperf.loadgen import BenchmarkResult
from pytest_llmperf.loadgen.results import result_json
from pytest_llmperf.report.files import write_run

__all__ = [
    "CALIBRATION_PROPERTY",
    "PERF_TEST_PROPERTY",
    "RESULT_PROPERTY",
    "calibration_record",
    "junit_properties",
    "result_record",
    "write_runs",
]

RESULT_PROPERTY = "llmperf"  # a user property per perf test: its result record as JSON
CALIBRATION_PROPERTY = "llmperf_calibration"
PERF_TEST_PROPERTY = "llmperf.perf_test"  # marks a perf test's reports (its skips are summed up)


def result_record(
    *,
    nodeid: str,
    case: Case,
    command: str,
    version: str | None,
    dataset: dict[str, str] | None,
    samples: dict[str, list[float]],
    runs: int,
    ref: Reference,
    decision: Decision,
    baseline: str,
    notes: list[str],
    written: bool,
    gate: str = "",
    hardware: dict[str, Any] | None = None,
    image: str | None = None,
    simulated: str | None = None,
) -> dict[str, Any]:
    """The JSON record of one test: what the terminal summary, ``summary.json`` and ``llmperf report`` show."""
    engine = case.engine
    return {
        "nodeid": nodeid,
        "case": case.id,
        "config": engine.id,
        "engine": engine.engine,
        "engine_version": version,
        "image": image,  # the container image the engine ran from (None: a process on this host)
        "simulated": simulated,  # None: measured on the engine; else the simulator and its profile's source
        "workload": case.workload.id,
        "knob": engine.knob,
        "derives_from": engine.derives_from,
        "command": command,
        "dataset": dataset,
        "verdict": decision.verdict,
        "baseline": baseline,
        "baseline_source": ref.baseline.provenance.source if ref.baseline is not None else None,
        "reference": ref.source,  # "baseline", or "history:N" (N past accepted nights)
        "not_compared": ref.mismatches,
        "notes": ref.notes + notes,
        "updated": written,
        "runs": runs,
        "means": {k: statistics.fmean(v) for k, v in sorted(samples.items())},
        "samples": {k: list(v) for k, v in sorted(samples.items())},  # every run: what the history keeps
        "hardware": hardware,  # the key the test was compared under
        "rows": [r.as_dict() for r in decision.rows],
        "gate": gate,  # the suite policy the verdict was taken under
    }


def junit_properties(decision: Decision) -> list[tuple[str, str]]:
    """The key figures as JUnit XML test properties."""
    props = [("llmperf.verdict", decision.verdict)]
    for r in decision.rows:
        if r.gated:
            props.append((f"llmperf.{r.metric}", f"{r.current:.4f}"))
            if r.change is not None:
                props.append((f"llmperf.{r.metric}.change", f"{r.change:+.4f}"))
    return props


def calibration_record(nodeid: str, case_id: str, samples: dict[str, list[float]], runs: int) -> dict[str, Any]:
    """--llmperf-calibrate: the run-to-run coefficient of variation of every metric."""
    cvs = {}
    for metric, values in sorted(samples.items()):
        mean = statistics.fmean(values)
        if len(values) >= 2 and mean:
            cvs[metric] = statistics.stdev(values) / abs(mean)
    return {"nodeid": nodeid, "case": case_id, "runs": runs, "cv": cvs}


def write_runs(
    report_dir: Path, case: Case, runs: list[BenchmarkResult], version: str | None, image: str | None = None
) -> None:
    """``results/<case>/run-<i>.json`` in the format of ``vllm bench serve --save-result``."""
    engine = case.engine
    for i, run in enumerate(runs, 1):
        data = result_json(
            run,
            model_id=engine.model,
            tokenizer_id=engine.tokenizer or "server /tokenize",
            label=case.id,
            metadata={
                "config": engine.id,
                "workload": case.workload.id,
                "engine_version": str(version),
                **({"image": image} if image else {}),
            },
            detailed=False,
        )
        write_run(report_dir, case.id, i, data)
