"""Change points in a metric's nightly series: where its level stepped, by how much, and what changed there.

A night's value is the mean of its runs. The segmentation is ``ruptures``' PELT with the L2 cost (the
``changes`` part of the ``history`` extra); its penalty is set from the series' own noise, estimated
from night-to-night differences (a step moves one difference, not the spread of all of them), so that
a series with no change shows none in about 95% of cases (``benchmarks/change_points.py``).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["PENALTY_FACTOR", "ChangePoint", "change_points", "noise_sd"]

PENALTY_FACTOR = 4.0  # penalty = factor x sd^2 x ln(n): chosen with benchmarks/change_points.py
MIN_SEGMENT = 4  # nights on each side of a change point


@dataclass(frozen=True)
class ChangePoint:
    index: int  # the first night after the change
    before: float  # the level of the segment before
    after: float  # the level of the segment after
    step: float  # relative change of the level, (after - before) / before


def noise_sd(series: Sequence[float]) -> float:
    """The night-to-night noise, robust to steps: the MAD of successive differences, over sqrt 2."""
    diffs = [b - a for a, b in itertools.pairwise(series)]
    if len(diffs) < 2:
        return 0.0
    med = statistics.median(diffs)
    return 1.4826 * statistics.median(abs(d - med) for d in diffs) / math.sqrt(2)


def change_points(series: Sequence[float], *, penalty_factor: float = PENALTY_FACTOR) -> list[ChangePoint]:
    """The change points of ``series`` (one value a night, oldest first)."""
    import numpy as np
    import ruptures

    n = len(series)
    sd = noise_sd(series)
    if n < 2 * MIN_SEGMENT or sd <= 0:
        return []
    signal = np.asarray(series, dtype=float).reshape(-1, 1)
    ends = (
        ruptures.Pelt(model="l2", min_size=MIN_SEGMENT, jump=1)
        .fit(signal)
        .predict(pen=penalty_factor * sd**2 * math.log(n))
    )
    bounds = [0, *ends]
    out = []
    for k in range(1, len(bounds) - 1):
        before = statistics.fmean(series[bounds[k - 1] : bounds[k]])
        after = statistics.fmean(series[bounds[k] : bounds[k + 1]])
        out.append(ChangePoint(bounds[k], before, after, (after - before) / before if before else 0.0))
    return out
