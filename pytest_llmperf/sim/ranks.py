"""Data-parallel attention in the simulated engine: one scheduler per attention rank, one forward for all.

Under SGLang's ``--enable-dp-attention --dp N`` each of the N ranks runs its own scheduler over its own
requests (the DP controller deals them round-robin) and its own KV pool, and every forward is a step of
all ranks together: the MoE layers run on the tokens of every rank, the attention of each rank on its
own GPU. So a rank whose KV pool is full decodes its running requests while another rank still
prefills: a request keeps getting tokens while other prompts wait, which a single node-wide
prefill-first scheduler cannot show (docs/performance.md, "The calibrated simulator against the study").

:class:`RankedEngine` keeps the :class:`~pytest_llmperf.sim.engine.SimEngine` interface (``submit``,
``schedule``, ``step_time``, ``advance``, ``stats``), so the HTTP server and the virtual-time replay
run it unchanged; :func:`new_engine` picks it for a profile with ``dp_ranks > 1``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pytest_llmperf.sim.engine import EngineStats, Profile, SimEngine, SimRequest

__all__ = ["RankedEngine", "new_engine"]

Plan = tuple[list[SimRequest], list[tuple[SimRequest, int]]]


def new_engine(profile: Profile, **options: Any) -> SimEngine:
    """The engine for ``profile`` (``options``: :class:`SimEngine`'s): one scheduler, or one per attention rank."""
    return (RankedEngine if profile.dp_ranks > 1 else SimEngine)(profile, **options)


class RankedEngine(SimEngine):
    """``profile.dp_ranks`` schedulers stepping in lockstep; node-wide limits are split evenly between them."""

    def __init__(self, profile: Profile, **options: Any) -> None:
        super().__init__(profile, **options)  # the loop, the clock and the node-wide limits
        n = profile.dp_ranks
        rank_profile = replace(profile, dp_ranks=1)
        self.ranks = [
            SimEngine(
                rank_profile,
                max_num_seqs=max(1, self.max_num_seqs // n),
                max_num_batched_tokens=max(1, self.max_num_batched_tokens // n),
                kv_capacity_tokens=max(1, self.num_blocks * self.block_size // n),
            )
            for _ in range(n)
        ]
        self._dealt = 0
        self._plans: list[Plan] = []

    def enqueue(self, req: SimRequest) -> None:
        self.ranks[self._dealt % len(self.ranks)].enqueue(req)  # round-robin, SGLang's DP controller's default
        self._dealt += 1

    def has_work(self) -> bool:
        return any(r.has_work() for r in self.ranks)

    def stats(self) -> EngineStats:
        blocks = sum(r.num_blocks for r in self.ranks)
        return EngineStats(
            running=sum(len(r.running) for r in self.ranks),
            waiting=sum(len(r.waiting) for r in self.ranks),
            prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=sum(r.generation_tokens_total for r in self.ranks),
            requests_finished_total=sum(r.requests_finished_total for r in self.ranks),
            preemptions_total=sum(r.preemptions_total for r in self.ranks),
            kv_cache_usage=1.0 - sum(r.free_blocks for r in self.ranks) / blocks,
        )

    def schedule(self) -> Plan:
        """Every rank's decodes and prefill chunks for the next forward (flattened; the plans are kept)."""
        self._plans = [r.schedule() for r in self.ranks]
        decode = [q for d, _ in self._plans for q in d]
        prefill = [piece for _, p in self._plans for piece in p]
        return decode, prefill

    def context_tokens(self) -> int:
        return sum(r.context_tokens() for r in self.ranks)

    def prefill_attention_time(self, prefill: list[tuple[SimRequest, int]]) -> float:
        """The slowest rank's: a rank runs attention on its own 1/dp_ranks of the GPUs, for its own prompts."""
        return len(self.ranks) * max(
            r.prefill_attention_time(p) for r, (_, p) in zip(self.ranks, self._plans, strict=True)
        )

    @property
    def request_capacity(self) -> int:
        return min(r.request_capacity for r in self.ranks)  # a request lives in one rank's pool

    def advance(self, decode: list[SimRequest], prefill: list[tuple[SimRequest, int]]) -> None:
        """The end of the forward :meth:`schedule` planned: each rank's tokens out, its finished requests leave."""
        self.steps_total += 1
        for rank, (d, pr) in zip(self.ranks, self._plans, strict=True):
            rank.advance(d, pr)
        self._plans = []
