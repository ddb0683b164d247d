"""Engine lifecycle through the plugin: strict unsupported entries, classification, hardware, xdist, endpoints."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest
from suite_files import PERF_TEST, StartSim

from pytest_llmperf.engines.classify import classify
from pytest_llmperf.errors import ServerCrashError, ServerOutOfMemoryError, ServerStartupError, UnsupportedConfigError
from pytest_llmperf.hardware import cpu_isa, detect_gpus, gpu_slice, hardware_key, missing_hardware
from pytest_llmperf.sim.calibrated import calibration_key, simulation_label

WORKLOAD = """
[[workloads]]
id = "w"
random_input_len = 8
random_output_len = 4
num_prompts = 4
"""


def engine(ident: str, extra: str = "", args: list[str] | None = None, timeout: int = 30) -> str:
    return f"""
[[engines]]
id = "{ident}"
engine = "sim"
model = "llmperf-sim"
startup_timeout_s = {timeout}
extra_args = {json.dumps(args or [])}
sim = {{ profile = "deterministic", ttft_ms = 5, itl_ms = 5 }}
{extra}
"""


UNSUPPORTED = (
    'unsupported = { match = "backend FOO is not valid", reason = "FOO has no sparse attention", '
    'issue = "https://example.invalid/1" }'
)


def run_suite(pytester: pytest.Pytester, matrix: str, *args: str) -> pytest.RunResult:
    pytester.makefile(".toml", matrix=matrix + WORKLOAD)
    pytester.makepyfile(test_perf=PERF_TEST)
    return pytester.runpytest("--llmperf-repeats", "1", "--llmperf-update-baselines", "-rxs", *args)


def test_declared_failure_that_matches_is_an_expected_failure(pytester: pytest.Pytester) -> None:
    matrix = engine("foo", UNSUPPORTED, ["--fail-at-startup", "ValueError: Selected backend FOO is not valid here"])
    result = run_suite(pytester, matrix)
    result.assert_outcomes(xfailed=1)
    out = result.stdout.str()
    assert "[foo] unsupported: FOO has no sparse attention (https://example.invalid/1)" in out
    assert "the engine said: ValueError: Selected backend FOO is not valid here" in out
    # an expected failure is not a skip: the skip summary does not list it with its traceback
    assert "perf test(s) skipped" not in out and "def llmperf_server" not in out


def test_declared_entry_with_a_different_failure_is_an_error_naming_the_class(pytester: pytest.Pytester) -> None:
    matrix = engine("foo", UNSUPPORTED, ["--fail-at-startup", "torch.OutOfMemoryError: CUDA out of memory"])
    result = run_suite(pytester, matrix)
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "[foo] out of memory: server exited with code 1 before it became ready" in out
    assert "--- the lines that identify it ---\ntorch.OutOfMemoryError: CUDA out of memory" in out
    assert "does not match its pattern 'backend FOO is not valid'" in out


def test_declared_entry_for_a_server_that_starts_is_a_strict_xpass_failure(pytester: pytest.Pytester) -> None:
    result = run_suite(pytester, engine("foo", UNSUPPORTED))
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "[XPASS(strict)] [foo] is declared unsupported (FOO has no sparse attention) but its server started" in out
    assert "remove the entry at matrix.toml, engines (id='foo'), field 'unsupported'" in out


def test_a_server_that_never_becomes_ready_fails_at_its_timeout_with_the_log_tail(pytester: pytest.Pytester) -> None:
    result = run_suite(pytester, engine("slow", args=["--startup-delay", "60"], timeout=2))
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "[slow] server did not become ready within 2 s" in out
    assert "--- last lines of" in out and "start-up delay of 60.0 s" in out


@pytest.mark.parametrize(
    ("log", "kind", "line"),
    [
        (
            "INFO x\nValueError: Selected backend AttentionBackendEnum.TRITON_MLA is not valid for this configuration. "
            "Reason: ['sparse not supported']\n",
            UnsupportedConfigError,
            "ValueError: Selected backend",
        ),
        (
            "AssertionError: DCP requires attention impls to return the softmax lse for decode, but X does not",
            UnsupportedConfigError,
            "AssertionError: DCP requires",
        ),
        (
            "Traceback (most recent call last):\nNameError: name 'deep_gemm' is not defined",
            UnsupportedConfigError,
            "NameError",
        ),
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", ServerOutOfMemoryError, "torch."),
        ("ValueError: No available memory for the cache blocks.", ServerOutOfMemoryError, "ValueError: No available"),
        ("Scheduler hit an exception: Traceback ...\nRank 0 scheduler is dead.", ServerCrashError, "Scheduler hit"),
        ("Traceback (most recent call last):\n  File x\nKeyError: 'a'", ServerCrashError, "Traceback"),
        ("just exited", ServerStartupError, None),
    ],
)
def test_classification_of_engine_logs(log: str, kind: type, line: str | None) -> None:
    found, matched = classify(log)
    assert found is kind
    if line is None:
        assert matched == ()
    else:
        assert matched and matched[0].startswith(line)


def fake_nvidia_smi(tmp_path: Path, output: str) -> Path:
    """A stand-in for nvidia-smi at the process boundary: prints a recorded output."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    exe = bindir / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}EOF\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return bindir


H200x8 = "".join(f"{i}, NVIDIA H200, 143771, 1, 570.86.15\n" for i in range(8))
A100x2 = "0, NVIDIA A100-SXM4-80GB, 81920, 10, 550.54.15\n1, NVIDIA A100-SXM4-80GB, 81920, 10, 550.54.15\n"


def test_gpu_detection_from_recorded_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{fake_nvidia_smi(tmp_path, H200x8)}:{os.environ['PATH']}")
    gpus = detect_gpus()
    assert gpus is not None and len(gpus) == 8 and gpus[0].name == "NVIDIA H200" and gpus[0].driver == "570.86.15"
    assert missing_hardware("h200", gpus) is None
    key = hardware_key(gpus)
    assert key["gpus"] == "8x NVIDIA H200" and key["driver"] == "570.86.15" and key["kind"] == "host"
    # the CPU class is part of the key too: this host's model name and vector extension
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = cpuinfo.split("model name", 1)[1].split(":", 1)[1].split("\n", 1)[0].strip()
    assert key["cpu"] == f"{os.cpu_count()}x {model}"
    assert key["cpu_isa"] in ("amx", "avx512-bf16", "avx512", "avx2", "baseline") and key["cpu_isa"] == cpu_isa()
    assert gpu_slice("gw1", 4, 2, gpus) == [2, 3]
    assert gpu_slice(None, 1, 8, gpus) is None
    with pytest.raises(ValueError, match="run with at most -n 1"):
        gpu_slice("gw1", 2, 8, gpus)


def test_cpu_isa_names_the_newest_vector_extension() -> None:
    # recorded /proc/cpuinfo flag lines: a Sapphire Rapids VM, a Skylake server, an AVX2-only desktop
    spr = "fpu sse2 avx avx2 avx512f avx512dq avx512_bf16 avx512_vnni amx_bf16 amx_tile amx_int8"
    assert cpu_isa(spr) == "amx"
    assert cpu_isa("fpu sse2 avx avx2 avx512f avx512dq avx512cd avx512bw") == "avx512"
    assert cpu_isa("fpu sse2 avx avx2 fma") == "avx2"
    assert cpu_isa("fpu sse2") == "baseline"


def test_missing_hardware_names_what_is_needed_and_what_was_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", f"{fake_nvidia_smi(tmp_path, A100x2)}:{os.environ['PATH']}")
    reason = missing_hardware("h200", detect_gpus())
    assert reason is not None
    assert reason.startswith("needs one node with 8 NVIDIA H200 GPUs; found 2x NVIDIA A100-SXM4-80GB")
    assert missing_hardware("h200", None) is not None and "nvidia-smi not found" in str(missing_hardware("h200", None))


def test_h200_suite_skips_without_the_hardware_and_runs_with_it_detected(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    matrix = engine("gpu-config") + "\n"
    pytester.makefile(".toml", matrix=matrix.replace('engine = "sim"', 'engine = "sim"\nmarkers = ["h200"]') + WORKLOAD)
    pytester.makepyfile(test_perf=PERF_TEST)
    env_path = os.environ["PATH"]
    bare = pytester.runpytest("-m", "h200", "-rs")
    assert bare.ret == 0
    bare.assert_outcomes(skipped=1)
    assert "needs one node with 8 NVIDIA H200 GPUs; found" in bare.stdout.str()
    os.environ["PATH"] = f"{fake_nvidia_smi(tmp_path, H200x8)}:{env_path}"
    try:
        with_gpus = pytester.runpytest("-m", "h200", "--llmperf-update-baselines", "--llmperf-repeats", "1")
    finally:
        os.environ["PATH"] = env_path
    with_gpus.assert_outcomes(passed=1)


def test_xdist_runs_each_config_server_once(pytester: pytest.Pytester) -> None:
    matrix = engine("a") + engine("b") + engine("c")
    pytester.makefile(".toml", matrix=matrix + WORKLOAD + WORKLOAD.replace('id = "w"', 'id = "w2"'))
    pytester.makepyfile(test_perf=PERF_TEST)
    result = pytester.runpytest(
        "-n", "2", "--llmperf-repeats", "1", "--llmperf-update-baselines", "--llmperf-log-dir", "logs"
    )
    result.assert_outcomes(passed=6)
    launches = {
        cfg: sum(p.read_text().count("### llmperf: launching") for p in (pytester.path / "logs").rglob(f"{cfg}.log"))
        for cfg in ("a", "b", "c")
    }
    assert launches == {"a": 1, "b": 1, "c": 1}


def test_xdist_worker_publishes_the_config_map_before_reporting_its_collection(pytester: pytest.Pytester) -> None:
    # The controller schedules by the node-id -> config map as soon as every worker has reported its
    # collection, so the map must be written first: the plugin's hook has to run before xdist's.
    pytester.makefile(".toml", matrix=engine("a") + WORKLOAD)
    pytester.makepyfile(test_perf=PERF_TEST)
    pytester.makeconftest(
        """
import json, os

def pytest_sessionfinish(session):
    if hasattr(session.config, "workerinput"):
        impls = session.config.pluginmanager.hook.pytest_collection_finish.get_hookimpls()
        called = [getattr(i.plugin, "__name__", type(i.plugin).__name__) for i in reversed(impls)]
        with open(os.path.join(str(session.config.rootpath), "order.json"), "w") as f:
            json.dump(called, f)
"""
    )
    result = pytester.runpytest("-n", "1", "--llmperf-repeats", "1", "--llmperf-update-baselines")
    result.assert_outcomes(passed=1)
    called = json.loads((pytester.path / "order.json").read_text())
    assert "WorkerInteractor" in called, called  # xdist's worker side, which reports the collection
    assert called.index("pytest_llmperf.plugin") < called.index("WorkerInteractor"), called


def test_external_endpoint_mode_through_a_mapping_file(pytester: pytest.Pytester, start_sim: StartSim) -> None:
    server = start_sim(profile="deterministic", ttft_ms=5, itl_ms=5)  # started outside the pytest run
    (pytester.path / "endpoints.toml").write_text(f'ext = "{server.base_url}"\n')
    matrix = engine("ext").replace('engine = "sim"', 'engine = "vllm"')  # a real engine's config: never launched
    result = run_suite(pytester, matrix, "--llmperf-endpoints", "endpoints.toml")
    result.assert_outcomes(passed=1)
    assert "vllm serve" not in result.stdout.str()
    baseline = json.loads(next((pytester.path / "baselines").rglob("*.json")).read_text())
    assert baseline["engine"]["version"].startswith("llmperf-sim-")
    bad = pytester.runpytest("--llmperf-endpoints", "missing.toml")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    assert "--llmperf-endpoints missing.toml: cannot read it" in bad.stderr.str()


def test_simulate_runs_real_engine_configs_on_the_simulator(pytester: pytest.Pytester) -> None:
    matrix = """
[[engines]]
id = "v"
engine = "vllm"
version = "0.13.0"
model = "org/model"
tensor_parallel_size = 8
attention_backend = "FLASHMLA"

[[engines]]
id = "dcp"
engine = "vllm"
model = "org/model"
decode_context_parallel_size = 8
unsupported = { match = "softmax lse", reason = "no LSE", message = "AssertionError: DCP requires the softmax lse" }
"""
    options = ("--llmperf-simulate", "--llmperf-log-dir", "logs", "--llmperf-report-dir", "rep")
    result = run_suite(pytester, matrix, *options)
    result.assert_outcomes(passed=1, xfailed=1)
    log = (pytester.path / "logs" / "v.log").read_text()
    assert "-m pytest_llmperf.sim serve org/model -tp 8" in log and "--profile h200-vllm" in log
    assert "VLLM_ATTENTION_BACKEND=FLASHMLA" in log
    # the calibrated profile under the command line's knobs, and what of them it has no calibration for
    assert "llmperf sim: simulated timing, deepseek-v32-h200.toml, calibrated on baselines/perf_tests/study" in log
    assert "llmperf sim: attention=FLASHMLA: not calibrated (mechanism only)" in log
    files = list((pytester.path / "baselines").rglob("*.json"))
    assert [f.relative_to(pytester.path / "baselines").parts[0] for f in files] == ["simulated"]
    key = {"kind": "simulated", "profile": "h200-vllm", "calibration": calibration_key("vllm")}
    assert json.loads(files[0].read_text())["hardware"] == key
    assert re.fullmatch(r"deepseek-v32-h200\.toml [0-9a-f]{12}", key["calibration"])
    # every report says it is a simulation, and of what calibration
    label = simulation_label("vllm")
    assert label.startswith("llmperf-sim, H200 profiles deepseek-v32-h200.toml, calibrated on baselines/perf_tests/")
    out = result.stdout.str()
    assert "llmperf results (simulated)" in out and f"simulated, not measured on the engines: {label}" in out
    summary = json.loads((pytester.path / "rep" / "summary.json").read_text())
    assert summary["simulated"] == [label] and summary["tests"][0]["simulated"] == label
    assert f"Simulated, not measured on the engines: {label}" in (pytester.path / "rep" / "summary.md").read_text()


def test_teardown_waits_for_gpu_memory_to_come_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_llmperf.hardware import gpu_memory_used_mib, wait_for_gpu_memory

    # a recorded nvidia-smi whose reported memory drops by 40 GiB per call: a dying server freeing its memory
    counter = tmp_path / "calls"
    counter.write_text("0")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "nvidia-smi"
    exe.write_text(
        "#!/bin/sh\n"
        f"n=$(cat {counter}); echo $((n + 1)) > {counter}\n"
        "used=$((120000 - n * 40000)); [ $used -lt 1000 ] && used=1000\n"
        'echo "0, NVIDIA H200, 143771, $used, 570.86.15"\n'
    )
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    assert gpu_memory_used_mib() == 120000
    assert wait_for_gpu_memory(1000, poll_s=0.01, timeout_s=5)
    assert int(counter.read_text()) >= 4  # it polled until the memory was back
    counter.write_text("0")
    assert not wait_for_gpu_memory(1000, poll_s=0.01, timeout_s=0.0)  # bounded: gives up and says so


def test_only_this_launchs_log_is_classified_and_matched(pytester: pytest.Pytester) -> None:
    # an old session's error must not decide today's verdict: each session starts the config's log afresh
    first = engine("foo", UNSUPPORTED, ["--fail-at-startup", "ValueError: Selected backend FOO is not valid here"])
    run_suite(pytester, first, "--llmperf-log-dir", "logs").assert_outcomes(xfailed=1)
    second = engine("foo", UNSUPPORTED, ["--fail-at-startup", "torch.OutOfMemoryError: CUDA out of memory"])
    result = run_suite(pytester, second, "--llmperf-log-dir", "logs")
    result.assert_outcomes(errors=1)
    assert "[foo] out of memory: server exited" in result.stdout.str()
    log = (pytester.path / "logs" / "foo.log").read_text()
    assert log.count("### llmperf: launching") == 1 and "Selected backend FOO" not in log


def test_tiny_model_command_writes_a_llama_vllm_can_load_without_a_hub(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer

    from pytest_llmperf.cli.main import main

    assert main(["tiny-model", str(tmp_path / "m"), "--heads", "8", "--layers", "4"]) == 0
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["hidden_size"], config["num_attention_heads"], config["head_dim"]) == (512, 8, 64)
    assert config["num_hidden_layers"] == 4
    tok = Tokenizer.from_file(str(tmp_path / "m" / "tokenizer.json"))
    assert tok.get_vocab_size() == config["vocab_size"] and tok.token_to_id("</s>") == config["eos_token_id"]
    assert "chat_template" in json.loads((tmp_path / "m" / "tokenizer_config.json").read_text())
    with pytest.raises(SystemExit):  # argparse: a missing DIR is a usage error
        main(["tiny-model"])
    with pytest.raises(SystemExit):  # so is a model with no heads, named by its flag
        main(["tiny-model", str(tmp_path / "z"), "--heads", "0"])
    assert not (tmp_path / "z").exists()
