"""The fixtures a perf test uses: its case, its engine server, the benchmark runner and the gate.

A perf test reads::

    pytestmark = pytest.mark.llmperf_matrix("sim.toml")

    def test_serving(llmperf_bench, llmperf_gate):
        result = llmperf_bench.run()
        llmperf_gate.check(result)
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import statistics
import subprocess
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from pytest_llmperf import __version__
from pytest_llmperf.baseline import Baseline, Provenance, baseline_path, load_baseline
from pytest_llmperf.config import Case, EngineConfig, Workload
from pytest_llmperf.engines.classify import read_log
from pytest_llmperf.engines.launch import canonical_command
from pytest_llmperf.errors import BaselineError, DatasetError, ServerError, UnsupportedConfigError
from pytest_llmperf.gate import compare_samples, format_failure, overall_verdict
from pytest_llmperf.hardware import hardware_key
from pytest_llmperf.loadgen import BenchmarkResult, BenchSettings, SampleRequest, run_benchmark_sync
from pytest_llmperf.loadgen.datasets import Tokenizer, requests_for
from pytest_llmperf.loadgen.results import result_json
from pytest_llmperf.loadgen.tokenizers import load_tokenizer
from pytest_llmperf.report import CALIBRATION_PROPERTY, RESULT_PROPERTY
from pytest_llmperf.report_files import write_run
from pytest_llmperf.session import LlmperfSession, RunningServer, session_key
from pytest_llmperf.tokenizer import SimTokenizer

__all__ = [
    "LlmperfInconclusiveWarning",
    "PerfBench",
    "PerfGate",
    "PerfResult",
    "llmperf_bench",
    "llmperf_case",
    "llmperf_engine",
    "llmperf_gate",
    "llmperf_server",
    "llmperf_workload",
]


CALIBRATION_RUNS = 5


class LlmperfInconclusiveWarning(UserWarning):
    """A gated metric moved beyond its tolerance without statistical significance."""


@dataclass
class PerfResult:
    """The samples of one test: one value per metric per measured run."""

    case: Case
    server: RunningServer
    runs: list[BenchmarkResult]
    samples: dict[str, list[float]] = field(default_factory=dict)
    more: Callable[[], None] | None = field(default=None, repr=False)  # adds one measured run

    @property
    def client_warnings(self) -> list[str]:
        return [w for run in self.runs for w in run.client_warnings]

    def add(self, run: BenchmarkResult) -> None:
        self.runs.append(run)
        for key, value in run.metrics.flat().items():
            self.samples.setdefault(key, []).append(value)


def _hardware(cfg: EngineConfig, state: LlmperfSession) -> dict[str, Any]:
    if cfg.engine == "sim":
        # modelled time: results do not depend on the host, only on the simulator's profile
        return {"kind": "simulated", "profile": cfg.sim.profile}
    if state.simulate:
        return {"kind": "simulated", "profile": f"h200-{cfg.engine}"}
    return hardware_key(state.gpus)


def _git_commit(root: Path) -> str | None:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None


class PerfBench:
    """Runs the test's workload against its server: warm-ups, then ``--llmperf-repeats`` measured runs."""

    def __init__(self, case: Case, server: RunningServer, state: LlmperfSession) -> None:
        self.case = case
        self.server = server
        self.state = state

    def tokenizer(self) -> Tokenizer:
        """The simulator's own tokenizer; a config's local tokenizer; else the server's /tokenize."""
        engine = self.case.engine
        if engine.engine == "sim" or (self.state.simulate and engine.tokenizer is None):
            return SimTokenizer()
        if engine.tokenizer is not None:
            path = Path(engine.tokenizer)
            return load_tokenizer(str(path if path.is_absolute() else self.state.rootdir / path))
        return load_tokenizer(None, base_url=self.server.base_url, model=self.server.model)

    def requests(self, workload: Workload) -> list[SampleRequest]:
        path = workload.dataset_path or self.state.sharegpt
        if path and not Path(path).is_absolute() and (self.state.rootdir / path).exists():
            path = str(self.state.rootdir / path)
        if workload.dataset == "sharegpt" and not path:
            pytest.skip(
                f"[{self.case.id}] needs the ShareGPT dataset: download ShareGPT_V3_unfiltered_cleaned_split.json "
                "and pass --llmperf-sharegpt PATH (or set LLMPERF_SHAREGPT)"
            )
        return requests_for(self.tokenizer(), workload, path)

    def settings(self, workload: Workload) -> BenchSettings:
        return BenchSettings(
            base_url=self.server.base_url,
            model=self.server.model,
            backend=workload.backend,
            endpoint=workload.resolved_endpoint,
            request_rate=workload.request_rate,
            burstiness=workload.burstiness,
            max_concurrency=workload.max_concurrency,
            seed=workload.seed,
            ignore_eos=workload.ignore_eos or workload.dataset == "random",
            num_warmups=workload.num_warmups,
            timeout_s=workload.timeout_s,
            stall_timeout_s=workload.stall_timeout_s,
            prewarm_connections=True,
        )

    def run(self, repeats: int | None = None) -> PerfResult:
        workload = self.case.workload
        problem = ""
        try:
            requests = self.requests(workload)
        except DatasetError as exc:
            problem = str(exc)
        if problem:
            pytest.fail(f"[{self.case.id}] {problem}", pytrace=False)
        settings = self.settings(workload)
        n = repeats or self.state.repeats
        if self.state.calibrate:
            n = max(n, CALIBRATION_RUNS)
        result = PerfResult(self.case, self.server, [])

        def one_more() -> None:
            # the vLLM warm-up requests run before the first measured run only
            s = settings if not result.runs else replace(settings, num_warmups=0)
            progress = self.state.progress(f"{self.case.id} run {len(result.runs) + 1}")
            result.add(run_benchmark_sync(s, requests, progress=progress))
            failure = ""
            try:
                self.server.check_alive()
            except ServerError as exc:
                failure = str(exc)
            if failure:
                pytest.fail(failure, pytrace=False)

        for _ in range(n):
            one_more()
        result.more = one_more
        for w in dict.fromkeys(result.client_warnings):
            warnings.warn(f"[{self.case.id}] {w}", stacklevel=2)
        return result


def baseline_path_for(item: pytest.Item, case: Case, state: LlmperfSession) -> Path:
    """``<baseline dir>/<module path>/<test function>/<case id>.json`` of a perf test."""
    module = os.path.relpath(str(item.path), state.rootdir)
    return baseline_path(state.baseline_dir, module, getattr(item, "originalname", item.name), case.id)


class PerfGate:
    """Compares a :class:`PerfResult` with the test's baseline and fails the test item on a regression."""

    def __init__(self, item: pytest.Item, case: Case, state: LlmperfSession) -> None:
        self.item = item
        self.case = case
        self.state = state
        self.path = baseline_path_for(item, case, state)

    def _write_runs(self, result: PerfResult) -> None:
        assert self.state.report_dir is not None
        engine = self.case.engine
        for i, run in enumerate(result.runs, 1):
            data = result_json(
                run,
                model_id=engine.model,
                tokenizer_id=engine.tokenizer or "server /tokenize",
                label=self.case.id,
                metadata={
                    "config": engine.id,
                    "workload": self.case.workload.id,
                    "engine_version": str(result.server.version),
                },
                detailed=False,
            )
            write_run(self.state.report_dir, self.case.id, i, data)

    def _calibrate(self, result: PerfResult) -> None:
        """--llmperf-calibrate: record the run-to-run variation of every metric, compare nothing."""
        cvs = {}
        for metric, values in sorted(result.samples.items()):
            mean = statistics.fmean(values)
            if len(values) >= 2 and mean:
                cvs[metric] = statistics.stdev(values) / abs(mean)
        record = {"nodeid": self.item.nodeid, "case": self.case.id, "runs": len(result.runs), "cv": cvs}
        self.item.user_properties.append((CALIBRATION_PROPERTY, json.dumps(record)))

    def tolerances(self, baseline: Baseline | None) -> dict[str, float]:
        tol = dict(self.case.tolerance)
        marker = self.item.get_closest_marker("llmperf")
        if marker is not None:
            tol.update(marker.kwargs.get("tolerance", {}))
        if baseline is not None:
            tol.update(baseline.tolerance)
        return tol

    def _new_baseline(self, result: PerfResult, previous: Baseline | None) -> Baseline:
        engine = self.case.engine
        return Baseline(
            test=self.item.nodeid,
            case=self.case.id,
            engine={
                "id": engine.id,
                "engine": engine.engine,
                "version": result.server.version,
                "model": engine.model,
                "command": canonical_command(engine),
            },
            workload=self.case.workload.model_dump(mode="json", exclude={"markers"}),
            hardware=_hardware(engine, self.state),
            provenance=Provenance(
                date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                plugin_version=__version__,
                source="measured",
                git_commit=_git_commit(self.state.rootdir),
            ),
            tolerance=previous.tolerance if previous is not None else {},
            metrics={k: v for k, v in sorted(result.samples.items())},
        )

    def check(self, result: PerfResult) -> None:
        if self.state.calibrate:
            self._calibrate(result)
            return
        rel = self.state.relative(self.path)
        problem = ""
        try:
            baseline = load_baseline(self.path)
        except BaselineError as exc:
            problem = str(exc).replace(str(self.path), rel)
        if problem:  # failed outside the except block: one message, no chained traceback
            pytest.fail(f"[{self.case.id}] {problem}", pytrace=False)
        hw_now = _hardware(self.case.engine, self.state)
        hw_diff = []
        if baseline is not None:
            # keys known on both sides must agree (a published baseline may not know the driver)
            shared = sorted(set(baseline.hardware) & set(hw_now))
            hw_diff = [
                f"{k}: baseline {baseline.hardware[k]!r}, now {hw_now[k]!r}"
                for k in shared
                if baseline.hardware[k] != hw_now[k]
            ]
        reference = None if (baseline is None or hw_diff) else baseline.metrics
        tolerances = self.tolerances(baseline)
        rows = compare_samples(
            reference, result.samples, tolerances=tolerances, default_tolerance=self.state.default_tolerance
        )
        verdict = overall_verdict(rows)
        # adaptive repeats: while the verdict is inconclusive, measure more (up to --llmperf-max-repeats)
        while verdict == "INCONCLUSIVE" and result.more is not None and len(result.runs) < self.state.max_repeats:
            result.more()
            rows = compare_samples(
                reference, result.samples, tolerances=tolerances, default_tolerance=self.state.default_tolerance
            )
            verdict = overall_verdict(rows)
        update = self.state.update == "all" or (self.state.update == "failing" and verdict in ("FAIL", "NEW"))
        functional = any(r.metric == "failed" and r.verdict == "FAIL" for r in rows)
        if update and not functional:
            self.state.queue_baseline(self.path, self._new_baseline(result, baseline))
        engine = self.case.engine
        record = {
            "nodeid": self.item.nodeid,
            "case": self.case.id,
            "config": engine.id,
            "engine": engine.engine,
            "engine_version": result.server.version,
            "workload": self.case.workload.id,
            "knob": engine.knob,
            "derives_from": engine.derives_from,
            "command": canonical_command(engine),
            "verdict": verdict,
            "baseline": rel,
            "baseline_source": baseline.provenance.source if baseline is not None else None,
            "updated": update and not functional,
            "runs": len(result.runs),
            "means": {k: statistics.fmean(v) for k, v in sorted(result.samples.items())},
            "rows": [r.as_dict() for r in rows],
        }
        self.item.user_properties.append((RESULT_PROPERTY, json.dumps(record)))
        # JUnit XML carries the key figures as test properties
        self.item.user_properties.append(("llmperf.verdict", verdict))
        for r in rows:
            if r.gated:
                self.item.user_properties.append((f"llmperf.{r.metric}", f"{r.current:.4f}"))
                if r.change is not None:
                    self.item.user_properties.append((f"llmperf.{r.metric}.change", f"{r.change:+.4f}"))
        if self.state.report_dir is not None:
            self._write_runs(result)
        if functional:
            pytest.fail(
                f"[{self.case.id}] {format_failure(rows)}\nerrors: "
                f"{'; '.join(dict.fromkeys(e for run in result.runs for e in run.errors))[:1000]}",
                pytrace=False,
            )
        if update:
            return
        if hw_diff and self.state.other_hardware == "skip":
            pytest.skip(
                f"[{self.case.id}] baseline {rel} was recorded on other hardware ({'; '.join(hw_diff)}); "
                "not compared (--llmperf-on-other-hardware=skip)"
            )
        if hw_diff:
            pytest.fail(
                f"[{self.case.id}] baseline {rel} was recorded on other hardware ({'; '.join(hw_diff)}); it is "
                f"not compared. Record one for this hardware: pytest '{self.item.nodeid}' --llmperf-update-baselines",
                pytrace=False,
            )
        if verdict == "NEW":
            pytest.fail(
                f"[{self.case.id}] no baseline: {rel} does not exist. Record it with:\n"
                f"    pytest '{self.item.nodeid}' --llmperf-update-baselines",
                pytrace=False,
            )
        if verdict == "FAIL":
            pytest.fail(
                f"[{self.case.id}] performance regression against {rel}:\n{format_failure(rows)}\n"
                "If this change is intended, re-run with --llmperf-update-baselines to accept it.",
                pytrace=False,
            )
        if verdict == "INCONCLUSIVE":
            notes = "; ".join(
                f"{r.metric} {r.change:+.1%}" for r in rows if r.verdict == "INCONCLUSIVE" and r.change is not None
            )
            warnings.warn(
                LlmperfInconclusiveWarning(f"[{self.case.id}] inconclusive: {notes}; add runs with --llmperf-repeats"),
                stacklevel=2,
            )


def _state(request: pytest.FixtureRequest) -> LlmperfSession:
    return request.config.stash[session_key]


@pytest.fixture
def llmperf_case(request: pytest.FixtureRequest) -> Case:
    """The (engine config, workload) pair of this test, from its ``llmperf_matrix`` marker."""
    case = getattr(request, "param", None)
    if not isinstance(case, Case):
        pytest.fail(
            f"{request.node.nodeid} uses llmperf fixtures but has no matrix: add "
            "pytestmark = pytest.mark.llmperf_matrix('matrix.toml') to its module",
            pytrace=False,
        )
    return case


@pytest.fixture
def llmperf_engine(llmperf_case: Case) -> EngineConfig:
    return llmperf_case.engine


@pytest.fixture
def llmperf_workload(llmperf_case: Case) -> Workload:
    return llmperf_case.workload


@pytest.fixture
def llmperf_server(request: pytest.FixtureRequest, llmperf_case: Case) -> RunningServer:
    """The running server of this test's engine config (shared by all its tests; started once)."""
    cfg = llmperf_case.engine
    error: ServerError | None = None
    try:
        server = _state(request).pool.acquire(cfg)
    except ServerError as exc:
        error = exc
    unsupported = cfg.unsupported
    if unsupported is not None:
        where = f"{_state(request).relative(llmperf_case.matrix_path)}, engines (id={cfg.id!r}), field 'unsupported'"
        if error is None:
            # pytest's own strict expected failure: the test runs, and a pass reports as [XPASS(strict)]
            request.node.add_marker(
                pytest.mark.xfail(
                    reason=f"[{cfg.id}] is declared unsupported ({unsupported.reason}) but its server started. "
                    f"If the engine now supports it, remove the entry at {where}",
                    strict=True,
                    raises=UnsupportedConfigError,
                )
            )
            return server
        hits = _matching_lines(unsupported.match, error)
        if hits:
            issue = f" ({unsupported.issue})" if unsupported.issue else ""
            pytest.xfail(f"[{cfg.id}] unsupported: {unsupported.reason}{issue}; the engine said: {hits[0]}")
        pytest.fail(
            f"{error}\n[{cfg.id}] is declared unsupported, but this failure does not match its pattern "
            f"{unsupported.match!r} ({where}): a different failure, not the known one.",
            pytrace=False,
        )
    if error is not None:
        pytest.fail(str(error), pytrace=False)
    return server


def _matching_lines(pattern: str, error: ServerError) -> list[str]:
    text = read_log(error.log_path, error.log_offset) if error.log_path else ""
    text = text or str(error)
    regex = re.compile(pattern)
    return [line.strip() for line in text.splitlines() if regex.search(line) and not line.startswith("### llmperf")]


@pytest.fixture
def llmperf_bench(request: pytest.FixtureRequest, llmperf_case: Case, llmperf_server: RunningServer) -> PerfBench:
    return PerfBench(llmperf_case, llmperf_server, _state(request))


@pytest.fixture
def llmperf_gate(request: pytest.FixtureRequest, llmperf_case: Case) -> PerfGate:
    return PerfGate(request.node, llmperf_case, _state(request))
