"""The real-engine tier: a real vLLM on the CPU (skipped where vLLM is not installed; see docs/real-engine.md)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from suite_files import PERF_TEST

from pytest_llmperf.config import EngineConfig
from pytest_llmperf.engines import ServerProcess, free_port, group_members, render_launch
from pytest_llmperf.engines.scrape import scrape_metrics
from pytest_llmperf.loadgen import BenchSettings, random_requests, run_benchmark_sync
from pytest_llmperf.loadgen.tokenizers import LocalTokenizer
from pytest_llmperf.tiny_model import write_tiny_model

pytest.importorskip("vllm", reason="the cpu tier needs vLLM: see docs/real-engine.md for the install line")
pytestmark = pytest.mark.cpu

ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_TARGET_DEVICE": "cpu"}
LAUNCHER = ["{python}", "-m", "vllm.entrypoints.openai.api_server", "--model"]
EXTRA = ["--load-format", "dummy", "--dtype", "float32", "--generation-config", "vllm"]


def config(model: Path, ident: str = "vllm-cpu", **kw: object) -> EngineConfig:
    return EngineConfig(
        id=ident,
        engine="vllm",
        model=str(model),
        launcher=tuple(LAUNCHER),
        served_model_name="tiny",
        max_model_len=2048,
        extra_args=tuple(EXTRA),
        env=ENV,
        startup_timeout_s=400,
        **kw,
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", max_len=2048)


def test_metrics_scrape_agrees_with_the_clients_count(tiny: Path, tmp_path: Path) -> None:
    cfg = config(tiny)
    port = free_port()
    server = ServerProcess(
        render_launch(cfg, port=port),
        base_url=f"http://127.0.0.1:{port}",
        model="tiny",
        log_path=tmp_path / "vllm.log",
        startup_timeout_s=400,
    )
    server.start()
    try:
        assert httpx.get(server.base_url + "/version").json()["version"].startswith("0.")
        before = scrape_metrics(server.base_url)
        running: list[float] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                running.append(scrape_metrics(server.base_url)["vllm:num_requests_running"])
                time.sleep(0.02)

        watcher = threading.Thread(target=watch)
        watcher.start()
        reqs = random_requests(LocalTokenizer(tiny), num_requests=60, input_len=32, output_len=400, seed=1)
        result = run_benchmark_sync(
            BenchSettings(base_url=server.base_url, model="tiny", max_concurrency=6, ignore_eos=True), reqs
        )
        stop.set()
        watcher.join()
        after = scrape_metrics(server.base_url)
    finally:
        server.stop()
    assert result.metrics.completed == 60 and result.metrics.total_output == 60 * 400, (
        result.errors[:5],
        result.client_warnings,
    )
    # generation tokens: exactly the client's own count
    assert after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"] == result.metrics.total_output
    # running requests: never more than the client had in flight, and none once the client is done. (Whether a
    # scrape lands while requests run depends on /metrics answering under load: seen in 4 of 5 local runs.)
    assert max(running) <= 6, running
    assert after["vllm:num_requests_running"] == 0


MATRIX = """
[[engines]]
id = "head16"
engine = "vllm"
launcher = {launcher}
model = "{model}"
served_model_name = "tiny"
tokenizer = "{model}"
max_model_len = 1024
extra_args = {extra}
env = {{ HF_HUB_OFFLINE = "1", TRANSFORMERS_OFFLINE = "1", VLLM_CPU_KVCACHE_SPACE = "1", VLLM_TARGET_DEVICE = "cpu" }}
startup_timeout_s = 400
{unsupported}

[[workloads]]
id = "w"
random_input_len = 16
random_output_len = 8
num_prompts = 4
"""


def matrix(model: Path, unsupported: str) -> str:

    return MATRIX.format(launcher=json.dumps(LAUNCHER), model=model, extra=json.dumps(EXTRA), unsupported=unsupported)


def test_a_real_unsupported_configuration_is_a_strict_expected_failure(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    head16 = write_tiny_model(tmp_path / "tiny-head16", head_dim=16)
    declared = 'unsupported = { match = "Unsupported CPU attention configuration", reason = "no head size 16" }'
    pytester.makefile(".toml", matrix=matrix(head16, declared))
    pytester.makepyfile(test_perf=PERF_TEST)
    result = pytester.runpytest("-rx", "--llmperf-repeats", "1")
    result.assert_outcomes(xfailed=1)
    out = result.stdout.str()
    assert "[head16] unsupported: no head size 16; the engine said:" in out
    assert "Unsupported CPU attention configuration: head_dim=16" in out
    # without the declaration, the same failure is an error that names its class
    pytester.makefile(".toml", matrix=matrix(head16, ""))
    undeclared = pytester.runpytest("--llmperf-repeats", "1")
    undeclared.assert_outcomes(errors=1)
    assert "[head16] unsupported configuration: server exited with code" in undeclared.stdout.str()


def test_sigint_of_pytest_leaves_no_vllm_process(pytester: pytest.Pytester, tiny: Path) -> None:
    pytester.makefile(
        ".toml",
        matrix=matrix(tiny, "")
        .replace("num_prompts = 4", "num_prompts = 200")
        .replace("random_output_len = 8", "random_output_len = 200"),
    )
    pytester.makepyfile(test_perf=PERF_TEST)
    log = Path(pytester.path) / "logs" / "head16.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--llmperf-log-dir",
            "logs",
            "--llmperf-update-baselines",
        ],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and not (log.exists() and "POST /v1/chat/completions" in log.read_text()):
            time.sleep(1)
        text = log.read_text()
        assert "POST /v1/chat/completions" in text, text[-3000:]  # the benchmark is running
        pgid = int(re.search(r"process group (\d+)", text).group(1))  # type: ignore[union-attr]
        assert len(group_members(pgid)) >= 2  # API server, EngineCore (and helpers)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 15
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert group_members(pgid) == []
    leftover = subprocess.run(["pgrep", "-f", f"--model {tiny}"], capture_output=True, text=True).stdout.split()
    assert leftover == []
