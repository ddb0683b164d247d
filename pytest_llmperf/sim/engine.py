"""The simulated engine's core: an iteration-level (continuous batching) scheduler with modelled step times.

Each step serves every running request in decode with one token, and spends the rest of a
per-step token budget on (chunked) prefill of newly admitted requests, up to a cap on running
sequences. The step's duration is modelled from the profile; the loop keeps an absolute clock
so that a run's modelled throughput does not drift with the host's scheduling noise.

The ``deterministic`` profile bypasses batching: every request gets its first token ``ttft``
after arrival and then one token every ``itl``, whatever the load. It is the known truth
against which the load generator is checked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field

__all__ = ["PROFILES", "EngineStats", "Profile", "SimEngine", "SimRequest"]


@dataclass(frozen=True)
class Profile:
    """Step-time model: overhead + decode seqs + prefill tokens + context held, in seconds."""

    name: str
    step_overhead_s: float
    decode_per_seq_s: float
    prefill_per_token_s: float
    context_per_token_s: float
    max_num_seqs: int
    max_num_batched_tokens: int

    def step_time(self, n_decode: int, n_prefill_tokens: int, context_tokens: int) -> float:
        return (
            self.step_overhead_s
            + self.decode_per_seq_s * n_decode
            + self.prefill_per_token_s * n_prefill_tokens
            + self.context_per_token_s * context_tokens
        )


PROFILES: dict[str, Profile] = {
    # Fast, engine-shaped, and light on the host: ~8 ms steps at small batch, so a suite on
    # 2 CPU cores keeps the simulator and the client well below saturation.
    "cpu-small": Profile(
        name="cpu-small",
        step_overhead_s=0.008,
        decode_per_seq_s=0.00015,
        prefill_per_token_s=0.000004,
        context_per_token_s=0.00000002,
        max_num_seqs=256,
        max_num_batched_tokens=8192,
    ),
}


@dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    prompt_tokens_total: int
    generation_tokens_total: int
    requests_finished_total: int
    kv_cache_usage: float


@dataclass(eq=False)
class SimRequest:
    prompt_tokens: int
    max_tokens: int
    arrival: float
    prefilled: int = 0
    generated: int = 0
    aborted: bool = False
    tokens: asyncio.Queue[int] = field(default_factory=asyncio.Queue)

    @property
    def in_decode(self) -> bool:
        return self.prefilled >= self.prompt_tokens


class SimEngine:
    """The scheduler loop. Create it inside a running event loop and call :meth:`start`."""

    def __init__(
        self,
        profile: Profile,
        *,
        slowdown: float = 1.0,
        max_num_seqs: int | None = None,
        max_num_batched_tokens: int | None = None,
        kv_capacity_tokens: int = 4_000_000,
    ) -> None:
        self.profile = profile
        self.slowdown = slowdown
        self.max_num_seqs = max_num_seqs or profile.max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens or profile.max_num_batched_tokens
        self.kv_capacity_tokens = kv_capacity_tokens
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.requests_finished_total = 0
        self.steps_total = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="llmperf-sim-engine")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def submit(self, prompt_tokens: int, max_tokens: int) -> SimRequest:
        req = SimRequest(max(1, prompt_tokens), max(1, max_tokens), asyncio.get_running_loop().time())
        self.waiting.append(req)
        self.prompt_tokens_total += req.prompt_tokens
        self._wake.set()
        return req

    def stats(self) -> EngineStats:
        held = sum(r.prefilled + r.generated for r in self.running)
        return EngineStats(
            running=len(self.running),
            waiting=len(self.waiting),
            prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=self.generation_tokens_total,
            requests_finished_total=self.requests_finished_total,
            kv_cache_usage=min(1.0, held / self.kv_capacity_tokens),
        )

    def _schedule(self) -> tuple[list[SimRequest], list[tuple[SimRequest, int]], int]:
        """Choose this step's work: decodes, prefill chunks, and the context held."""
        self.running = [r for r in self.running if not r.aborted]
        decode = [r for r in self.running if r.in_decode]
        budget = self.max_num_batched_tokens - len(decode)
        prefill: list[tuple[SimRequest, int]] = []
        for r in self.running:
            if budget <= 0:
                break
            if not r.in_decode:
                chunk = min(r.prompt_tokens - r.prefilled, budget)
                prefill.append((r, chunk))
                budget -= chunk
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            r = self.waiting.popleft()
            if r.aborted:
                continue
            self.running.append(r)
            chunk = min(r.prompt_tokens, budget)
            prefill.append((r, chunk))
            budget -= chunk
        context = sum(r.prefilled + r.generated for r in self.running)
        return decode, prefill, context

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        clock = loop.time()
        while True:
            if not self.running and not self.waiting:
                self._wake.clear()
                await self._wake.wait()
                clock = loop.time()
            decode, prefill, context = self._schedule()
            n_prefill = sum(chunk for _, chunk in prefill)
            step = self.profile.step_time(len(decode), n_prefill, context) * self.slowdown
            clock += step
            delay = clock - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.05:  # fell far behind (host stall): do not burst to catch up
                clock = loop.time()
            self.steps_total += 1
            for r in decode:
                r.generated += 1
                r.tokens.put_nowait(1)
            for r, chunk in prefill:
                r.prefilled += chunk
                if r.in_decode:
                    r.generated += 1
                    r.tokens.put_nowait(1)
            self.generation_tokens_total += len(decode) + sum(1 for r, _ in prefill if r.in_decode)
            still: list[SimRequest] = []
            for r in self.running:
                if r.generated >= r.max_tokens:
                    self.requests_finished_total += 1
                else:
                    still.append(r)
            self.running = still
