"""The pytest plugin: options, markers and the hooks that tie the fixtures, servers and gate together.

Kept thin on purpose: state lives in :mod:`pytest_llmperf.session` (in ``config.stash``), the
fixtures in :mod:`pytest_llmperf.fixtures`, comparisons in :mod:`pytest_llmperf.gate.decision`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Generator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pytest_llmperf.config import Case, expand_cases
from pytest_llmperf.engines.process import install_signal_handlers
from pytest_llmperf.errors import ConfigError
from pytest_llmperf.fixtures import (
    baseline_path_for,
    llmperf_bench,
    llmperf_case,
    llmperf_engine,
    llmperf_gate,
    llmperf_server,
    llmperf_workload,
)
from pytest_llmperf.hardware import REQUIREMENTS, missing_hardware
from pytest_llmperf.report.files import copy_logs
from pytest_llmperf.report.record import PERF_TEST_PROPERTY
from pytest_llmperf.report.terminal import ResultCollector
from pytest_llmperf.session import build_session, lock_baseline_dir, session_key
from pytest_llmperf.sharding import parse_shard, shard_of
from pytest_llmperf.xdist_support import groups_file_for, make_scheduler, remove_stale_groups_files, write_groups

__all__ = [
    "llmperf_bench",
    "llmperf_case",
    "llmperf_engine",
    "llmperf_gate",
    "llmperf_server",
    "llmperf_workload",
]

MARKERS = (
    "llmperf_matrix(path): parametrize this module's perf tests with the matrix file at path (relative to the module)",
    "llmperf(tolerance={metric: fraction}): per-test gate settings",
    "sim: runs against the built-in simulated engine (no GPU needed)",
    "h200: needs one node with 8 NVIDIA H200 GPUs",
    "cpu: runs a real engine on the CPU",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmperf", "LLM serving performance regression tests (pytest-llmperf)")
    group.addoption(
        "--llmperf-update-baselines",
        nargs="?",
        const="failing",
        default=None,
        metavar="failing|all",
        help="write current results as baselines instead of failing: of failing and missing tests "
        "(default), or of every selected test with =all. Each is written as soon as its test has its verdict.",
    )
    group.addoption(
        "--llmperf-repeats",
        type=int,
        default=None,
        metavar="N",
        help="measured runs of each workload (default: ini llmperf_repeats, 3)",
    )
    group.addoption(
        "--llmperf-baseline-repeats",
        type=int,
        default=None,
        metavar="N",
        help="with --llmperf-update-baselines: measure up to N runs in all before writing a baseline (a baseline "
        "is paid once and compared for weeks; default: as many as --llmperf-repeats)",
    )
    group.addoption(
        "--llmperf-confirm-repeats",
        type=int,
        default=5,
        metavar="N",
        help="sequential confirmation: a test whose first verdict fails or is borderline runs N fresh runs "
        "before it is decided (default 5; 0: decide on the first runs)",
    )
    group.addoption(
        "--llmperf-history",
        default=None,
        metavar="URL",
        help="record every run in this history store at the end: a SQLite file path, or postgresql://... "
        "(needs the 'history' extra)",
    )
    group.addoption(
        "--llmperf-engine-image",
        action="append",
        default=[],
        metavar="ENGINE=IMAGE",
        help="run ENGINE's configs from this container image for this run (an upgrade candidate), e.g. "
        "vllm=vllm/vllm-openai:nightly; repeatable",
    )
    group.addoption(
        "--llmperf-engine-python",
        action="append",
        default=[],
        metavar="ENGINE=PYTHON",
        help="run ENGINE's configs with this virtual environment's Python for this run; repeatable",
    )
    group.addoption(
        "--llmperf-container-runtime",
        default=None,
        metavar="RUNTIME",
        help="the container runtime for configs with an image: podman or docker (default: podman if on PATH, "
        "else docker)",
    )
    group.addoption(
        "--llmperf-reference",
        default="baseline",
        metavar="SOURCE",
        help="what tonight is compared with: 'baseline' (the committed files, default) or 'history[:K]' (the "
        "last K accepted nights of the same test, engine version and hardware in --llmperf-history; K 10)",
    )
    group.addoption(
        "--llmperf-night-cv",
        type=float,
        default=None,
        metavar="CV",
        help="night-to-night variation of the metrics (e.g. 0.015), weighed with the runs' own noise "
        "(default: ini llmperf_night_cv, 0)",
    )
    group.addoption(
        "--llmperf-max-repeats",
        type=int,
        default=None,
        metavar="N",
        help="adaptive repeats: add runs, up to N in all, while a gated verdict is inconclusive",
    )
    group.addoption(
        "--llmperf-report-dir",
        default=None,
        metavar="DIR",
        help="write every run's vllm-bench-serve JSON, summary.json, summary.md and the server logs to DIR "
        "(summary.md also to $GITHUB_STEP_SUMMARY when set)",
    )
    group.addoption(
        "--llmperf-calibrate",
        action="store_true",
        help="noise calibration: run each selected test 5+ times without comparing, and report the run-to-run "
        "variation per metric with the tolerance it supports (written to .llmperf/calibration.json)",
    )
    group.addoption(
        "--llmperf-sim-slowdown",
        type=float,
        default=1.0,
        metavar="FACTOR",
        help="multiply the simulated engine's step times (prove that the gate catches a regression)",
    )
    group.addoption(
        "--llmperf-baseline-dir",
        default=None,
        metavar="DIR",
        help="where baselines live (default: ini llmperf_baseline_dir, 'baselines')",
    )
    group.addoption(
        "--llmperf-log-dir",
        default=None,
        metavar="DIR",
        help="where server logs go (default: .llmperf/logs under the rootdir)",
    )
    group.addoption(
        "--llmperf-sharegpt",
        default=os.environ.get("LLMPERF_SHAREGPT"),
        metavar="PATH",
        help="ShareGPT V3 JSON file for sharegpt workloads (default: $LLMPERF_SHAREGPT)",
    )
    group.addoption(
        "--llmperf-expected-baselines",
        default=None,
        metavar="FILE",
        help="write the baseline paths of every collected perf test to FILE as JSON (llmperf baselines prune)",
    )
    group.addoption(
        "--llmperf-on-other-hardware",
        choices=("fail", "skip"),
        default="fail",
        help="a baseline recorded on other hardware (GPU, driver, CPU class) is never compared: fail the test "
        "saying which key differs (default), or skip it with that reason",
    )
    group.addoption(
        "--llmperf-shard",
        default=None,
        metavar="K/N",
        help="run only shard K of N: the tests of the engine configs assigned to it (stable rendezvous hashing)",
    )
    group.addoption(
        "--llmperf-simulate",
        action="store_true",
        help="run every engine config on the simulated engine (its own command line, an H200-shaped profile); "
        "results and baselines are keyed apart from real hardware (baselines/simulated/)",
    )
    group.addoption(
        "--llmperf-base-url",
        default=None,
        metavar="URL",
        help="benchmark an already running server for every config instead of launching one",
    )
    group.addoption(
        "--llmperf-endpoints",
        default=None,
        metavar="FILE",
        help="TOML or JSON mapping config ids to base URLs of running servers (external-endpoint mode)",
    )
    parser.addini("llmperf_baseline_dir", "directory of baseline files, relative to the rootdir", default="baselines")
    parser.addini("llmperf_repeats", "measured runs per workload", default="3")
    parser.addini("llmperf_tolerance", "default relative tolerance of gated metrics", default="0.06")
    parser.addini(
        "llmperf_false_alarm_budget",
        "share of no-change nights the whole suite may go red on; each test's strictness derives from it",
        default="0.02",
    )
    parser.addini(
        "llmperf_night_cv",
        "night-to-night coefficient of variation of the metrics (calibration, history)",
        default="0",
    )


def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    state = build_session(config)  # raises pytest.UsageError with the fix for bad options
    if state.update and not hasattr(config, "workerinput"):  # the controller locks for its workers too
        state.lock_fd = lock_baseline_dir(state.baseline_dir)
    config.stash[session_key] = state
    config.pluginmanager.register(ResultCollector(state), "llmperf-results")
    if not hasattr(config, "workerinput") and config.get_verbosity() >= 0:
        state.reporter_lookup = lambda: config.pluginmanager.get_plugin("terminalreporter")
        capman = config.pluginmanager.get_plugin("capturemanager")
        if capman is not None:
            state.capture_disabled = capman.global_and_fixture_disabled
    install_signal_handlers()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """pytest-xdist (controller): with the default --dist load, keep each engine config on one worker."""
    if config.getoption("dist", "no") not in ("load", "loadgroup"):
        return None
    remove_stale_groups_files()  # left by controllers that were killed
    return make_scheduler(config, log, groups_file_for(config.stash[session_key].run_id))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist (controller): tell each worker where to write the node-id -> config map."""
    node.workerinput["llmperf_groups_file"] = str(groups_file_for(node.config.stash[session_key].run_id))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "llmperf_case" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("llmperf_matrix")
    if marker is None or not marker.args:
        return
    path = Path(str(metafunc.definition.path)).parent / str(marker.args[0])
    state = metafunc.config.stash[session_key]
    try:
        cases = expand_cases(state.matrix(path), path)
    except ConfigError as exc:
        error = str(exc)
    else:
        error = ""
    if error:  # raised outside the except block: no chained traceback in the report
        pytest.fail(error, pytrace=False)
    registered = {line.split(":")[0].split("(")[0].strip() for line in metafunc.config.getini("markers")}
    for name in dict.fromkeys(m for case in cases for m in case.markers):
        if name not in registered:  # a matrix's markers are declared by the matrix: also under --strict-markers
            metafunc.config.addinivalue_line("markers", f"{name}: declared in {state.relative(path)}")
    params = [
        pytest.param(
            case,
            id=case.id,
            marks=[*(getattr(pytest.mark, m) for m in case.markers), pytest.mark.xdist_group(case.engine.id)],
        )
        for case in cases
    ]
    metafunc.parametrize("llmperf_case", params, indirect=True)


def _case(item: pytest.Item | None) -> Case | None:
    callspec = getattr(item, "callspec", None)
    value = callspec.params.get("llmperf_case") if callspec is not None else None
    return value if isinstance(value, Case) else None


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: the suite is what runs
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests whose hardware is missing; keep the tests of one engine config together, so that
    its server starts once; set the suite's size for the gate's policy."""
    state = config.stash[session_key]
    if not state.simulate and not state.pool.endpoints:
        for item in items:
            for name in REQUIREMENTS:
                if item.get_closest_marker(name) is not None:
                    reason = missing_hardware(name, state.gpus)
                    if reason:
                        item.add_marker(pytest.mark.skip(reason=reason))
    n_perf = sum(1 for item in items if _case(item) is not None)
    if state.shard is not None:
        k, n = parse_shard(state.shard)
        keep: list[pytest.Item] = []
        drop: list[pytest.Item] = []
        for item in items:
            case = _case(item)
            (keep if shard_of(case.engine.id if case else item.nodeid, n) == k else drop).append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep
    # the suite's size sets each test's strictness: counted before a shard takes its part, so that every shard
    # of one night holds its tests to the same standard
    state.policy = replace(state.policy, n_tests=max(1, n_perf))
    state.night_cv_from_history()
    first_seen: dict[str, int] = {}
    keys: list[int] = []
    for index, item in enumerate(items):
        case = _case(item)
        keys.append(first_seen.setdefault(case.engine.id, index) if case is not None else index)
    order = sorted(range(len(items)), key=lambda i: keys[i])
    items[:] = [items[i] for i in order]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    # tryfirst: an xdist worker must publish which config each test belongs to before xdist's own hook tells
    # the controller that collection is done (the controller reads the map when it schedules)
    groups_file = getattr(session.config, "workerinput", {}).get("llmperf_groups_file")
    if groups_file:
        groups = {item.nodeid: case.engine.id for item in session.items if (case := _case(item))}
        write_groups(Path(groups_file), groups)
    state = session.config.stash[session_key]
    if state.shard is not None and state.reporter is not None:
        configs = sorted({case.engine.id for item in session.items if (case := _case(item))})
        state.reporter.write_line(
            f"llmperf: shard {state.shard} runs {len(configs)} engine config(s): {', '.join(configs) or '-'}"
        )
    target = session.config.getoption("llmperf_expected_baselines")
    if not target:
        return
    state = session.config.stash[session_key]
    paths = sorted({str(baseline_path_for(item, case, state)) for item in session.items if (case := _case(item))})
    # the baseline folders of the test modules collected: `llmperf baselines prune` touches nothing outside them
    modules = sorted({str(Path(p).parent.parent) for p in paths})
    Path(target).write_text(json.dumps({"baselines": paths, "modules": modules}, indent=1))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """Tag the reports of perf tests, so that the controller (also of an xdist run) can sum up their skips."""
    outcome = yield
    if _case(item) is not None:
        outcome.get_result().user_properties.append((PERF_TEST_PROPERTY, "1"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    yield
    case, nxt = _case(item), _case(nextitem)
    if case is not None and (nxt is None or nxt.engine.id != case.engine.id):
        item.config.stash[session_key].pool.release(case.engine.id)


def pytest_sessionfinish(session: pytest.Session) -> None:
    state = session.config.stash.get(session_key, None)
    if state is None:
        return
    state.pool.close()
    if state.report_dir is not None:
        copy_logs(state.report_dir, sorted(state.pool.log_paths), state.pool.secrets)
    if not hasattr(session.config, "workerinput"):
        groups_file_for(state.run_id).unlink(missing_ok=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(session_key, None)
    if state is not None:
        state.pool.close()
        if state.lock_fd is not None:
            os.close(state.lock_fd)  # releases the baseline folder's lock
            state.lock_fd = None
