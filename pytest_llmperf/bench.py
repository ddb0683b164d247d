"""Running one perf test's workload against its server: warm-ups, then the measured runs.

:class:`PerfBench` (the ``llmperf_bench`` fixture) builds the requests and settings from the test's
workload and returns a :class:`PerfResult`, one sample per metric per run; the gate may ask it for
more runs while a verdict is inconclusive.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from pytest_llmperf.config import Case, Workload
from pytest_llmperf.errors import DatasetError, ServerError
from pytest_llmperf.gate.identity import dataset_identity
from pytest_llmperf.loadgen import BenchmarkResult, BenchSettings, SampleRequest, run_benchmark_sync
from pytest_llmperf.loadgen.datasets import Tokenizer, requests_for
from pytest_llmperf.loadgen.tokenizers import load_tokenizer
from pytest_llmperf.session import LlmperfSession, RunningServer
from pytest_llmperf.tokenizer import SimTokenizer

__all__ = ["BUNDLED_SAMPLE", "PerfBench", "PerfResult", "dataset_file"]


CALIBRATION_RUNS = 5
STOP_FAILED_SHARE = 0.05  # a run with more failed requests than this share ends the repeats


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
        return BenchSettings.for_workload(
            workload, base_url=self.server.base_url, model=self.server.model, prewarm_connections=True
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
            # a failing engine: the verdict is decided and more runs only cost time. A few failures (a published
            # baseline that completed 984 of 1000 has 16) are judged against the baseline's own, after all runs
            if failed > STOP_FAILED_SHARE * len(run.records):
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
