"""Fidelity of the load generator against a known truth, and its CPU cost per streamed event.

The simulated engine runs in its deterministic profile on one core (TTFT 50 ms, ITL 50 ms for
every request, whatever the load); the client runs on the other core and sends 1000 requests of
100 output tokens at once (request rate inf). The truth: TTFT 50 ms, TPOT 50 ms, and an output
throughput equal to the tokens the server delivered over its own delivery window (first request
received to last token written).

    python benchmarks/client_fidelity.py [--requests 1000] [--tokens 100] [--repeats 3] [--client-workers 1]

When ``vllm`` is importable, ``vllm bench serve`` runs against the same server after each of ours.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
from _common import print_summary, start_pinned_sim

from pytest_llmperf.config import EngineConfig, SimOptions
from pytest_llmperf.engines import ServerProcess
from pytest_llmperf.engines.scrape import scrape_metrics
from pytest_llmperf.loadgen import BenchSettings, random_requests, run_benchmark_sync
from pytest_llmperf.tokenizer import SimTokenizer


def one_run(server: ServerProcess, args: argparse.Namespace) -> dict[str, float]:
    reqs = random_requests(SimTokenizer(), num_requests=args.requests, input_len=32, output_len=args.tokens, seed=0)
    httpx.post(server.base_url + "/llmperf/reset_timing")
    before = scrape_metrics(server.base_url)
    settings = BenchSettings(
        base_url=server.base_url,
        model="llmperf-sim",
        ignore_eos=True,
        client_workers=args.client_workers,
        prewarm_connections=args.prewarm,
    )
    result = run_benchmark_sync(settings, reqs)
    after = scrape_metrics(server.base_url)
    m = result.metrics
    delivered = after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"]
    truth_tput = delivered / after["llmperf_sim:delivery_window_seconds"]
    events = sum(len(r.itl) + 1 for r in result.records if r.success)
    return {
        "failed": m.failed,
        "output_throughput": m.output_throughput,
        "truth_output_throughput": truth_tput,
        "throughput_error_pct": 100 * (m.output_throughput / truth_tput - 1),
        "mean_ttft_ms": m.stats["ttft"]["mean"],
        "p99_ttft_ms": m.stats["ttft"]["p99"],
        "mean_tpot_ms": m.stats["tpot"]["mean"],
        "tpot_error_pct": 100 * (m.stats["tpot"]["mean"] / 50.0 - 1),
        "client_cpu_s": result.client_cpu_s,
        "client_us_per_event": 1e6 * result.client_cpu_s / max(1, events),
        "server_events_per_s": delivered / after["llmperf_sim:delivery_window_seconds"],
        "server_max_lateness_ms": 1000 * after["llmperf_sim:max_lateness_seconds"],
        "server_late_tokens": after["llmperf_sim:late_tokens"],
        "warnings": len(result.client_warnings),
    }


def vllm_run(server: ServerProcess, args: argparse.Namespace) -> dict[str, float] | None:
    if shutil.which("vllm") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            "vllm",
            "bench",
            "serve",
            "--backend",
            "openai-chat",
            "--endpoint",
            "/v1/chat/completions",
            "--base-url",
            server.base_url,
            "--model",
            "llmperf-sim",
            "--dataset-name",
            "random",
            "--random-input-len",
            "32",
            "--random-output-len",
            str(args.tokens),
            "--num-prompts",
            str(args.requests),
            "--ignore-eos",
            "--save-result",
            "--result-dir",
            tmp,
            "--result-filename",
            "r.json",
        ]
        subprocess.run(cmd, check=True, capture_output=True)
        data = json.loads((Path(tmp) / "r.json").read_text())
    return {
        "output_throughput": data["output_throughput"],
        "mean_ttft_ms": data["mean_ttft_ms"],
        "mean_tpot_ms": data["mean_tpot_ms"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--client-workers", type=int, default=1)
    ap.add_argument(
        "--no-prewarm",
        dest="prewarm",
        action="store_false",
        help="start with a cold connection pool, as vllm bench serve does",
    )
    args = ap.parse_args()
    cfg = EngineConfig(
        id="fidelity",
        engine="sim",
        model="llmperf-sim",
        max_model_len=4096,
        sim=SimOptions(profile="deterministic", ttft_ms=50, itl_ms=50),
    )
    server, _ = start_pinned_sim(cfg)
    rows = []
    try:
        for i in range(args.repeats):
            row = one_run(server, args)
            ref = vllm_run(server, args)
            if ref:
                row.update({f"vllm_{k}": v for k, v in ref.items()})
            rows.append(row)
            print(f"run {i + 1}: " + ", ".join(f"{k}={v:.2f}" for k, v in row.items()), flush=True)
    finally:
        server.stop()
    print(
        f"\n{args.requests} streams x {args.tokens} tokens, TTFT=ITL=50 ms, {args.repeats} runs "
        f"(client workers: {args.client_workers}; python {sys.version.split()[0]})"
    )
    print_summary(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
