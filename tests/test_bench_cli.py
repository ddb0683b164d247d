"""`llmperf bench serve`: the study's commands run unchanged; the block and the JSON are vLLM's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from suite_files import StartSim

from pytest_llmperf.engines import ServerProcess
from pytest_llmperf.errors import DatasetError
from pytest_llmperf.loadgen.datasets import random_requests
from pytest_llmperf.loadgen.tokenizers import LocalTokenizer, ServerTokenizer, load_tokenizer

VLLM_BLOCK_LABELS = [
    "Successful requests:",
    "Failed requests:",
    "Benchmark duration (s):",
    "Total input tokens:",
    "Total generated tokens:",
    "Request throughput (req/s):",
    "Output token throughput (tok/s):",
    "Peak output token throughput (tok/s):",
    "Peak concurrent requests:",
    "Total token throughput (tok/s):",
    "Mean TTFT (ms):",
    "Median TTFT (ms):",
    "P99 TTFT (ms):",
    "Mean TPOT (ms):",
    "Median TPOT (ms):",
    "P99 TPOT (ms):",
    "Mean ITL (ms):",
    "Median ITL (ms):",
    "P99 ITL (ms):",
]

VLLM_JSON_KEYS = [
    "date",
    "endpoint_type",
    "backend",
    "label",
    "model_id",
    "tokenizer_id",
    "num_prompts",
    "request_rate",
    "burstiness",
    "max_concurrency",
    "duration",
    "completed",
    "failed",
    "total_input_tokens",
    "total_output_tokens",
    "request_throughput",
    "request_goodput",
    "output_throughput",
    "total_token_throughput",
    "latencies",
    "queue_times",
    "max_output_tokens_per_s",
    "max_concurrent_requests",
    "rtfx",
]


def bench(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_llmperf.cli", "bench", "serve", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def labels(stdout: str) -> list[str]:
    block = stdout[stdout.index("=== Serving Benchmark Result") :].split("=" * 50 + "\n")[0]
    return [line[:40].strip() for line in block.splitlines() if line and line[0] not in "=-"]


def test_the_study_random_command_runs_unchanged(start_sim: StartSim, tmp_path: Path) -> None:
    server = start_sim(served_model_name="deepseek-ai/DeepSeek-V3.2", profile="deterministic", ttft_ms=2, itl_ms=1)
    study = (
        "--model deepseek-ai/DeepSeek-V3.2 --backend openai-chat --endpoint /v1/chat/completions "
        "--dataset-name random --random-input-len 4000 --random-output-len 200 --num-prompts 500 --seed 42"
    )
    port = server.base_url.rsplit(":", 1)[1]
    result = bench(*study.split(), "--port", port, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert labels(result.stdout) == VLLM_BLOCK_LABELS
    out = result.stdout
    assert "Successful requests:                     500       " in out
    assert "Total generated tokens:                  100000    " in out
    # prompts built through the server's /tokenize: 4000 tokens each, plus the chat template's 4
    assert "Total input tokens:                      2002000   " in out
    assert "=" * 50 + "\n" in out


def test_save_result_writes_vllm_keys_and_file_name(start_sim: StartSim, tmp_path: Path) -> None:
    server = start_sim(profile="deterministic", ttft_ms=5, itl_ms=2)
    common = [
        "--base-url",
        server.base_url,
        "--num-prompts",
        "20",
        "--random-input-len",
        "30",
        "--random-output-len",
        "5",
        "--max-concurrency",
        "4",
        "--save-result",
        "--result-dir",
        str(tmp_path),
    ]
    result = bench(
        *common,
        "--label",
        "nightly",
        "--metadata",
        "engine=sim",
        "gpu=none",
        "--percentile-metrics",
        "ttft,tpot,itl,e2el",
        "--metric-percentiles",
        "50,99.9",
        "--goodput",
        "ttft:1000",
        "tpot:1000",
    )
    assert result.returncode == 0, result.stderr
    files = list(tmp_path.glob("nightly-infqps-concurrency4-llmperf-sim-*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    keys = [k for k in data if k not in ("engine", "gpu") and not k.endswith("_ms") and k != "llmperf_client"]
    assert keys == VLLM_JSON_KEYS
    assert list(data)[7:9] == ["engine", "gpu"]  # metadata right after num_prompts
    assert data["request_rate"] == "inf" and data["completed"] == 20 and data["request_goodput"] > 0
    for metric in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "std", "p50", "p99.9"):
            assert f"{stat}_{metric}_ms" in data
    assert "P99.9 E2EL (ms):" in result.stdout and "Request goodput (req/s):" in result.stdout
    detailed = bench(*common, "--save-detailed", "--result-filename", "d.json")
    d = json.loads((tmp_path / "d.json").read_text())
    assert len(d["itls"]) == 20 and all(len(x) == 4 for x in d["itls"]) and d["errors"] == [""] * 20
    assert detailed.returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--percentile-metrics", "ttft,latency"], "unknown --percentile-metrics ['latency']"),
        (["--goodput", "ttft=5"], "invalid goodput SLO 'ttft=5'"),
        (["--metadata", "novalue"], "--metadata takes KEY=VALUE"),
        (["--dataset-name", "sharegpt"], "--dataset-name sharegpt needs --dataset-path"),
        (["--tokenizer", "some-org/some-hub-model"], "never downloads from a model hub"),
    ],
)
def test_bad_input_is_a_clear_message(start_sim: StartSim, args: list[str], message: str) -> None:
    server = start_sim(profile="deterministic", ttft_ms=5, itl_ms=2)
    result = bench("--base-url", server.base_url, "--num-prompts", "2", *args)
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.parametrize("url", ["localhost:8000", "ftp://127.0.0.1:8000", "http://"])
def test_a_base_url_that_is_not_a_server_url_is_a_clear_message(url: str) -> None:
    result = bench("--base-url", url, "--model", "m", "--num-prompts", "2")
    assert result.returncode != 0
    assert "is not a server URL; give it as http://HOST:PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_server_tokenizer_matches_the_builtin_and_finds_the_vocabulary(shared_sim: ServerProcess) -> None:
    tok = ServerTokenizer(shared_sim.base_url, "llmperf-sim")
    assert tok.vocab_size == 32000
    assert tok.encode("babe bebe") == [0, 1]
    assert tok.decode([0, 1]) == "babe bebe"
    reqs = random_requests(tok, num_requests=3, input_len=50, output_len=4, seed=1)
    assert [r.prompt_len for r in reqs] == [50, 50, 50]


def test_local_tokenizer_json(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(500)} | {"[UNK]": 500}
    hf = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(str(tmp_path))
    assert isinstance(tok, LocalTokenizer) and tok.vocab_size == 501
    reqs = random_requests(tok, num_requests=5, input_len=40, output_len=3, range_ratio=0.5, seed=7)
    assert all(len(tok.encode(r.prompt)) == r.prompt_len for r in reqs)
    assert {r.prompt_len for r in reqs} != {40}
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"no tokenizer\.json"):
        load_tokenizer(str(tmp_path / "empty"))
