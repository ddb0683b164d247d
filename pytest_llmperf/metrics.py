"""Benchmark metrics with the exact definitions of ``vllm bench serve`` (vLLM 0.32).

The per-request record mirrors vLLM's ``RequestFuncOutput``; :func:`calculate_metrics`
mirrors ``calculate_metrics`` in ``vllm/benchmarks/serve.py``:

* TTFT: first SSE message with a non-empty ``choices`` list, minus the send time.
* ITL: gaps between consecutive token-bearing messages, pooled over all requests.
* E2EL: last token-bearing message minus the send time.
* TPOT: (E2EL - TTFT) / (output tokens - 1), only for more than one output token.
* Throughputs divide by the benchmark duration (start of the arrival loop to the end of the last request).
* Statistics: mean, median, population std, ``numpy.percentile`` (linear); an empty list gives 0.
* Failed requests are excluded from every metric and counted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "METRIC_LABELS",
    "BenchmarkMetrics",
    "RequestRecord",
    "calculate_metrics",
    "parse_goodput",
    "peak_concurrent_requests",
    "peak_output_throughput",
]

# Per-request-distribution metrics: key -> (section title, label)
METRIC_LABELS: dict[str, tuple[str, str]] = {
    "ttft": ("Time to First Token", "TTFT"),
    "tpot": ("Time per Output Token (excl. 1st token)", "TPOT"),
    "itl": ("Inter-token Latency", "ITL"),
    "e2el": ("End-to-end Latency", "E2EL"),
}


@dataclass(slots=True)
class RequestRecord:
    """What one request measured. Times are ``time.perf_counter()`` seconds."""

    prompt_len: int = 0
    output_len_hint: int = 0  # the requested max tokens
    success: bool = False
    latency: float = 0.0
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0  # from the usage chunk; 0 when the server sent none
    generated_text: str = ""
    error: str = ""
    start_time: float = 0.0
    scheduled_time: float = 0.0  # when the arrival process meant to send it
    queue_time: float = 0.0  # wait for the --max-concurrency slot


@dataclass
class BenchmarkMetrics:
    completed: int
    failed: int
    total_input: int
    total_output: int
    duration: float
    request_throughput: float
    request_goodput: float | None
    output_throughput: float
    total_token_throughput: float
    max_output_tokens_per_s: float
    max_concurrent_requests: float
    stats: dict[str, dict[str, float]]  # "ttft" -> {"mean": ms, "median": ms, "std": ms, "p99": ms}
    output_lens: list[int]
    percentiles: tuple[float, ...]

    def flat(self) -> dict[str, float]:
        """Scalar metrics under ``vllm bench serve``'s JSON key names."""
        out: dict[str, float] = {
            "duration": self.duration,
            "completed": float(self.completed),
            "failed": float(self.failed),
            "total_input_tokens": float(self.total_input),
            "total_output_tokens": float(self.total_output),
            "request_throughput": self.request_throughput,
            "output_throughput": self.output_throughput,
            "total_token_throughput": self.total_token_throughput,
            "max_output_tokens_per_s": self.max_output_tokens_per_s,
            "max_concurrent_requests": self.max_concurrent_requests,
        }
        if self.request_goodput is not None:
            out["request_goodput"] = self.request_goodput
        for metric, values in self.stats.items():
            for stat, value in values.items():
                out[f"{stat}_{metric}_ms"] = value
        return out


def percentile_key(p: float) -> str:
    return f"p{int(p)}" if float(p).is_integer() else f"p{p}"


def _stats(values_s: Sequence[float], percentiles: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values_s if len(values_s) else [0.0], dtype=float) * 1000.0
    out = {
        "mean": float(np.mean(arr)),
        "median": float(np.median(arr)),
        "std": float(np.std(arr)),
    }
    for p in percentiles:
        out[percentile_key(p)] = float(np.percentile(arr, p))
    return out


def parse_goodput(specs: Sequence[str]) -> dict[str, float]:
    """Parse ``ttft:200 tpot:50 e2el:5000`` (milliseconds) into {name: ms}."""
    slos: dict[str, float] = {}
    for spec in specs:
        for item in spec.split():
            name, sep, value = item.partition(":")
            if not sep or name not in ("ttft", "tpot", "e2el"):
                raise ValueError(f"invalid goodput SLO {item!r}: expected KEY:VALUE with KEY in ttft, tpot, e2el")
            try:
                ms = float(value)
            except ValueError:
                raise ValueError(f"invalid goodput SLO {item!r}: {value!r} is not a number of ms") from None
            if ms < 0:
                raise ValueError(f"invalid goodput SLO {item!r}: must be non-negative")
            slos[name] = ms
    return slos


def peak_output_throughput(records: Sequence[RequestRecord]) -> float:
    """Maximum number of token-bearing messages in any 1-second bucket (vLLM semantics)."""
    ok = [r for r in records if r.success]
    if not ok:
        return 0.0
    min_start = min(r.start_time for r in ok)
    max_end = max(r.start_time + r.latency for r in ok)
    buckets = np.zeros(math.ceil(max_end - min_start) + 1, dtype=np.int64)
    for r in ok:
        t = r.start_time + r.ttft
        times = [t]
        for gap in r.itl:
            t += gap
            times.append(t)
        idx = np.floor(np.asarray(times) - min_start).astype(np.int64)
        idx = np.clip(idx, 0, len(buckets) - 1)
        np.add.at(buckets, idx, 1)
    return float(buckets.max())


def peak_concurrent_requests(records: Sequence[RequestRecord]) -> float:
    """Exact sweep line over half-open intervals [start, start + latency); departures first at ties."""
    events: list[tuple[float, int]] = []
    for r in records:
        if r.success:
            events.append((r.start_time, 1))
            events.append((r.start_time + r.latency, -1))
    events.sort(key=lambda e: (e[0], e[1]))
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return float(peak)


def calculate_metrics(
    records: Sequence[RequestRecord],
    duration: float,
    *,
    percentiles: Sequence[float] = (99.0,),
    selected: Sequence[str] = ("ttft", "tpot", "itl", "e2el"),
    goodput: Mapping[str, float] | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> BenchmarkMetrics:
    output_lens: list[int] = []
    total_input = 0
    completed = 0
    ttfts: list[float] = []
    tpots: list[float] = []
    all_tpots: list[float] = []
    itls: list[float] = []
    e2els: list[float] = []
    good = 0
    for r in records:
        if not r.success:
            output_lens.append(0)
            continue
        out_len = r.output_tokens
        if not out_len:
            out_len = count_tokens(r.generated_text) if count_tokens is not None else 1
        output_lens.append(out_len)
        total_input += r.prompt_len
        completed += 1
        tpot = 0.0
        if out_len > 1:
            tpot = (r.latency - r.ttft) / (out_len - 1)
            tpots.append(tpot)
        all_tpots.append(tpot)
        itls.extend(r.itl)
        ttfts.append(r.ttft)
        e2els.append(r.latency)
        if goodput:
            ok = True
            if "ttft" in goodput and r.ttft > goodput["ttft"] / 1000.0:
                ok = False
            if "tpot" in goodput and tpot > goodput["tpot"] / 1000.0:
                ok = False
            if "e2el" in goodput and r.latency > goodput["e2el"] / 1000.0:
                ok = False
            good += ok
    total_output = sum(output_lens)
    series = {"ttft": ttfts, "tpot": tpots, "itl": itls, "e2el": e2els}
    pcts = tuple(float(p) for p in percentiles)
    stats = {m: _stats(series[m], pcts) for m in METRIC_LABELS if m in selected}
    dur = duration if duration > 0 else math.inf
    return BenchmarkMetrics(
        completed=completed,
        failed=len(records) - completed,
        total_input=total_input,
        total_output=total_output,
        duration=duration,
        request_throughput=completed / dur,
        request_goodput=(good / dur) if goodput else None,
        output_throughput=total_output / dur,
        total_token_throughput=(total_input + total_output) / dur,
        max_output_tokens_per_s=peak_output_throughput(records),
        max_concurrent_requests=peak_concurrent_requests(records),
        stats=stats,
        output_lens=output_lens,
        percentiles=pcts,
    )


def result_block(
    m: BenchmarkMetrics,
    *,
    max_concurrency: int | None = None,
    request_rate: float = math.inf,
    tokenizer_loaded: bool = True,
) -> str:
    """The printed result block of ``vllm bench serve`` (same labels, order and padding)."""
    lines = ["{s:{c}^{n}}".format(s=" Serving Benchmark Result ", n=50, c="=")]

    def row(label: str, value: Any) -> None:
        if isinstance(value, float):
            lines.append(f"{label:<40} {value:<10.2f}")
        else:
            lines.append(f"{label:<40} {value:<10}")

    row("Successful requests:", m.completed)
    row("Failed requests:", m.failed)
    if max_concurrency is not None:
        row("Maximum request concurrency:", max_concurrency)
    if request_rate != math.inf:
        row("Request rate configured (RPS):", float(request_rate))
    row("Benchmark duration (s):", m.duration)
    row("Total input tokens:", m.total_input)
    if tokenizer_loaded:
        row("Total generated tokens:", m.total_output)
    row("Request throughput (req/s):", m.request_throughput)
    if m.request_goodput is not None:
        row("Request goodput (req/s):", m.request_goodput)
    if tokenizer_loaded:
        row("Output token throughput (tok/s):", m.output_throughput)
        row("Peak output token throughput (tok/s):", m.max_output_tokens_per_s)
    row("Peak concurrent requests:", m.max_concurrent_requests)
    if tokenizer_loaded:
        row("Total token throughput (tok/s):", m.total_token_throughput)
    for metric, (title, label) in METRIC_LABELS.items():
        if metric not in m.stats:
            continue
        s = m.stats[metric]
        lines.append("{s:{c}^{n}}".format(s=title, n=50, c="-"))
        row(f"Mean {label} (ms):", s["mean"])
        row(f"Median {label} (ms):", s["median"])
        for p in m.percentiles:
            p_word = str(int(p)) if float(p).is_integer() else str(p)
            row(f"P{p_word} {label} (ms):", s[percentile_key(p)])
    lines.append("=" * 50)
    return "\n".join(lines)
