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
import shlex
import statistics
import subprocess
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from pytest_llmperf import __version__
from pytest_llmperf.baseline import Baseline, Provenance, baseline_path, load_baseline, write_baseline
from pytest_llmperf.config import Case, EngineConfig, Workload
from pytest_llmperf.engines.classify import read_log
from pytest_llmperf.engines.launch import canonical_command
from pytest_llmperf.errors import BaselineError, DatasetError, ServerError, UnsupportedConfigError
from pytest_llmperf.gate import (
    DEFAULT_GATED,
    MetricVerdict,
    compare_samples,
    format_failure,
    headline,
    overall_verdict,
)
from pytest_llmperf.hardware import hardware_key
from pytest_llmperf.identity import WorkIdentity, dataset_identity, differences
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
    dataset: dict[str, str] | None = None  # the prompt file's name and sha256 (None: random prompts)
    stopped: str = ""  # why no further repeats were run (a run with failed requests)

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

    def dataset_path(self, workload: Workload) -> str | None:
        """The prompt file of a ShareGPT workload (the workload's own, else --llmperf-sharegpt), or None."""
        return dataset_file(self.case, self.state)

    def requests(self, workload: Workload) -> list[SampleRequest]:
        return requests_for(self.tokenizer(), workload, self.dataset_path(workload))

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
            server_stall_timeout_s=workload.server_stall_timeout_s,
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
            where = "--llmperf-sharegpt or the workload's dataset_path" if "ShareGPT file" in problem else ""
            pytest.fail(f"[{self.case.id}] {problem}" + (f"; it comes from {where}" if where else ""), pytrace=False)
        settings = self.settings(workload)
        n = repeats or self.state.repeats
        if self.state.calibrate:
            n = max(n, CALIBRATION_RUNS)
        path = self.dataset_path(workload)
        result = PerfResult(self.case, self.server, [], dataset=dataset_identity(path))

        def one_more() -> None:
            # the vLLM warm-up requests run before the first measured run only
            s = settings if not result.runs else replace(settings, num_warmups=0)
            progress = self.state.progress(f"{self.case.id} run {len(result.runs) + 1}")
            run = run_benchmark_sync(s, requests, progress=progress)
            result.add(run)
            failure = ""
            try:
                self.server.check_alive()
            except ServerError as exc:
                failure = str(exc)
            if failure:
                pytest.fail(failure, pytrace=False)
            failed = len(run.errors)
            if failed:  # the verdict is decided: more runs against a failing engine only cost time
                result.stopped = (
                    f"run {len(result.runs)} had {failed} failed request(s) of {len(run.records)}: "
                    "no further repeats were run"
                )

        for _ in range(n):
            one_more()
            if result.stopped:
                break
        result.more = one_more
        for w in dict.fromkeys(result.client_warnings):
            warnings.warn(f"[{self.case.id}] {w}", stacklevel=2)
        return result


BUNDLED_SAMPLE = Path("perf_tests/data/sharegpt_sample.json")


def dataset_file(case: Case, state: LlmperfSession) -> str | None:
    """The prompt file of a ShareGPT case, checked before any server starts: a skip naming the option (and the
    bundled sample, where this checkout has it) when none is given, a failure when the given file is missing."""
    workload = case.workload
    if workload.dataset != "sharegpt":
        return None
    path = workload.dataset_path or state.sharegpt
    if not path:
        sample = state.rootdir / BUNDLED_SAMPLE
        hint = f", or try the bundled sample: --llmperf-sharegpt {BUNDLED_SAMPLE}" if sample.is_file() else ""
        pytest.skip(
            f"needs a ShareGPT file: pass --llmperf-sharegpt PATH (or set LLMPERF_SHAREGPT) with "
            f"ShareGPT_V3_unfiltered_cleaned_split.json{hint}"
        )
    if not Path(path).is_absolute() and (state.rootdir / path).exists():
        path = str(state.rootdir / path)
    if not Path(path).is_file():
        where = "the workload's dataset_path" if workload.dataset_path else "--llmperf-sharegpt"
        pytest.fail(f"[{case.id}] ShareGPT file {path} not found (from {where})", pytrace=False)
    return path


def baseline_path_for(item: pytest.Item, case: Case, state: LlmperfSession) -> Path:
    """``<baseline dir>/<module path>/<test function>/<case id>.json`` of a perf test."""
    module = os.path.relpath(str(item.path), state.rootdir)
    return baseline_path(state.baseline_dir, module, getattr(item, "originalname", item.name), case.id)


@dataclass
class _Reference:
    """The baseline as loaded and keyed: what it may be compared with, and why not when it may not."""

    baseline: Baseline | None
    invalid: str = ""  # why the file could not be used (corrupt, invalid, newer schema)
    hardware: list[str] = field(default_factory=list)  # hardware key differences: not compared
    work: list[str] = field(default_factory=list)  # workload, prompt file, engine config differences: not compared
    notes: list[str] = field(default_factory=list)  # allowed differences, shown
    missing: list[str] = field(default_factory=list)  # gated metrics the file has no samples of

    @property
    def mismatches(self) -> list[str]:
        return self.hardware + self.work

    @property
    def metrics(self) -> dict[str, list[float]] | None:
        usable = self.baseline is not None and not self.invalid and not self.mismatches
        return self.baseline.metrics if usable and self.baseline is not None else None


class PerfGate:
    """Compares a :class:`PerfResult` with the test's baseline and fails the test item on a regression."""

    def __init__(self, item: pytest.Item, case: Case, state: LlmperfSession) -> None:
        self.item = item
        self.case = case
        self.state = state
        self.path = baseline_path_for(item, case, state)
        self.rel = state.relative(self.path)

    @property
    def rerecord(self) -> str:
        """The command that re-records this test's baseline: its node id with the session's options that change
        what is measured or where the baseline lives, so that it records what this run measured."""
        state = self.state
        options = []
        if state.simulate:
            options.append("--llmperf-simulate")
        if state.sim_slowdown != 1.0:
            options.append(f"--llmperf-sim-slowdown {state.sim_slowdown:g}")
        if state.sharegpt and self.case.workload.dataset == "sharegpt" and not self.case.workload.dataset_path:
            options.append(f"--llmperf-sharegpt {shlex.quote(state.sharegpt)}")
        if state.baseline_dir_option:
            options.append(f"--llmperf-baseline-dir {shlex.quote(state.baseline_dir_option)}")
        return " ".join([f"pytest '{self.item.nodeid}'", *options, "--llmperf-update-baselines"])

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

    def identity(self, result: PerfResult) -> WorkIdentity:
        return WorkIdentity(
            self.case.engine,
            self.case.workload,
            result.dataset,
            session_slowdown=self.state.sim_slowdown,
            simulated=self.state.simulate,
            version=result.server.version,
        )

    def _reference(self, result: PerfResult) -> _Reference:
        try:
            baseline = load_baseline(self.path)
        except BaselineError as exc:
            return _Reference(None, invalid=str(exc).replace(str(self.path), self.rel))
        if baseline is None:
            return _Reference(None)
        hw_now = _hardware(self.case.engine, self.state)
        # hardware keys known on both sides must agree (a published baseline may not know the driver)
        hardware = [
            f"hardware {k}: baseline {baseline.hardware[k]!r}, now {hw_now[k]!r}"
            for k in sorted(set(baseline.hardware) & set(hw_now))
            if baseline.hardware[k] != hw_now[k]
        ]
        work, notes = differences(baseline, self.identity(result))
        gated = [m for m in DEFAULT_GATED if m in result.samples and m not in baseline.metrics]
        return _Reference(baseline, hardware=hardware, work=work, notes=notes, missing=gated)

    def _new_baseline(self, result: PerfResult, previous: Baseline | None) -> Baseline:
        return Baseline(
            test=self.item.nodeid,
            case=self.case.id,
            engine=self.identity(result).engine_record(),
            workload=json.loads(self.case.workload.model_dump_json(exclude={"markers"})),
            dataset=result.dataset,
            hardware=_hardware(self.case.engine, self.state),
            provenance=Provenance(
                date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                plugin_version=__version__,
                source="measured",
                git_commit=_git_commit(self.state.rootdir),
            ),
            tolerance=previous.tolerance if previous is not None else {},
            metrics={k: v for k, v in sorted(result.samples.items())},
        )

    def _decide(self, result: PerfResult, ref: _Reference) -> tuple[list[MetricVerdict], str]:
        tolerances = self.tolerances(ref.baseline if ref.metrics is not None else None)

        def compare() -> list[MetricVerdict]:
            return compare_samples(
                ref.metrics, result.samples, tolerances=tolerances, default_tolerance=self.state.default_tolerance
            )

        rows = compare()
        # adaptive repeats: while the verdict is inconclusive, measure more (up to --llmperf-max-repeats)
        while (
            overall_verdict(rows) == "INCONCLUSIVE"
            and result.more is not None
            and not result.stopped
            and len(result.runs) < self.state.max_repeats
        ):
            result.more()
            rows = compare()
        return rows, overall_verdict(rows)

    def check(self, result: PerfResult) -> None:
        if self.state.calibrate:
            self._calibrate(result)
            return
        ref = self._reference(result)
        if ref.invalid and not self.state.update:  # failed outside the except block: no chained traceback
            pytest.fail(
                f"[{self.case.id}] {ref.invalid}\nRe-record it (replaces the file): {self.rerecord}", pytrace=False
            )
        rows, verdict = self._decide(result, ref)
        functional = any(r.metric == "failed" and r.verdict == "FAIL" for r in rows)
        stale = bool(ref.invalid or ref.mismatches or ref.missing)
        update = self.state.update == "all" or (
            self.state.update == "failing" and (verdict in ("FAIL", "NEW") or stale)
        )
        written = update and not functional
        if written:  # at once, so that a session killed later loses nothing it refreshed
            write_baseline(self.path, self._new_baseline(result, ref.baseline))
        self._record(result, ref, rows, verdict, written)
        if self.state.report_dir is not None:
            self._write_runs(result)
        self._outcome(result, ref, rows, verdict, functional, update)

    def _record(
        self, result: PerfResult, ref: _Reference, rows: list[MetricVerdict], verdict: str, written: bool
    ) -> None:
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
            "command": canonical_command(engine, sim_slowdown=self.state.sim_slowdown),
            "dataset": result.dataset,
            "verdict": verdict,
            "baseline": self.rel,
            "baseline_source": ref.baseline.provenance.source if ref.baseline is not None else None,
            "not_compared": ref.mismatches,
            "notes": ref.notes + ([result.stopped] if result.stopped else []),
            "updated": written,
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

    def _outcome(
        self,
        result: PerfResult,
        ref: _Reference,
        rows: list[MetricVerdict],
        verdict: str,
        functional: bool,
        update: bool,
    ) -> None:
        cid, rel = self.case.id, self.rel
        if functional:
            errors = "; ".join(dict.fromkeys(e for run in result.runs for e in run.errors))[:1000]
            stopped = f"\n{result.stopped}" if result.stopped else ""
            pytest.fail(f"[{cid}] {format_failure(rows)}\nerrors: {errors}{stopped}", pytrace=False)
        if update:
            return
        notes = "".join(f"\nnote: {n}" for n in ref.notes)
        if ref.mismatches:
            what = "\n".join(f"  {m}" for m in ref.mismatches)
            message = (
                f"[{cid}] baseline {rel} was measured on other hardware or other work; it is not compared:\n{what}"
            )
            if self.state.other_hardware == "skip" and not ref.work:  # other work is the suite's change: it fails
                pytest.skip(f"{message} (--llmperf-on-other-hardware=skip)")
            pytest.fail(f"{message}\nIf the change is intended, re-record it: {self.rerecord}", pytrace=False)
        if ref.missing:
            pytest.fail(
                f"[{cid}] baseline {rel} has no samples of gated metric(s) {', '.join(ref.missing)}. "
                f"Re-record it: {self.rerecord}",
                pytrace=False,
            )
        if verdict == "NEW":
            message = f"[{cid}] no baseline: {rel} does not exist. Record it with:\n    {self.rerecord}"
            pytest.fail(message, pytrace=False)
        if verdict == "FAIL":
            pytest.fail(
                f"[{cid}] performance regression: {headline(rows)}\nagainst {rel}:\n{format_failure(rows)}{notes}\n"
                "If this change is intended, re-run with --llmperf-update-baselines to accept it:\n"
                f"    {self.rerecord}",
                pytrace=False,
            )
        if verdict == "INCONCLUSIVE":
            changes = "; ".join(
                f"{r.metric} {r.change:+.1%}" for r in rows if r.verdict == "INCONCLUSIVE" and r.change is not None
            )
            warnings.warn(
                LlmperfInconclusiveWarning(f"[{cid}] inconclusive: {changes}; add runs with --llmperf-repeats"),
                stacklevel=3,
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
    dataset_file(llmperf_case, _state(request))  # a test that cannot run never starts (or waits for) a server
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
