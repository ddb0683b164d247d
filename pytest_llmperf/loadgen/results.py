"""The ``vllm bench serve`` result JSON: same keys, same order, same file name."""

from __future__ import annotations

import math
import os
from datetime import datetime
from typing import Any

from pytest_llmperf.loadgen.runner import BenchmarkResult

__all__ = ["DETAILED_KEYS", "default_result_filename", "result_json"]

# removed from the JSON unless --save-detailed, as vLLM does
DETAILED_KEYS = ("input_lens", "output_lens", "start_times", "ttfts", "itls", "generated_texts", "errors")


def result_json(
    result: BenchmarkResult,
    *,
    model_id: str,
    tokenizer_id: str,
    label: str | None = None,
    metadata: dict[str, str] | None = None,
    detailed: bool = False,
    date: datetime | None = None,
) -> dict[str, Any]:
    s = result.settings
    m = result.metrics
    records = result.records
    out: dict[str, Any] = {
        "date": (date or datetime.now()).strftime("%Y%m%d-%H%M%S"),
        "endpoint_type": s.backend,
        "backend": s.backend,
        "label": label,
        "model_id": model_id,
        "tokenizer_id": tokenizer_id,
        "num_prompts": len(records),
    }
    out.update(metadata or {})
    out["request_rate"] = "inf" if s.request_rate == math.inf else s.request_rate
    out["burstiness"] = s.burstiness
    out["max_concurrency"] = s.max_concurrency
    out.update(
        {
            "duration": m.duration,
            "completed": m.completed,
            "failed": m.failed,
            "total_input_tokens": m.total_input,
            "total_output_tokens": m.total_output,
            "request_throughput": m.request_throughput,
            "request_goodput": m.request_goodput,
            "output_throughput": m.output_throughput,
            "total_token_throughput": m.total_token_throughput,
            "input_lens": [r.prompt_len for r in records],
            "output_lens": m.output_lens,
            "ttfts": [r.ttft if r.success else 0.0 for r in records],
            "itls": [r.itl if r.success else [] for r in records],
            "latencies": [r.latency if r.success else 0.0 for r in records],
            "start_times": [r.start_time for r in records],
            "queue_times": [r.queue_time for r in records],
            "generated_texts": [r.generated_text for r in records],
            "errors": [r.error for r in records],
            "max_output_tokens_per_s": m.max_output_tokens_per_s,
            "max_concurrent_requests": m.max_concurrent_requests,
            "rtfx": 0.0,
        }
    )
    for metric, stats in m.stats.items():
        for stat, value in stats.items():
            out[f"{stat}_{metric}_ms"] = value
    if not detailed:
        for key in DETAILED_KEYS:
            del out[key]
    # pytest-llmperf's own addition: how the client itself fared (absent from vLLM's JSON)
    out["llmperf_client"] = {
        "cpu_s": result.client_cpu_s,
        "max_send_lag_s": result.max_send_lag_s,
        "max_loop_lag_s": result.max_loop_lag_s,
        "workers": s.client_workers,
        "prewarm_connections": s.prewarm_connections,
        "warnings": list(result.client_warnings),
    }
    return out


def default_result_filename(
    *,
    backend: str,
    label: str | None,
    request_rate: float,
    max_concurrency: int | None,
    model_id: str,
    date: datetime | None = None,
) -> str:
    """``{label or backend}-{rate}qps[-concurrency{N}]-{model basename}-{YYYYmmdd-HHMMSS}.json``."""
    rate = "inf" if request_rate == math.inf else str(request_rate)
    concurrency = f"-concurrency{max_concurrency}" if max_concurrency is not None else ""
    stamp = (date or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return f"{label or backend}-{rate}qps{concurrency}-{os.path.basename(model_id.rstrip('/'))}-{stamp}.json"
