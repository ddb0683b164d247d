"""The fixtures a perf test uses: its case, its engine server, the benchmark runner and the gate.

A perf test reads::

    pytestmark = pytest.mark.llmperf_matrix("sim.toml")

    def test_serving(llmperf_bench, llmperf_gate):
        result = llmperf_bench.run()
        llmperf_gate.check(result)

The measuring is in ``bench``, the decision in ``gate.check``, the record in ``report.record``; what is
here turns them into the test's outcome.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import warnings
from dataclasses import replace
from pathlib import Path

import pytest

from pytest_llmperf.bench import CALIBRATION_RUNS, PerfBench, PerfResult, dataset_file
from pytest_llmperf.config import Case, EngineConfig, Workload
from pytest_llmperf.engines.classify import read_log
from pytest_llmperf.engines.launch import canonical_command
from pytest_llmperf.errors import ServerError, UnsupportedConfigError
from pytest_llmperf.gate.baseline import Baseline, baseline_path, write_baseline
from pytest_llmperf.gate.check import (
    Decision,
    Reference,
    decide,
    from_history,
    hardware_for,
    load_reference,
    new_baseline,
    tolerances,
)
from pytest_llmperf.gate.decision import format_failure, headline
from pytest_llmperf.gate.identity import WorkIdentity
from pytest_llmperf.report.record import (
    CALIBRATION_PROPERTY,
    RESULT_PROPERTY,
    calibration_record,
    junit_properties,
    result_record,
    write_runs,
)
from pytest_llmperf.session import LlmperfSession, RunningServer, session_key
from pytest_llmperf.sim.calibrated import simulation_label

__all__ = [
    "CALIBRATION_RUNS",
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


class LlmperfInconclusiveWarning(UserWarning):
    """A gated metric moved beyond its tolerance without statistical significance."""


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

    def identity(self, result: PerfResult) -> WorkIdentity:
        return WorkIdentity(
            self.case.engine,
            self.case.workload,
            result.dataset,
            session_slowdown=self.state.sim_slowdown,
            simulated=self.state.simulate,
            version=result.server.version,
        )

    def simulated(self) -> str | None:
        """What a simulated result says of itself (None: measured on an engine)."""
        engine = self.case.engine
        if engine.engine != "sim" and not self.state.simulate:
            return None
        return simulation_label(engine.engine, engine.sim.profile)

    def hardware(self) -> dict[str, object]:
        return hardware_for(self.case.engine, simulate=self.state.simulate, gpus=self.state.gpus)

    def check(self, result: PerfResult) -> None:
        """Decide (gate.check), write the baseline when refreshing, record (report.record), then the outcome."""
        state, item = self.state, self.item
        if state.calibrate:
            record = calibration_record(item.nodeid, self.case.id, result.samples, len(result.runs))
            item.user_properties.append((CALIBRATION_PROPERTY, json.dumps(record)))
            return
        ref = load_reference(
            self.path,
            shown_as=self.rel,
            hardware_now=self.hardware(),
            identity=self.identity(result),
            measured=set(result.samples),
        )
        if state.reference_nights is not None:
            ref = self._history_reference(result, ref)
        if ref.invalid and not state.update:  # failed outside the except block: no chained traceback
            pytest.fail(
                f"[{self.case.id}] {ref.invalid}\nRe-record it (replaces the file): {self.rerecord}", pytrace=False
            )
        decision = self._decide(result, ref)
        update, written = self._refresh(decision, ref)
        if written:  # at once, so that a session killed later loses nothing it refreshed
            self._top_up(result)
            write_baseline(self.path, self._new_baseline(result, ref))
        self._record(result, ref, decision, written)
        self._outcome(result, ref, decision, update)

    def _history_reference(self, result: PerfResult, file: Reference) -> Reference:
        """--llmperf-reference history:K: the last K accepted nights of this test, engine version and hardware;
        the baseline file while history holds fewer than two."""
        from pytest_llmperf.history.reference import history_reference
        from pytest_llmperf.history.store import hardware_text

        assert self.state.reference_nights is not None
        version = result.server.version or ""
        hist, found = history_reference(
            self.state.history_store(),
            case_id=self.case.id,
            engine_version=version,
            hardware=hardware_text(self.hardware()),
            k=self.state.reference_nights,
        )
        if hist is None:
            file.notes.append(
                f"reference: the baseline file; history holds {found} accepted night(s) of this test on engine "
                f"version {version or '?'} and this hardware (--llmperf-reference history needs 2)"
            )
            return file
        return from_history(
            file, hist.metrics, nights=hist.nights, described=hist.describe(), measured=set(result.samples)
        )

    def _refresh(self, decision: Decision, ref: Reference) -> tuple[bool, bool]:
        """(is this test refreshed, is its baseline written). A run with failed requests is written only when
        asked for every test (=all): its failures become the baseline's; a refresh of failing tests never
        writes a failing engine."""
        mode = self.state.update
        update = mode == "all" or (mode == "failing" and (decision.verdict in ("FAIL", "NEW") or ref.stale))
        return update, update and (not decision.functional or mode == "all")

    def _decide(self, result: PerfResult, ref: Reference) -> Decision:
        marker = self.item.get_closest_marker("llmperf")
        tolerance = tolerances(
            self.case.tolerance,
            marker.kwargs.get("tolerance", {}) if marker is not None else {},
            ref.baseline.tolerance if ref.baseline is not None and ref.metrics is not None else {},
        )

        def more() -> bool:  # adaptive repeats, up to --llmperf-max-repeats
            if result.more is None or result.stopped or len(result.runs) >= self.state.max_repeats:
                return False
            result.more()
            return True

        def confirm() -> int:  # sequential confirmation: --llmperf-confirm-repeats fresh runs
            before = len(result.runs)
            for _ in range(self.state.confirm_repeats):
                if result.more is None or result.stopped:
                    break
                result.more()
            return len(result.runs) - before

        return decide(
            ref.metrics,
            result.samples,
            tolerance=tolerance,
            default_tolerance=self.state.default_tolerance,
            policy=replace(self.state.policy, reference_nights=ref.nights),
            confirm=confirm,
            more=more,
        )

    def _top_up(self, result: PerfResult) -> None:
        """--llmperf-baseline-repeats: a baseline about to be written gets its extra runs first."""
        while result.more is not None and not result.stopped and len(result.runs) < self.state.baseline_repeats:
            result.more()

    def _new_baseline(self, result: PerfResult, ref: Reference) -> Baseline:
        return new_baseline(
            test=self.item.nodeid,
            case=self.case.id,
            identity=self.identity(result),
            workload=self.case.workload,
            dataset=result.dataset,
            hardware=self.hardware(),
            samples=result.samples,
            previous=ref.baseline,
            root=self.state.rootdir,
        )

    def _record(self, result: PerfResult, ref: Reference, decision: Decision, written: bool) -> None:
        record = result_record(
            nodeid=self.item.nodeid,
            case=self.case,
            command=canonical_command(self.case.engine, sim_slowdown=self.state.sim_slowdown),
            version=result.server.version,
            dataset=result.dataset,
            samples=result.samples,
            runs=len(result.runs),
            ref=ref,
            decision=decision,
            baseline=self.rel,
            notes=[n for n in (decision.confirmation, result.stopped) if n],
            written=written,
            gate=self.state.policy.describe(),
            hardware=self.hardware(),
            image=result.server.config.image,
            simulated=self.simulated(),
        )
        self.item.user_properties.append((RESULT_PROPERTY, json.dumps(record)))
        self.item.user_properties.extend(junit_properties(decision))
        if self.state.report_dir is not None:
            write_runs(self.state.report_dir, self.case, result.runs, result.server.version, result.server.config.image)

    def _outcome(self, result: PerfResult, ref: Reference, decision: Decision, update: bool) -> None:
        cid, rel, rows, verdict = self.case.id, self.rel, decision.rows, decision.verdict
        if decision.functional and not (update and self.state.update == "all"):  # =all accepted them
            errors = "; ".join(dict.fromkeys(e for run in result.runs for e in run.errors))[:1000]
            stopped = f"\n{result.stopped}" if result.stopped else ""
            pytest.fail(f"[{cid}] {format_failure(rows)}\nerrors: {errors}{stopped}", pytrace=False)
        if update:
            return
        notes = "".join(f"\nnote: {n}" for n in [*ref.notes, decision.confirmation] if n)
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
