"""``--llmperf-shard K/N``: spread a suite over N nodes by engine configuration.

Assignment is rendezvous (highest-random-weight) hashing of the config id: each config goes to the
shard with the highest ``sha256(config id, shard)``. It depends on nothing but the config's own id
and N, so adding a configuration to a matrix moves no other configuration, and every node computes
the same assignment with no coordination. All workloads of a config stay on its shard, so each
server is launched on one node only. Tests outside any matrix are assigned by their node id.

Balance is statistical (each shard's share of configs is binomial around 1/N); the expected cost
per shard, from the durations recorded in the baselines, is printed so that an unlucky split is
visible (try another N). A cost-optimal split would move configurations whenever one is added.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["parse_shard", "shard_of"]


def parse_shard(spec: str) -> tuple[int, int]:
    """``"2/3"`` -> (2, 3); raises ValueError with the expected form."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not m:
        raise ValueError(f"--llmperf-shard {spec!r}: expected K/N, e.g. 2/3")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= k <= n:
        raise ValueError(f"--llmperf-shard {spec!r}: K must be between 1 and N")
    return k, n


def shard_of(key: str, n: int) -> int:
    """The 1-based shard of ``key`` among ``n`` shards."""
    scores = [hashlib.sha256(f"{key}\x00{k}".encode()).digest() for k in range(1, n + 1)]
    return 1 + max(range(n), key=lambda i: scores[i])
