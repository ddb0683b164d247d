"""The pytest plugin: options, markers and the hooks that tie the fixtures, servers and gate together.

Kept thin on purpose: state lives in :mod:`pytest_llmperf.session` (in ``config.stash``), the
fixtures in :mod:`pytest_llmperf.fixtures`, comparisons in :mod:`pytest_llmperf.gate`.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import pytest

from pytest_llmperf.config import Case, expand_cases
from pytest_llmperf.engines.process import install_signal_handlers
from pytest_llmperf.errors import ConfigError
from pytest_llmperf.fixtures import (
    llmperf_bench,
    llmperf_case,
    llmperf_engine,
    llmperf_gate,
    llmperf_server,
    llmperf_workload,
)
from pytest_llmperf.report import ResultCollector
from pytest_llmperf.session import LlmperfSession, ServerPool, session_key

__all__ = [
    "llmperf_bench",
    "llmperf_case",
    "llmperf_engine",
    "llmperf_gate",
    "llmperf_server",
    "llmperf_workload",
]

UPDATE_MODES = ("failing", "all")
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
        "(default), or of every selected test with =all. Written once, at the end of the session.",
    )
    group.addoption(
        "--llmperf-repeats",
        type=int,
        default=None,
        metavar="N",
        help="measured runs of each workload (default: ini llmperf_repeats, 3)",
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
    parser.addini("llmperf_baseline_dir", "directory of baseline files, relative to the rootdir", default="baselines")
    parser.addini("llmperf_repeats", "measured runs per workload", default="3")
    parser.addini("llmperf_tolerance", "default relative tolerance of gated metrics", default="0.05")


def _usage_int(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise pytest.UsageError(f"{what} must be an integer, got {value!r}") from None


def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    update = config.getoption("llmperf_update_baselines")
    if update is not None and update not in UPDATE_MODES:
        # `--llmperf-update-baselines perf_tests`: the optional value swallowed a path; give it back
        if os.path.exists(update.split("::")[0]):
            config.args.append(update)
            update = "failing"
        else:
            raise pytest.UsageError(
                f"--llmperf-update-baselines={update!r}: expected 'failing' (the default) or 'all', "
                "e.g. --llmperf-update-baselines=all"
            )
    repeats_opt = config.getoption("llmperf_repeats")
    repeats = (
        repeats_opt if repeats_opt is not None else _usage_int(config.getini("llmperf_repeats"), "ini llmperf_repeats")
    )
    if repeats < 1:
        raise pytest.UsageError(f"--llmperf-repeats must be at least 1, got {repeats}")
    slowdown = config.getoption("llmperf_sim_slowdown")
    if slowdown <= 0:
        raise pytest.UsageError(f"--llmperf-sim-slowdown must be positive, got {slowdown}")
    try:
        tolerance = float(config.getini("llmperf_tolerance"))
    except ValueError:
        raise pytest.UsageError(
            f"ini llmperf_tolerance must be a fraction, got {config.getini('llmperf_tolerance')!r}"
        ) from None
    if not 0 < tolerance < 1:
        raise pytest.UsageError(f"ini llmperf_tolerance must be in (0, 1), got {tolerance}")
    root = Path(config.rootpath)
    baseline_dir = Path(config.getoption("llmperf_baseline_dir") or config.getini("llmperf_baseline_dir"))
    log_dir = Path(config.getoption("llmperf_log_dir") or root / ".llmperf" / "logs")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        log_dir = log_dir / worker
    config.stash[session_key] = LlmperfSession(
        rootdir=root,
        baseline_dir=baseline_dir if baseline_dir.is_absolute() else root / baseline_dir,
        update=update,
        repeats=repeats,
        default_tolerance=tolerance,
        sharegpt=config.getoption("llmperf_sharegpt"),
        pool=ServerPool(log_dir if log_dir.is_absolute() else root / log_dir, slowdown),
    )
    # one server per engine config under pytest-xdist: keep each config's tests on one worker
    if getattr(config.option, "dist", "no") == "load":
        config.option.dist = "loadgroup"
    config.pluginmanager.register(ResultCollector(config.stash[session_key]), "llmperf-results")
    install_signal_handlers()


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep the tests of one engine config together, so that its server starts once."""
    first_seen: dict[str, int] = {}
    keys: list[int] = []
    for index, item in enumerate(items):
        case = _case(item)
        keys.append(first_seen.setdefault(case.engine.id, index) if case is not None else index)
    order = sorted(range(len(items)), key=lambda i: keys[i])
    items[:] = [items[i] for i in order]


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
    state.flush_baselines()


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(session_key, None)
    if state is not None:
        state.pool.close()
