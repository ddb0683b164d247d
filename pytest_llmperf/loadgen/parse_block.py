"""Read a printed ``vllm bench serve`` result block back into metrics (JSON key names).

Used to import published results as baselines. Accepts the labels of every vLLM release the
reference covers (``Total Token throughput`` with a capital T up to late 2025), blocks without
the header line, and lines indented or prefixed by a Markdown code fence.
"""

from __future__ import annotations

import re

__all__ = ["LABELS", "parse_result_block"]

LABELS: dict[str, str] = {
    "Successful requests": "completed",
    "Failed requests": "failed",
    "Maximum request concurrency": "max_concurrency",
    "Request rate configured (RPS)": "request_rate",
    "Benchmark duration (s)": "duration",
    "Total input tokens": "total_input_tokens",
    "Total generated tokens": "total_output_tokens",
    "Request throughput (req/s)": "request_throughput",
    "Request goodput (req/s)": "request_goodput",
    "Output token throughput (tok/s)": "output_throughput",
    "Peak output token throughput (tok/s)": "max_output_tokens_per_s",
    "Peak concurrent requests": "max_concurrent_requests",
    "Total token throughput (tok/s)": "total_token_throughput",
}
_STAT = re.compile(r"^(Mean|Median|P(\d+(?:\.\d+)?)) (TTFT|TPOT|ITL|E2EL) \(ms\)$")
_LINE = re.compile(r"^\s*([A-Za-z][^:]*?):\s+(-?[\d.]+)\s*$")


def parse_result_block(text: str) -> dict[str, float]:
    """Every recognised ``label: value`` line of a result block, under vLLM's JSON key names."""
    out: dict[str, float] = {}
    for raw in text.splitlines():
        m = _LINE.match(raw)
        if not m:
            continue
        label, value = m.group(1).strip(), float(m.group(2))
        key = LABELS.get(label)
        if key is None and label.lower() == "total token throughput (tok/s)":  # "Total Token" before late 2025
            key = "total_token_throughput"
        if key is None:
            s = _STAT.match(label)
            if s:
                stat = s.group(1).lower() if s.group(2) is None else f"p{s.group(2)}"
                key = f"{stat}_{s.group(3).lower()}_ms"
        if key is not None:
            out[key] = value
    return out
