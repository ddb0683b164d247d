"""Engines from container images: the rendered command lines (golden, Docker and Podman), and with a real
Podman (Debian's, with runc) the simulated engine run from a locally built image: a run that passes, a
config that exits at start classified from the container's log, an image that is not there, an engine's
image overridden for one run, and Ctrl-C / SIGTERM / SIGKILL of pytest leaving no container."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from suite_files import PERF_TEST

from pytest_llmperf.config import load_matrix
from pytest_llmperf.engines.container import find_runtime, remove_dead_sessions
from pytest_llmperf.engines.launch import container_command

ROOT = Path(__file__).parent.parent
GOLDEN = Path(__file__).parent / "golden" / "study_container_commands.txt"


def _rendered() -> str:
    matrix = load_matrix(ROOT / "perf_tests" / "study" / "deepseek_v32_h200.toml")
    lines = []
    for cfg in matrix.engines:
        for kind in ("podman", "docker"):
            lines.append(f"[{cfg.id}] {kind}: {container_command(cfg, kind)}")
    slice_of = next(c for c in matrix.engines if c.id == "vllm-baseline")
    for kind in ("podman", "docker"):  # the GPU slice the pool assigns under xdist
        lines.append(f"[vllm-baseline, GPUs 4-7] {kind}: {container_command(slice_of, kind, gpus='4,5,6,7')}")
    return "\n".join(lines) + "\n"


def test_study_container_commands_are_golden(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regenerate after a deliberate change: LLMPERF_REGEN_GOLDEN=1 pytest tests/test_container.py -k golden"""
    monkeypatch.setenv("HF_HOME", "/root/.cache/huggingface")
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    text = _rendered()
    if os.environ.get("LLMPERF_REGEN_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()
    lines = text.splitlines()
    assert len(lines) == 2 * 24 + 2
    # the command inside is the study's own; around it the runtime's GPU flags, --ipc=host, the cache, the port
    assert "--device nvidia.com/gpu=all" in lines[0] and "--gpus all" in lines[1]
    assert (
        "--device nvidia.com/gpu=4 --device nvidia.com/gpu=5" in lines[-2]
        and "--gpus '\"device=4,5,6,7\"'" in lines[-1]
    )
    assert all("--network host --ipc host" in line for line in lines)
    assert all("-v /root/.cache/huggingface:/root/.cache/huggingface:rw" in line for line in lines)
    # the suite's folder, read-only at its own path and the working directory: relative paths (a chat template)
    assert all("-v ROOTDIR:ROOTDIR:ro" in line and "--workdir ROOTDIR" in line for line in lines)
    assert "CUDA_VISIBLE_DEVICES" not in lines[-1]  # the runtime maps the slice's devices instead
    assert "--entrypoint '' vllm/vllm-openai:v0.13.0 vllm serve deepseek-ai/DeepSeek-V3.2 -tp 8" in lines[0]
    assert "lmsysorg/sglang:v0.5.6.post2 python3 -m sglang.launch_server" in text
    assert "nvcr.io/nvidia/tensorrt-llm/release:1.2.0rc5 trtllm-serve" in text


def test_llmperf_matrix_prints_each_configs_container_commands() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "pytest_llmperf.cli", "matrix", "perf_tests/study"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    podman = [line for line in lines if line.startswith("  podman:")]
    docker = [line for line in lines if line.startswith("  docker:")]
    assert len(podman) == len(docker) == 24
    assert "image:     lmsysorg/sglang:v0.5.6.post2" in shown.stdout


def test_environment_goes_in_by_name_and_a_token_never_on_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_llmperf.config import EngineConfig

    monkeypatch.setenv("HF_TOKEN", "hf_s3cr3t_value")
    cfg = EngineConfig(
        id="e", engine="vllm", model="m", image="vllm/vllm-openai:v0.13.0", env={"VLLM_USE_DEEP_GEMM": "0"}
    )
    line = container_command(cfg, "podman")
    assert "-e HF_TOKEN -e VLLM_USE_DEEP_GEMM" in line and "hf_s3cr3t_value" not in line


def test_a_config_names_image_or_python_not_both() -> None:
    from pytest_llmperf.config import EngineConfig

    with pytest.raises(ValueError, match=r"give image .* or python .*, not both"):
        EngineConfig(id="e", engine="vllm", model="m", image="i", python="/venv/bin/python")
    venv = EngineConfig(id="e", engine="sglang", model="m", python="/venvs/sglang/bin/python")
    from pytest_llmperf.engines.launch import render_launch

    assert render_launch(venv).argv[:3] == ("/venvs/sglang/bin/python", "-m", "sglang.launch_server")
    vllm = EngineConfig(id="v", engine="vllm", model="m", python="/venvs/vllm/bin/python")
    assert render_launch(vllm).argv[:2] == ("/venvs/vllm/bin/vllm", "serve")


@pytest.mark.parametrize(
    ("kind", "flags"),
    [
        (
            "podman",
            "--device nvidia.com/gpu=4 --device nvidia.com/gpu=5 --device nvidia.com/gpu=6 --device nvidia.com/gpu=7",
        ),
        ("docker", "--gpus '\"device=4,5,6,7\"'"),
    ],
)
def test_the_pool_gives_a_container_its_workers_gpu_slice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, flags: str
) -> None:
    """Under xdist (worker gw1 of 2, TP4 configs on an 8-GPU node) the container gets GPUs 4-7 as devices;
    the runtime is a stand-in executable (nothing is run: an 8xH200 node is not here)."""
    from pytest_llmperf.config import EngineConfig
    from pytest_llmperf.engines.pool import ServerPool
    from pytest_llmperf.hardware import Gpu

    fake = tmp_path / kind
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    gpus = [Gpu(i, "NVIDIA H200", 143771, 0, "570.86.15") for i in range(8)]
    pool = ServerPool(tmp_path, gpus=gpus, images={"vllm": "vllm/vllm-openai:v0.14.0"}, container_runtime=str(fake))
    cfg = pool.effective(EngineConfig(id="v", engine="vllm", model="m", tensor_parallel_size=4))
    spec = pool._spec(cfg, 8123)
    line = spec.shell()
    assert f"{fake} run --rm --name llmperf-v-" in line and flags in line
    assert "CUDA_VISIBLE_DEVICES" not in line and spec.container is not None
    assert line.endswith("vllm/vllm-openai:v0.14.0 vllm serve m -tp 4 --port 8123")


# --- with a real container runtime -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runtime() -> str:
    found = find_runtime()
    if found is None:
        pytest.skip("no podman or docker on PATH (Debian: apt-get install podman runc; .ci/run installs them)")
    probe = subprocess.run([found, "info"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"{found} cannot run containers here: {probe.stderr.strip()[-300:]}")
    return found


@pytest.fixture(scope="module")
def image(runtime: str) -> str:
    from pytest_llmperf.sim.image import build_sim_image

    return build_sim_image(runtime)


def _matrix(image: str, cid: str, *, output_len: int = 16, prompts: int = 8, extra: str = "") -> str:
    return (
        f'[[engines]]\nid = "{cid}"\nengine = "sim"\nmodel = "llmperf-sim"\nimage = "{image}"\n'
        f'startup_timeout_s = 120\nsim = {{ profile = "deterministic", ttft_ms = 20, itl_ms = 20 }}\n{extra}\n'
        "[gate.tolerance]\noutput_throughput = 0.12\ntotal_token_throughput = 0.12\nmean_tpot_ms = 0.12\n\n"
        f'[[workloads]]\nid = "w"\nrandom_input_len = 16\nrandom_output_len = {output_len}\n'
        f"num_prompts = {prompts}\nmax_concurrency = 2\n"
    )


def _containers(runtime: str, label: str) -> list[str]:
    done = subprocess.run(
        [runtime, "ps", "-a", "--filter", f"label={label}", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout.split()


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_a_suite_runs_from_an_image_records_it_and_compare_names_the_override(
    pytester: pytest.Pytester, runtime: str, image: str
) -> None:
    pytester.makefile(".toml", matrix=_matrix("localhost/llmperf-sim:local", "in-image"))
    pytester.makepyfile(test_perf=PERF_TEST)
    args = ["--llmperf-repeats", "2", "--llmperf-container-runtime", os.path.basename(runtime)]
    pytester.runpytest(*args, "--llmperf-update-baselines").assert_outcomes(passed=1)
    pinned = pytester.runpytest(*args, "--llmperf-report-dir", "pinned")
    pinned.assert_outcomes(passed=1)
    # the upgrade candidate is a tag: the same engine from another image, for this run only
    candidate = pytester.runpytest(*args, "--llmperf-engine-image", f"sim={image}", "--llmperf-report-dir", "cand")
    candidate.assert_outcomes(passed=1)
    records = [json.loads((pytester.path / d / "summary.json").read_text())["tests"][0] for d in ("pinned", "cand")]
    assert f"image `{image}`" in (pytester.path / "cand" / "summary.md").read_text()
    assert [r["image"] for r in records] == ["localhost/llmperf-sim:local", image]
    assert all(r["engine_version"] for r in records)
    log = (pytester.path / ".llmperf" / "logs" / "in-image.log").read_text()
    assert "run --rm --name llmperf-in-image-" in log and f" {image} python3 -m pytest_llmperf.sim serve" in log
    compared = subprocess.run(
        [sys.executable, "-m", "pytest_llmperf.cli", "compare", "pinned", "cand"],
        cwd=pytester.path,
        capture_output=True,
        text=True,
    )
    assert compared.returncode == 0, compared.stdout + compared.stderr
    version = records[0]["engine_version"]
    assert (
        f"engine: in-image-w: localhost/llmperf-sim:local (version {version}) -> {image} (version {version})"
        in compared.stdout
    )
    assert _containers(runtime, "llmperf.config=in-image") == []


def test_a_container_that_exits_at_start_is_classified_and_a_missing_image_names_the_pull(
    pytester: pytest.Pytester, runtime: str, image: str
) -> None:
    extra = (
        'extra_args = ["--fail-at-startup", "ValueError: Selected backend FAKE_MLA is not valid"]\n'
        'unsupported = { match = "backend FAKE_MLA is not valid", reason = "no FAKE_MLA in this image" }\n'
    )
    pytester.makefile(".toml", matrix=_matrix(image, "broken", extra=extra))
    pytester.makepyfile(test_perf=PERF_TEST)
    result = pytester.runpytest("--llmperf-repeats", "1", "-rx")
    result.assert_outcomes(xfailed=1)
    result.stdout.fnmatch_lines(["*no FAKE_MLA in this image*the engine said: ValueError: Selected backend FAKE_MLA*"])
    pytester.makefile(".toml", matrix=_matrix("localhost/llmperf-no-such-image:1", "absent"))
    missing = pytester.runpytest("--llmperf-repeats", "1")
    missing.assert_outcomes(errors=1)
    kind = os.path.basename(runtime)
    absent = "localhost/llmperf-no-such-image:1"
    missing.stdout.fnmatch_lines([f"*image {absent} is not present*Pull it first: {kind} pull {absent}*"])
    assert _containers(runtime, "llmperf.config=broken") == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["ctrl-c", "sigterm", "sigkill"])
def test_a_signal_to_pytest_leaves_no_container(
    pytester: pytest.Pytester, runtime: str, image: str, sig: signal.Signals
) -> None:
    cid = f"sig-{sig.name.lower()}-{os.getpid()}"
    pytester.makefile(".toml", matrix=_matrix(image, cid, output_len=400, prompts=200))
    pytester.makepyfile(test_perf=PERF_TEST)
    log = pytester.path / "logs" / f"{cid}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--llmperf-log-dir", "logs", "-q"],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert wait_for(lambda: log.exists() and "serving" in log.read_text(), 90), "the container did not serve"
        assert _containers(runtime, f"llmperf.config={cid}") != []
        time.sleep(1.0)  # the benchmark is running now
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    # SIGKILL leaves pytest no chance: the watchdog removes the container by name
    gone = wait_for(lambda: _containers(runtime, f"llmperf.config={cid}") == [], 60)
    assert gone, f"left: {_containers(runtime, f'llmperf.config={cid}')}\n{out.decode()[-2000:]}"


def test_the_containers_of_a_dead_session_are_removed_by_the_next(
    pytester: pytest.Pytester, runtime: str, image: str
) -> None:
    name = f"llmperf-dead-{os.getpid()}"
    started = subprocess.run(
        [
            runtime,
            "run",
            "-d",
            "--name",
            name,
            "--label",
            "llmperf.session=deadbeef",
            "--label",
            f"llmperf.owner={os.uname().nodename}:999999999:1",  # a pid that cannot exist: that session is gone
            image,
            "python3",
            "-c",
            "import time; time.sleep(600)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 0, started.stderr
    assert name in _containers(runtime, "llmperf.session=deadbeef")
    assert remove_dead_sessions(runtime) in ([name], [])  # the labels' owner is gone; [] if a run was faster
    started = subprocess.run(
        [runtime, "run", "-d", "--name", name, "--label", "llmperf.session=deadbeef", "--label",
         f"llmperf.owner={os.uname().nodename}:999999999:1", image, "python3", "-c", "import time; time.sleep(600)"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    # the next session removes it before its first container starts
    pytester.makefile(".toml", matrix=_matrix(image, "next-session", prompts=2))
    pytester.makepyfile(test_perf=PERF_TEST)
    pytester.runpytest("--llmperf-repeats", "1", "--llmperf-update-baselines").assert_outcomes(passed=1)
    assert _containers(runtime, "llmperf.session=deadbeef") == []


def test_bad_engine_environment_options_are_usage_errors_naming_the_form(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_perf=PERF_TEST)
    no_value = pytester.runpytest("--llmperf-engine-image", "vllm")
    assert no_value.ret == pytest.ExitCode.USAGE_ERROR
    no_value.stderr.fnmatch_lines(
        ["*--llmperf-engine-image 'vllm': expected ENGINE=VALUE with ENGINE one of sim, vllm, sglang, trtllm*"]
    )
    runtime = pytester.runpytest("--llmperf-container-runtime", "lxc")
    assert runtime.ret == pytest.ExitCode.USAGE_ERROR
    runtime.stderr.fnmatch_lines(["*--llmperf-container-runtime 'lxc': expected one of podman, docker*"])
