"""Prometheus text for the simulated engine, with vLLM's metric names and histogram buckets."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping, Sequence

__all__ = ["Histogram", "render_metrics"]


class Histogram:
    """A cumulative Prometheus histogram; ``observe`` is one bisect and two additions."""

    TTFT_BUCKETS = (
        0.001,
        0.005,
        0.01,
        0.02,
        0.04,
        0.06,
        0.08,
        0.1,
        0.25,
        0.5,
        0.75,
        1.0,
        2.5,
        5.0,
        7.5,
        10.0,
        20.0,
        40.0,
        80.0,
        160.0,
        640.0,
        2560.0,
    )
    ITL_BUCKETS = (
        0.01,
        0.025,
        0.05,
        0.075,
        0.1,
        0.15,
        0.2,
        0.3,
        0.4,
        0.5,
        0.75,
        1.0,
        2.5,
        5.0,
        7.5,
        10.0,
        20.0,
        40.0,
        80.0,
    )
    E2E_BUCKETS = (
        0.3,
        0.5,
        0.8,
        1.0,
        1.5,
        2.0,
        2.5,
        5.0,
        10.0,
        15.0,
        20.0,
        30.0,
        40.0,
        50.0,
        60.0,
        120.0,
        240.0,
        480.0,
        960.0,
        1920.0,
        7680.0,
    )

    def __init__(self, name: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def render(self, label: str) -> list[str]:
        lines = [f"# TYPE {self.name} histogram"]
        cumulative = 0
        inner = label[1:-1]
        for bound, n in zip(self.buckets, self.counts, strict=False):
            cumulative += n
            lines.append(f'{self.name}_bucket{{{inner},le="{bound}"}} {float(cumulative)}')
        lines.append(f'{self.name}_bucket{{{inner},le="+Inf"}} {float(self.count)}')
        lines.append(f"{self.name}_sum{label} {self.sum}")
        lines.append(f"{self.name}_count{label} {float(self.count)}")
        return lines


def render_metrics(
    model: str,
    *,
    gauges: Mapping[str, float],
    counters: Mapping[str, float],
    success: dict[str, int],
    histograms: Sequence[Histogram],
    sim: Mapping[str, float],
) -> str:
    label = f'{{model_name="{model}"}}'
    out = [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{label} {float(gauges['running'])}",
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
        "# TYPE vllm:num_requests_waiting gauge",
        f"vllm:num_requests_waiting{label} {float(gauges['waiting'])}",
        "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
        "# TYPE vllm:kv_cache_usage_perc gauge",
        f"vllm:kv_cache_usage_perc{label} {float(gauges['kv'])}",
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
        "# TYPE vllm:prompt_tokens_total counter",
        f"vllm:prompt_tokens_total{label} {float(counters['prompt'])}",
        "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
        "# TYPE vllm:generation_tokens_total counter",
        f"vllm:generation_tokens_total{label} {float(counters['generation'])}",
        "# HELP vllm:num_preemptions_total Cumulative number of preemptions from the engine.",
        "# TYPE vllm:num_preemptions_total counter",
        f"vllm:num_preemptions_total{label} {float(counters['preemptions'])}",
        "# HELP vllm:request_success_total Count of successfully processed requests.",
        "# TYPE vllm:request_success_total counter",
        *(
            f'vllm:request_success_total{{model_name="{model}",finished_reason="{reason}"}} {float(n)}'
            for reason, n in sorted((success or {"length": 0}).items())
        ),
    ]
    for h in histograms:
        out.extend(h.render(label))
    for name, value in sim.items():
        out.append(f"# TYPE llmperf_sim:{name} gauge")
        out.append(f"llmperf_sim:{name}{label} {float(value)}")
    return "\n".join(out) + "\n"
