"""Per-session plugin state, kept in ``config.stash``: options, the server pool, the baseline-folder lock."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
import typing
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from pytest_llmperf.config import EngineName, Matrix, load_matrix
from pytest_llmperf.engines.container import RUNTIMES
from pytest_llmperf.engines.pool import RunningServer, ServerPool
from pytest_llmperf.gate.suite import DEFAULT_CONFIRM_RUNS, DEFAULT_POLICY, SuitePolicy
from pytest_llmperf.hardware import Gpu, detect_gpus
from pytest_llmperf.history.reference import parse_reference
from pytest_llmperf.loadgen.runner import ProgressFn
from pytest_llmperf.redact import redact_text
from pytest_llmperf.sharding import parse_shard

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["LlmperfSession", "RunningServer", "ServerPool", "build_session", "session_key"]


@dataclass
class LlmperfSession:
    rootdir: Path
    baseline_dir: Path
    update: str | None  # None, "failing" or "all"
    repeats: int
    default_tolerance: float
    sharegpt: str | None
    pool: ServerPool
    simulate: bool = False
    max_repeats: int = 0  # adaptive repeats up to this many runs while a verdict is inconclusive
    baseline_repeats: int = 0  # runs a written baseline holds at least (--llmperf-baseline-repeats)
    confirm_repeats: int = DEFAULT_CONFIRM_RUNS  # fresh runs a failing or borderline first verdict buys
    policy: SuitePolicy = DEFAULT_POLICY  # the suite's false-alarm budget over its gated tests, the night term
    calibrate: bool = False
    calibration: list[dict[str, Any]] = field(default_factory=list)
    report_dir: Path | None = None
    other_hardware: str = "fail"  # what a baseline from other hardware does: "fail" or "skip"
    shard: str | None = None
    reporter_lookup: Any = None  # finds the terminal reporter for progress lines (None: quiet, or an xdist worker)
    capture_disabled: Any = contextlib.nullcontext
    _gpus: list[Gpu] | None = None
    _gpus_detected: bool = False
    results: list[dict[str, Any]] = field(default_factory=list)
    lock_fd: int | None = None  # holds the baseline folder's lock while refreshing
    baseline_dir_option: str | None = None  # --llmperf-baseline-dir as given (for the commands the plugin prints)
    _matrices: dict[Path, Matrix] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    run_uid: str = field(default_factory=lambda: uuid.uuid4().hex)  # this session in summary.json and history
    history: str | None = None  # --llmperf-history: the store this session's runs are recorded in
    reference_nights: int | None = None  # --llmperf-reference history:K (None: the baseline files)
    _store: Any = None
    run_id: str = field(default_factory=lambda: f"{os.getpid()}-{time.time_ns()}")

    @property
    def gpus(self) -> list[Gpu] | None:
        """The node's GPUs, detected once (``None``: no nvidia-smi)."""
        if not self._gpus_detected:
            self._gpus = detect_gpus()
            self._gpus_detected = True
            self.pool.gpus = self._gpus
        return self._gpus

    @property
    def reporter(self) -> Any:
        return self.reporter_lookup() if self.reporter_lookup is not None else None

    def progress(self, label: str, every_s: float = 5.0) -> ProgressFn | None:
        """A progress callback printing a line at most every ``every_s`` seconds, or None when quiet."""
        reporter = self.reporter
        if reporter is None:
            return None
        write = reporter
        last = [time.monotonic()]

        def report(done: int, total: int, out_tokens: int, elapsed: float) -> None:
            now = time.monotonic()
            if now - last[0] < every_s and done < total:
                return
            last[0] = now
            rate = out_tokens / elapsed if elapsed > 0 else 0.0
            with self.capture_disabled():  # the test's output is captured: the line goes to the terminal
                write.ensure_newline()
                write.write_line(f"  [{label}] {done}/{total} requests, {rate:,.0f} output tok/s, {elapsed:.0f} s")

        return report

    def history_store(self) -> Any:
        """The history store, opened once (--llmperf-reference history needs it during the session)."""
        if self._store is None and self.history is not None:
            from pytest_llmperf.history.store import HistoryError, HistoryStore

            try:
                self._store = HistoryStore(self.history)
            except HistoryError as exc:
                raise pytest.UsageError(f"--llmperf-history: {exc}") from None
        return self._store

    def night_cv_from_history(self) -> None:
        """--llmperf-reference history: the night-to-night CV measured over the store's accepted nights,
        unless it was given."""
        if self.reference_nights is None or self.policy.night_cv or self.policy.night_from:  # given, or done
            return
        from pytest_llmperf.history.reference import suite_night_cv

        cv, df = suite_night_cv(self.history_store(), k=self.reference_nights)
        if df:
            self.policy = replace(self.policy, night_cv=cv, night_from=f"from history, {df} df")

    def matrix(self, path: Path) -> Matrix:
        path = path.resolve()
        if path not in self._matrices:
            self._matrices[path] = load_matrix(path)
        return self._matrices[path]

    @property
    def sim_slowdown(self) -> float:
        return self.pool.sim_slowdown

    def relative(self, path: Path) -> str:
        try:
            return os.path.relpath(path, self.rootdir)
        except ValueError:
            return str(path)


session_key = pytest.StashKey[LlmperfSession]()


def _lock_holders(folder: Path) -> str:
    """Who holds a lock on ``folder`` (from /proc/locks), for the message."""
    try:
        inode = os.stat(folder).st_ino
        with open("/proc/locks", encoding="ascii") as f:
            pids = [line.split()[4] for line in f if line.split()[5].endswith(f":{inode}")]
    except (OSError, IndexError):
        return ""
    return f" (pid {', '.join(dict.fromkeys(pids))})" if pids else ""


def lock_baseline_dir(folder: Path) -> int:
    """An exclusive lock on the baseline folder for a refreshing session, so that two sessions never both
    rewrite it (the last writer would silently win). Returns the descriptor that holds the lock."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise pytest.UsageError(
            f"--llmperf-update-baselines: another pytest session is refreshing baselines in {folder}"
            f"{_lock_holders(folder)}. Wait for it to finish, or refresh into another folder with "
            "--llmperf-baseline-dir DIR."
        ) from None
    return fd


UPDATE_MODES = ("failing", "all")


def _fraction(value: object, what: str, *, zero_ok: bool = False) -> float:
    """A fraction in (0, 1) (or [0, 1) with ``zero_ok``) from an option or ini value, or a usage error."""
    try:
        number = float(str(value))
    except ValueError:
        raise pytest.UsageError(f"{what} must be a fraction, got {value!r}") from None
    if not (0 <= number < 1 if zero_ok else 0 < number < 1):
        raise pytest.UsageError(f"{what} must be in {'[0, 1)' if zero_ok else '(0, 1)'}, got {number}")
    return number


def history_target(target: str | None) -> str | None:
    """--llmperf-history: checked at start (the extra installed), so that a night is not lost at its end."""
    if target is None:
        return None
    needs = ["sqlalchemy"] + (["psycopg"] if target.startswith("postgresql") else [])
    for module in needs:
        try:
            __import__(module)
        except ImportError:
            raise pytest.UsageError(
                f"--llmperf-history {redact_text(target)}: the history store needs {module}: "
                "pip install 'pytest-llmperf[history]'"
            ) from None
    return target


ENGINES: tuple[str, ...] = typing.get_args(EngineName)


def _engine_map(values: list[str], option: str, example: str) -> dict[str, str]:
    """``ENGINE=VALUE`` options into a mapping; a usage error naming the form otherwise."""
    out: dict[str, str] = {}
    for value in values:
        engine, sep, target = value.partition("=")
        if not sep or engine not in ENGINES or not target:
            raise pytest.UsageError(
                f"{option} {value!r}: expected ENGINE=VALUE with ENGINE one of {', '.join(ENGINES)}, "
                f"e.g. {option} {example}"
            )
        out[engine] = target
    return out


def _usage_int(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise pytest.UsageError(f"{what} must be an integer, got {value!r}") from None


def load_endpoints(path: str) -> dict[str, str]:
    """A mapping of config ids to base URLs, from TOML (``id = "http://..."``) or JSON."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise pytest.UsageError(f"--llmperf-endpoints {path}: cannot read it ({exc})") from None
    try:
        data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    except ValueError as exc:
        raise pytest.UsageError(f"--llmperf-endpoints {path}: not valid {p.suffix[1:] or 'TOML'} ({exc})") from None
    bad = [k for k, v in data.items() if not isinstance(v, str) or not v.startswith(("http://", "https://"))]
    if bad:
        raise pytest.UsageError(
            f'--llmperf-endpoints {path}: entries {bad} must map a config id to a base URL like "http://10.0.0.5:8000"'
        )
    return {str(k): str(v) for k, v in data.items()}


def build_session(config: pytest.Config) -> LlmperfSession:
    """Read and check the plugin's options; every problem is a ``pytest.UsageError`` with the fix."""
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
    max_repeats = config.getoption("llmperf_max_repeats") or repeats
    baseline_repeats = config.getoption("llmperf_baseline_repeats") or repeats
    if baseline_repeats < 1:
        raise pytest.UsageError(f"--llmperf-baseline-repeats must be at least 1, got {baseline_repeats}")
    if max_repeats < repeats:
        raise pytest.UsageError(f"--llmperf-max-repeats ({max_repeats}) must be at least --llmperf-repeats ({repeats})")
    slowdown = config.getoption("llmperf_sim_slowdown")
    if slowdown <= 0:
        raise pytest.UsageError(f"--llmperf-sim-slowdown must be positive, got {slowdown}")
    tolerance = _fraction(config.getini("llmperf_tolerance"), "ini llmperf_tolerance")
    night_opt = config.getoption("llmperf_night_cv")
    policy = SuitePolicy(
        budget=_fraction(config.getini("llmperf_false_alarm_budget"), "ini llmperf_false_alarm_budget"),
        night_cv=_fraction(
            night_opt if night_opt is not None else config.getini("llmperf_night_cv"),
            "--llmperf-night-cv" if night_opt is not None else "ini llmperf_night_cv",
            zero_ok=True,
        ),
    )
    try:
        reference_nights = parse_reference(config.getoption("llmperf_reference"))
    except ValueError as exc:
        raise pytest.UsageError(f"--llmperf-reference {config.getoption('llmperf_reference')!r}: {exc}") from None
    if reference_nights is not None and not config.getoption("llmperf_history"):
        raise pytest.UsageError(
            "--llmperf-reference history reads past nights from the history store: give it with "
            "--llmperf-history URL (a SQLite file, or postgresql://...)"
        )
    if reference_nights is not None:
        policy = replace(policy, reference_nights=reference_nights)
    confirm = config.getoption("llmperf_confirm_repeats")
    if confirm < 0:
        raise pytest.UsageError(f"--llmperf-confirm-repeats must be 0 or more, got {confirm}")
    endpoints: dict[str, str] = {}
    if config.getoption("llmperf_endpoints"):
        endpoints = load_endpoints(config.getoption("llmperf_endpoints"))
    base_url = config.getoption("llmperf_base_url")
    if base_url:
        if not base_url.startswith(("http://", "https://")):
            raise pytest.UsageError(f"--llmperf-base-url {base_url!r}: expected a URL like http://127.0.0.1:8000")
        endpoints.setdefault("*", base_url)
    shard = config.getoption("llmperf_shard")
    if shard is not None:
        try:
            k, n = parse_shard(shard)
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
        shard = f"{k}/{n}"
    images = _engine_map(
        config.getoption("llmperf_engine_image"), "--llmperf-engine-image", "vllm=vllm/vllm-openai:v0.13.0"
    )
    pythons = _engine_map(
        config.getoption("llmperf_engine_python"), "--llmperf-engine-python", "sglang=/opt/venvs/sglang/bin/python"
    )
    runtime = config.getoption("llmperf_container_runtime")
    if runtime is not None and os.path.basename(runtime) not in RUNTIMES:
        raise pytest.UsageError(f"--llmperf-container-runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    simulate = bool(config.getoption("llmperf_simulate"))
    root = Path(config.rootpath)
    baseline_dir = Path(config.getoption("llmperf_baseline_dir") or config.getini("llmperf_baseline_dir"))
    baseline_dir = baseline_dir if baseline_dir.is_absolute() else root / baseline_dir
    if simulate:  # simulated results never mix with real-hardware baselines
        baseline_dir = baseline_dir / "simulated"
    log_dir = Path(config.getoption("llmperf_log_dir") or root / ".llmperf" / "logs")
    log_dir = log_dir if log_dir.is_absolute() else root / log_dir
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        log_dir = log_dir / worker
    run_uid = uuid.uuid4().hex
    return LlmperfSession(
        rootdir=root,
        baseline_dir=baseline_dir,
        update=update,
        repeats=repeats,
        default_tolerance=tolerance,
        sharegpt=config.getoption("llmperf_sharegpt"),
        pool=ServerPool(
            log_dir,
            slowdown,
            simulate=simulate,
            endpoints=endpoints,
            cwd=root,
            images=images,
            pythons=pythons,
            container_runtime=runtime,
            session=run_uid,
        ),
        run_uid=run_uid,
        simulate=simulate,
        max_repeats=max_repeats,
        baseline_repeats=baseline_repeats,
        confirm_repeats=confirm,
        policy=policy,
        history=history_target(config.getoption("llmperf_history")),
        reference_nights=reference_nights,
        calibrate=bool(config.getoption("llmperf_calibrate")),
        shard=shard,
        other_hardware=config.getoption("llmperf_on_other_hardware"),
        baseline_dir_option=config.getoption("llmperf_baseline_dir"),
        report_dir=Path(config.getoption("llmperf_report_dir")).resolve()
        if config.getoption("llmperf_report_dir")
        else None,
    )
