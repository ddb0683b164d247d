"""How many SSE events per second the simulated engine serves on one core, with 1000 open streams.

The simulator runs pinned to one core in its deterministic profile with an inter-token latency
chosen so that 1000 concurrent streams ask for the target rate (default 30,000 events/s: ITL 33.3 ms);
the load generator runs on the other core. Reported: the events/s the server delivered, its CPU
per event (from /proc), how late tokens left against their schedule, and the implied capacity of
one core (1 s / CPU per event).

    python benchmarks/sim_throughput.py [--streams 1000] [--target 30000] [--tokens 100] [--repeats 3]
                                        [--realtime-priority N]

``--realtime-priority 1`` serves under SCHED_FIFO (needs root or CAP_SYS_NICE): on a shared host a
higher-priority agent can take the simulator's core for ~10 ms, which makes tokens late that the
simulator itself had ready in time (docs/performance.md).
"""

from __future__ import annotations

import argparse
import os
import sys

import httpx
from _common import print_summary, start_pinned_sim

from pytest_llmperf.config import EngineConfig, SimOptions
from pytest_llmperf.engines.scrape import scrape_metrics
from pytest_llmperf.loadgen import BenchSettings, random_requests, run_benchmark_sync
from pytest_llmperf.tokenizer import SimTokenizer

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--target", type=float, default=30000.0, help="events/s asked of the server")
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--realtime-priority", type=int, default=0, metavar="N", help="serve under SCHED_FIFO priority N")
    args = ap.parse_args()
    itl_ms = 1000.0 * args.streams / args.target
    cfg = EngineConfig(
        id="throughput",
        engine="sim",
        model="llmperf-sim",
        max_model_len=4096,
        extra_args=("--realtime-priority", str(args.realtime_priority)) if args.realtime_priority else (),
        sim=SimOptions(profile="deterministic", ttft_ms=itl_ms, itl_ms=itl_ms),
    )
    server, cpus = start_pinned_sim(cfg)
    assert server.proc is not None
    # taskset execs the simulator in place, so the server's pid is the launched process's pid
    pid = server.proc.pid
    reqs = random_requests(SimTokenizer(), num_requests=args.streams, input_len=16, output_len=args.tokens, seed=0)
    settings = BenchSettings(base_url=server.base_url, model="llmperf-sim", ignore_eos=True, prewarm_connections=True)
    rows = []
    try:
        for i in range(args.repeats):
            httpx.post(server.base_url + "/llmperf/reset_timing")
            before, cpu0 = scrape_metrics(server.base_url), cpu_seconds(pid)
            result = run_benchmark_sync(settings, reqs)
            after, cpu1 = scrape_metrics(server.base_url), cpu_seconds(pid)
            events = after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"]
            window = after["llmperf_sim:delivery_window_seconds"]
            row = {
                "events": events,
                "server_events_per_s": events / window,
                "server_cpu_s": cpu1 - cpu0,
                "server_us_per_event": 1e6 * (cpu1 - cpu0) / events,
                "capacity_events_per_s_one_core": events / max(1e-9, cpu1 - cpu0),
                "max_lateness_ms": 1000 * after["llmperf_sim:max_lateness_seconds"],
                "late_tokens_over_5ms": after["llmperf_sim:late_tokens"],
                "failed_requests": result.metrics.failed,
            }
            rows.append(row)
            print(f"run {i + 1}: " + ", ".join(f"{k}={v:.1f}" for k, v in row.items()), flush=True)
    finally:
        server.stop()
    print(
        f"\n{args.streams} streams x {args.tokens} tokens, ITL {itl_ms:.1f} ms (asks {args.target:.0f} events/s), "
        f"{args.repeats} runs; server pinned to cpu {cpus[0]}"
        + (f", SCHED_FIFO priority {args.realtime_priority}" if args.realtime_priority else "")
    )
    print_summary(rows, width=34)
    return 0


if __name__ == "__main__":
    sys.exit(main())
