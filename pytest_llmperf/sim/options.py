"""Command-line options of the simulated engine (``llmperf sim serve``).

Engines' own flags are accepted too (``vllm serve MODEL --tensor-parallel-size 8 ...``): the
simulator uses those it models (model, port, host, served model name, max-num-seqs,
max-num-batched-tokens, max-model-len) and reports the others as ignored, so that any rendered
launch command can run on it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from pytest_llmperf.sim.engine import PROFILES

__all__ = ["SimServerOptions", "parse_args"]


@dataclass(frozen=True)
class SimServerOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    model: str = "llmperf-sim"
    served_model_name: str = "llmperf-sim"
    profile: str = "cpu-small"
    ttft_ms: float = 50.0
    itl_ms: float = 50.0
    slowdown: float = 1.0
    seed: int = 0
    jitter: float = 0.0
    eos_mean_tokens: float = 0.0
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    kv_cache_tokens: int | None = None
    max_model_len: int = 32768
    startup_delay_s: float = 0.0
    fail_at_startup: str | None = None
    fail_exit_code: int = 1
    spawn_children: int = 0
    crash_after: int | None = None
    stall_after: int | None = None
    error_rate: float = 0.0
    malformed_rate: float = 0.0
    reset_rate: float = 0.0
    realtime_priority: int = 0
    profile_file: str | None = None  # calibrated profiles for the h200-* engine families (default: packaged)
    uncalibrated: bool = False
    engine_args: tuple[str, ...] = ()  # the command line as given: the knobs are read from it

    @property
    def calibrated(self) -> bool:
        """An ``h200-<engine>`` profile under the calibration, its knobs read from ``engine_args``."""
        return self.profile.startswith("h200-") and not self.uncalibrated


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmperf sim serve",
        allow_abbrev=False,  # an engine flag must never be read as an abbreviation of one of ours
        description="The simulated LLM serving engine of pytest-llmperf: the OpenAI API as vLLM serves it, "
        "with a continuous-batching timing model. Unknown flags (an engine's own) are ignored.",
    )
    p.add_argument("--model", "--model-path", dest="model", default=None, help="model name (or `serve MODEL`)")
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--profile",
        choices=[*sorted(PROFILES), "deterministic"],
        default="cpu-small",
        help="timing model; 'deterministic' gives every request the same TTFT and ITL whatever the load",
    )
    p.add_argument(
        "--profile-file",
        default=None,
        metavar="TOML",
        help="calibrated profiles (llmperf sim calibrate) for the h200-* profiles; default: the packaged "
        "DeepSeek-V3.2 8xH200 calibration. The engine's own flags and environment select the knob settings",
    )
    p.add_argument("--uncalibrated", action="store_true", help="h200-* profiles: the analytic roofline only")
    p.add_argument("--ttft-ms", type=float, default=50.0, help="deterministic profile: time to first token")
    p.add_argument("--itl-ms", type=float, default=50.0, help="deterministic profile: inter-token latency")
    p.add_argument("--slowdown", type=float, default=1.0, help="multiply every step time (prove the gate)")
    p.add_argument("--seed", type=int, default=0, help="seeds faults and jitter: every run is reproducible")
    p.add_argument("--jitter", type=float, default=0.0, help="relative std-dev of step times (0: none)")
    p.add_argument(
        "--eos-mean-tokens",
        type=float,
        default=0.0,
        metavar="N",
        help="without ignore_eos, end each output at a natural length drawn with mean N (0: never)",
    )
    p.add_argument(
        "--max-num-seqs",
        "--max-running-requests",
        "--max_batch_size",
        dest="max_num_seqs",
        type=int,
        default=None,
        help="cap on running sequences per step",
    )
    p.add_argument(
        "--max-num-batched-tokens",
        "--chunked-prefill-size",
        "--max_num_tokens",
        dest="max_num_batched_tokens",
        type=int,
        default=None,
        help="token budget per step",
    )
    p.add_argument("--kv-cache-tokens", type=int, default=None, help="KV-cache capacity in tokens")
    p.add_argument(
        "--max-model-len", "--context-length", "--max_seq_len", dest="max_model_len", type=int, default=32768
    )
    p.add_argument(
        "--realtime-priority",
        type=int,
        default=0,
        metavar="N",
        help="serve under SCHED_FIFO priority N (1-99; needs root or CAP_SYS_NICE), so that no normal-priority "
        "process on a shared host delays a token; 0: normal priority",
    )
    faults = p.add_argument_group("faults")
    faults.add_argument("--startup-delay", type=float, default=0.0, help="seconds before the port answers")
    faults.add_argument("--fail-at-startup", default=None, metavar="MESSAGE", help="print MESSAGE to stderr and exit")
    faults.add_argument("--fail-exit-code", type=int, default=1)
    faults.add_argument("--spawn-children", type=int, default=0, help="start N child processes")
    faults.add_argument(
        "--crash-after",
        type=int,
        default=None,
        metavar="N",
        help="exit when generation request N+1 arrives (the readiness probe counts; 0: die on the first)",
    )
    faults.add_argument(
        "--stall-after",
        type=int,
        default=None,
        metavar="N",
        help="generation requests after the N-th stop streaming after their first token",
    )
    faults.add_argument("--error-rate", type=float, default=0.0, metavar="F", help="HTTP 500 for a fraction F")
    faults.add_argument(
        "--malformed-rate",
        type=float,
        default=0.0,
        metavar="F",
        help="a fraction F of streams carry one malformed SSE message",
    )
    faults.add_argument(
        "--reset-rate",
        type=float,
        default=0.0,
        metavar="F",
        help="a fraction F of streams have their connection reset mid-stream",
    )
    return p


def parse_args(argv: list[str] | None = None) -> tuple[SimServerOptions, list[str]]:
    """Parse ``[serve] [MODEL] [--flags]``; returns the options and the flags it ignored."""
    p = _parser()
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["serve"]:  # `vllm serve MODEL ...` style
        args = args[1:]
    model_tag = None
    if args and not args[0].startswith("-"):
        model_tag = args.pop(0)
    ns, unknown = p.parse_known_args(args)
    if ns.slowdown <= 0:
        p.error("--slowdown must be positive")
    if not 0 <= ns.realtime_priority <= 99:
        p.error("--realtime-priority must be in 0..99 (0: normal priority)")
    for name in ("error_rate", "malformed_rate", "reset_rate"):
        if not 0.0 <= getattr(ns, name) <= 1.0:
            p.error(f"--{name.replace('_', '-')} must be a fraction in [0, 1]")
    model = ns.model or model_tag or "llmperf-sim"
    fields = {k: v for k, v in vars(ns).items() if k not in ("model", "startup_delay")}
    fields["engine_args"] = tuple(args)
    fields["served_model_name"] = ns.served_model_name or model
    return SimServerOptions(model=model, startup_delay_s=ns.startup_delay, **fields), unknown
