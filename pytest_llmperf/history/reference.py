"""The gate's reference from history (``--llmperf-reference history[:K]``): the last K accepted nights of
the same test, engine version and hardware key, and the night-to-night noise measured over the store.

The statistics (centring the nights, pooling the night variance) are the gate's (``gate.suite``); this
module only reads them out of the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pytest_llmperf.gate.decision import DEFAULT_GATED
from pytest_llmperf.gate.suite import centred_nights, night_cv_estimate
from pytest_llmperf.history.series import run_values

if TYPE_CHECKING:  # the store imports SQLAlchemy: not when the plugin loads
    from pytest_llmperf.history.store import HistoryStore

__all__ = ["DEFAULT_NIGHTS", "MIN_NIGHTS", "HistoryReference", "history_reference", "parse_reference", "suite_night_cv"]

DEFAULT_NIGHTS = 10
MIN_NIGHTS = 2  # fewer accepted nights than this: the baseline file is the reference


@dataclass(frozen=True)
class HistoryReference:
    metrics: dict[str, list[float]]  # the nights' runs, each night centred on the mean of the night means
    nights: int
    first: str  # the first and last night's start
    last: str

    def describe(self) -> str:
        return f"the last {self.nights} accepted night(s) in history ({self.first[:10]} to {self.last[:10]})"


def parse_reference(value: str) -> int | None:
    """``baseline`` -> None; ``history`` -> the default K; ``history:K`` -> K. ValueError with the fix else."""
    if value == "baseline":
        return None
    name, _, k = value.partition(":")
    if name != "history" or (k and (not k.isdigit() or int(k) < MIN_NIGHTS)):
        raise ValueError(
            f"expected 'baseline' (the default), 'history' (the last {DEFAULT_NIGHTS} accepted nights) or "
            f"'history:K' with K at least {MIN_NIGHTS}, e.g. --llmperf-reference history:10"
        )
    return int(k) if k else DEFAULT_NIGHTS


def history_reference(
    store: HistoryStore, *, case_id: str, engine_version: str, hardware: str, k: int
) -> tuple[HistoryReference | None, int]:
    """The reference of one test from its last ``k`` accepted nights, or None when there are fewer than
    ``MIN_NIGHTS``; with the number of accepted nights found."""
    found = store.accepted_nights(case_id=case_id, engine_version=engine_version, hardware=hardware, k=k)
    nights = found.get((case_id, engine_version, hardware), [])
    if len(nights) < MIN_NIGHTS:
        return None, len(nights)
    samples = [run_values(night) for night in nights]
    ref = HistoryReference(centred_nights(samples), len(nights), nights[0][0]["started"], nights[-1][0]["started"])
    return ref, len(nights)


def suite_night_cv(store: HistoryStore, *, k: int, metrics: Sequence[str] = DEFAULT_GATED) -> tuple[float, int]:
    """The night-to-night CV pooled over every series in the store (last ``k`` accepted nights of each) and
    its gated metrics; with its degrees of freedom (0: not enough history to say)."""
    series = []
    for nights in store.accepted_nights(k=k).values():
        per_night = [run_values(night) for night in nights]
        for metric in metrics:
            if metric == "failed":
                continue
            values = [n[metric] for n in per_night if metric in n]
            if len(values) == len(per_night):
                series.append(values)
    return night_cv_estimate(series)
