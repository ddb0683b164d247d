"""Read an engine's Prometheus ``/metrics`` (vLLM's names; the simulated engine uses the same)."""

from __future__ import annotations

import httpx

__all__ = ["parse_metrics", "scrape_metrics"]


def parse_metrics(text: str) -> dict[str, float]:
    """Sample name -> value, summed over label sets (vLLM labels series by engine and model)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            number = float(value)
        except ValueError:
            continue
        key = name.split("{", 1)[0]
        out[key] = out.get(key, 0.0) + number
    return out


def scrape_metrics(base_url: str, *, timeout: float = 10.0) -> dict[str, float]:
    response = httpx.get(base_url.rstrip("/") + "/metrics", timeout=timeout, trust_env=False)
    response.raise_for_status()
    return parse_metrics(response.text)
