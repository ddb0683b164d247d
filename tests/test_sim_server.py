"""The simulated engine over real HTTP: OpenAI API as vLLM serves it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import httpx
import pytest
from suite_files import StartSim

from pytest_llmperf.engines import ServerProcess, free_port
from pytest_llmperf.engines.scrape import scrape_metrics


def sse_messages(text: str) -> list[str]:
    return [m.strip() for m in text.split("\n\n") if m.strip()]


def test_control_plane(shared_sim: ServerProcess) -> None:
    base = shared_sim.base_url
    assert httpx.get(base + "/health").status_code == 200
    assert httpx.get(base + "/version").json()["version"].startswith("llmperf-sim-")
    models = httpx.get(base + "/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "llmperf-sim"
    assert models["data"][0]["max_model_len"] == 4096


def test_streaming_chat_has_role_chunk_content_chunks_usage_and_done(shared_sim: ServerProcess) -> None:
    body = {
        "model": "llmperf-sim",
        "messages": [{"role": "user", "content": "one two three"}],
        "max_completion_tokens": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    r = httpx.post(shared_sim.base_url + "/v1/chat/completions", json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    msgs = sse_messages(r.text)
    assert all(m.startswith("data: ") for m in msgs)
    assert msgs[-1] == "data: [DONE]"
    chunks = [json.loads(m[6:]) for m in msgs[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c for c in chunks[1:] if c["choices"]]
    assert len(content) == 5
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert content[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == []
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] == 5 and usage["prompt_tokens"] == 3 + 3 + 1
    assert usage["total_tokens"] == usage["prompt_tokens"] + 5


def test_streaming_without_include_usage_sends_no_usage_chunk(shared_sim: ServerProcess) -> None:
    body = {"model": "llmperf-sim", "prompt": "a b", "max_tokens": 3, "stream": True}
    msgs = sse_messages(httpx.post(shared_sim.base_url + "/v1/completions", json=body).text)
    chunks = [json.loads(m[6:]) for m in msgs[:-1]]
    assert len(chunks) == 3 and all(c["choices"] for c in chunks)
    assert chunks[0]["object"] == "text_completion" and chunks[0]["choices"][0]["text"].startswith(" ")


def test_non_streaming_completion_and_chat(shared_sim: ServerProcess) -> None:
    r = httpx.post(
        shared_sim.base_url + "/v1/completions", json={"model": "llmperf-sim", "prompt": "a b c", "max_tokens": 4}
    ).json()
    assert r["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert len(r["choices"][0]["text"].split()) == 4
    c = httpx.post(
        shared_sim.base_url + "/v1/chat/completions",
        json={"model": "llmperf-sim", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    ).json()
    assert c["object"] == "chat.completion" and c["choices"][0]["message"]["role"] == "assistant"


def test_tokenize_detokenize_round_trip(shared_sim: ServerProcess) -> None:
    tok = httpx.post(shared_sim.base_url + "/tokenize", json={"prompt": "babe bebe bibe"}).json()
    assert tok["count"] == 3 and tok["tokens"] == [0, 1, 2]
    assert (
        httpx.post(shared_sim.base_url + "/detokenize", json={"tokens": [0, 1, 2]}).json()["prompt"] == "babe bebe bibe"
    )


def test_metrics_use_vllm_names_and_count_tokens(shared_sim: ServerProcess) -> None:
    def scrape() -> dict[str, float]:
        return scrape_metrics(shared_sim.base_url)

    before = scrape()
    httpx.post(
        shared_sim.base_url + "/v1/completions", json={"model": "llmperf-sim", "prompt": "a b c d", "max_tokens": 6}
    )
    after = scrape()
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        assert name in after
    assert after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"] == 6
    assert after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"] == 4


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        ({"model": "other", "prompt": "a", "max_tokens": 1}, 404, "does not exist"),
        ({"model": "llmperf-sim", "prompt": "a", "max_tokens": 5000}, 400, "maximum context length is 4096"),
        ({"model": "llmperf-sim", "prompt": "a", "max_tokens": 0}, 400, "positive integer"),
        ({"model": "llmperf-sim", "prompt": 5}, 400, "'prompt' must be"),
    ],
)
def test_bad_requests_get_openai_errors(
    shared_sim: ServerProcess, body: dict[str, object], status: int, text: str
) -> None:
    r = httpx.post(shared_sim.base_url + "/v1/completions", json=body)
    assert r.status_code == status
    assert text in r.json()["error"]["message"]


def test_engine_command_line_flags_are_accepted_and_unknown_ones_ignored(start_sim: StartSim) -> None:
    server = start_sim("--trust-remote-code", "--kv-cache-dtype", "fp8")
    assert httpx.get(server.base_url + "/health").status_code == 200
    assert "ignoring flags it does not model: --trust-remote-code --kv-cache-dtype fp8" in server.log_path.read_text()


def test_realtime_priority_without_the_privilege_fails_at_start_naming_the_fix() -> None:
    argv = [sys.executable, "-m", "pytest_llmperf.sim", "serve", "--port", str(free_port()), "--realtime-priority", "1"]
    if os.geteuid() == 0:  # drop root (and with it CAP_SYS_NICE) for this one process
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root, and setpriv (util-linux) is not here to drop the privilege")
        argv = [setpriv, "--reuid", "65534", "--regid", "65534", "--clear-groups", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "--realtime-priority 1: cannot switch to SCHED_FIFO (Operation not permitted)" in proc.stderr
    assert "needs Linux and root or CAP_SYS_NICE. Drop the option to serve at normal priority." in proc.stderr


def success_counts(base_url: str) -> dict[str, float]:
    text = httpx.get(base_url + "/metrics").text
    found = re.findall(r'vllm:request_success_total\{[^}]*finished_reason="(\w+)"\} ([\d.]+)', text)
    return {reason: float(n) for reason, n in found}


def test_eos_ends_outputs_early_unless_ignore_eos(start_sim: StartSim) -> None:
    server = start_sim("--eos-mean-tokens", "5", profile="deterministic", ttft_ms=1, itl_ms=1)

    def run(ignore_eos: bool) -> list[tuple[int, str]]:
        out = []
        for _ in range(8):
            body = {"model": "llmperf-sim", "prompt": "a b", "max_tokens": 50, "ignore_eos": ignore_eos}
            r = httpx.post(server.base_url + "/v1/completions", json=body).json()
            out.append((r["usage"]["completion_tokens"], r["choices"][0]["finish_reason"]))
        return out

    natural = run(False)
    # every output either stopped early at its EOS, or ran to max_tokens as "length": nothing else
    assert all((reason == "stop" and n < 50) or (reason == "length" and n == 50) for n, reason in natural)
    assert sum(reason == "stop" for _, reason in natural) >= 6
    assert run(True) == [(50, "length")] * 8
    # /metrics counts successes by finished_reason, as vLLM does (readiness probes count too: take deltas)
    before = success_counts(server.base_url)
    natural = run(False)
    run(True)
    after = success_counts(server.base_url)
    stops = sum(reason == "stop" for _, reason in natural)
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    assert delta == {"stop": stops, "length": 16 - stops}
