"""The simulated engine's core: an iteration-level (continuous batching) scheduler with modelled step times.

Each step, like vLLM's V1 scheduler:

1. every running request in decode gets one token (one unit of the per-step token budget);
2. running requests still in (chunked) prefill get the rest of the budget, in arrival order;
3. waiting requests are admitted while the budget, the cap on running sequences and the free
   KV-cache blocks allow;
4. a decode that needs a new KV block when none is free preempts the newest running request,
   which frees its blocks and goes back to the front of the queue to be recomputed (prompt and
   tokens generated so far) — the client sees a pause, never a lost request or a repeated token.

The step's duration comes from the :class:`Profile`; the loop keeps an absolute clock, so a run's
modelled throughput does not drift with the host's scheduling noise. Tokens are handed to the HTTP
layer through a callback, with no queue or task per token.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from pytest_llmperf.sim.profile import PROFILES, Profile

__all__ = ["PROFILES", "EngineStats", "Profile", "SimEngine", "SimRequest"]


@dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    prompt_tokens_total: int
    generation_tokens_total: int
    requests_finished_total: int
    preemptions_total: int
    kv_cache_usage: float


@dataclass(eq=False)
class SimRequest:
    prompt_tokens: int
    max_tokens: int
    arrival: float
    on_token: Callable[[int], None]  # called with the number of tokens generated so far
    prefilled: int = 0  # tokens of (prompt + recomputed output) already in the KV cache
    generated: int = 0
    blocks: int = 0
    aborted: bool = False
    preempted: int = 0
    credit: float = 0.0  # accepted draft tokens not yet emitted (speculative decoding)

    @property
    def to_prefill(self) -> int:
        """Tokens that must be in the cache before the next token: the prompt, plus output after a preemption."""
        return self.prompt_tokens + (self.generated if self.preempted else 0)

    @property
    def in_decode(self) -> bool:
        return self.prefilled >= self.to_prefill


class SimEngine:
    """The scheduler loop. Create it inside a running event loop and call :meth:`start`.

    A step is :meth:`schedule` (this step's decodes and prefill chunks), :meth:`step_time` (its
    modelled duration) and :meth:`advance` (its tokens out): :meth:`start` runs them on the event
    loop's clock, :func:`pytest_llmperf.sim.virtual.replay` on a clock that jumps from step to step.
    """

    def __init__(
        self,
        profile: Profile,
        *,
        slowdown: float = 1.0,
        max_num_seqs: int | None = None,
        max_num_batched_tokens: int | None = None,
        kv_capacity_tokens: int | None = None,
        jitter: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.profile = profile
        self.slowdown = slowdown
        self.max_num_seqs = max_num_seqs or profile.max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens or profile.max_num_batched_tokens
        self.block_size = profile.block_size
        self.num_blocks = max(1, (kv_capacity_tokens or profile.kv_capacity_tokens) // self.block_size)
        self.free_blocks = self.num_blocks
        self.jitter = jitter
        self._rng = random.Random(seed)
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.requests_finished_total = 0
        self.preemptions_total = 0
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

    def submit(self, prompt_tokens: int, max_tokens: int, on_token: Callable[[int], None]) -> SimRequest:
        req = SimRequest(max(1, prompt_tokens), max(1, max_tokens), asyncio.get_running_loop().time(), on_token)
        self.enqueue(req)
        self.prompt_tokens_total += req.prompt_tokens
        self._wake.set()
        return req

    def enqueue(self, req: SimRequest) -> None:
        """A request joins the queue (a replay's requests, and every submitted one)."""
        self.waiting.append(req)

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def stats(self) -> EngineStats:
        return EngineStats(
            running=len(self.running),
            waiting=len(self.waiting),
            prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=self.generation_tokens_total,
            requests_finished_total=self.requests_finished_total,
            preemptions_total=self.preemptions_total,
            kv_cache_usage=1.0 - self.free_blocks / self.num_blocks,
        )

    # --- KV cache ---------------------------------------------------------------------------------

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def _grow(self, r: SimRequest, tokens: int) -> bool:
        need = self._blocks_for(tokens) - r.blocks
        if need <= 0:
            return True
        if need > self.free_blocks:
            return False
        self.free_blocks -= need
        r.blocks += need
        return True

    def _release(self, r: SimRequest) -> None:
        self.free_blocks += r.blocks
        r.blocks = 0

    def _preempt_newest(self) -> SimRequest | None:
        victim = self.running.pop() if self.running else None
        if victim is not None:
            self._release(victim)
            victim.prefilled = 0
            victim.preempted += 1
            self.preemptions_total += 1
            self.waiting.appendleft(victim)
        return victim

    # --- scheduling -------------------------------------------------------------------------------

    def schedule(self) -> tuple[list[SimRequest], list[tuple[SimRequest, int]]]:
        """Choose this step's work: the decodes, and (request, chunk) prefill pieces."""
        for r in self.running:
            if r.aborted:
                self._release(r)
        self.running = [r for r in self.running if not r.aborted]
        if self.profile.prefill_first:
            prefill = self._prefill(self.max_num_batched_tokens)
            if prefill:
                return [], prefill
        return self._decodes_then_prefill()

    def _decodes_then_prefill(self) -> tuple[list[SimRequest], list[tuple[SimRequest, int]]]:
        decode: list[SimRequest] = []
        slots = 1 + self.profile.spec_tokens  # KV slots a decode step writes: the token and its drafts
        i = 0
        while i < len(self.running):
            r = self.running[i]
            if r.in_decode:
                # the next token's KV slot; preempt the newest request until it fits
                fits = self._grow(r, r.prefilled + slots)
                while not fits:
                    victim = self._preempt_newest()
                    if victim is None or victim is r:
                        break  # r itself was the newest: it is back in the queue, and the loop ends
                    fits = self._grow(r, r.prefilled + slots)
                if not fits:
                    continue
                decode.append(r)
            i += 1
        if self.profile.prefill_first:
            return decode, []
        return decode, self._prefill(self.max_num_batched_tokens - len(decode))

    def _prefill(self, budget: int) -> list[tuple[SimRequest, int]]:
        """Prefill chunks within ``budget`` tokens: running requests still in prefill, then admissions."""
        prefill: list[tuple[SimRequest, int]] = []
        for r in self.running:
            if budget <= 0:
                break
            if not r.in_decode:
                chunk = min(r.to_prefill - r.prefilled, budget)
                if not self._grow(r, r.prefilled + chunk):
                    break
                prefill.append((r, chunk))
                budget -= chunk
        reserve = 0.0
        if self.profile.admit_reserve and self.waiting:
            reserve = self.profile.admit_reserve * sum(r.max_tokens - r.generated for r in self.running)
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            r = self.waiting[0]
            if r.aborted:
                self.waiting.popleft()
                continue
            chunk = min(r.to_prefill, budget)
            # admit only with room for the whole prompt (vLLM's watermark, simplified)
            if reserve:
                reserve += self.profile.admit_reserve * (r.max_tokens - r.generated)
            if self._blocks_for(r.to_prefill + 1 + int(reserve)) > self.free_blocks:
                break
            self.waiting.popleft()
            self._grow(r, chunk)
            self.running.append(r)
            prefill.append((r, chunk))
            budget -= chunk
        return prefill

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        clock = loop.time()
        while True:
            if not self.has_work():
                self._wake.clear()
                await self._wake.wait()
                clock = loop.time()
            decode, prefill = self.schedule()
            if not decode and not prefill:
                # nothing fits (every request waits for blocks held by aborted ones): yield and retry
                await asyncio.sleep(0.001)
                clock = loop.time()
                continue
            step = self.step_time(decode, prefill) * self.slowdown
            if self.jitter:
                step *= max(0.0, self._rng.gauss(1.0, self.jitter))
            clock += step
            delay = clock - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.05:  # fell far behind (host stall): do not burst to catch up
                clock = loop.time()
            self.advance(decode, prefill)

    def advance(self, decode: list[SimRequest], prefill: list[tuple[SimRequest, int]]) -> None:
        """The end of a step: tokens out (``on_token``), finished requests leave and free their blocks."""
        self.steps_total += 1
        produced = 0
        spec = self.profile.spec_tokens * self.profile.spec_accept
        for r in decode:
            if r.aborted:
                continue
            n = 1
            if spec:
                r.credit += spec
                extra = int(r.credit)
                r.credit -= extra
                n = min(1 + extra, r.max_tokens - r.generated)
            r.prefilled += n
            r.generated += n
            produced += n
            r.on_token(r.generated)
        for r, chunk in prefill:
            if r.aborted:
                continue
            r.prefilled += chunk
            if r.in_decode:
                if r.preempted:
                    r.prefilled = r.to_prefill
                r.generated += 1
                produced += 1
                r.on_token(r.generated)
        self.generation_tokens_total += produced
        still: list[SimRequest] = []
        for r in self.running:
            if r.generated >= r.max_tokens or r.aborted:
                self._release(r)
                self.requests_finished_total += not r.aborted
            else:
                still.append(r)
        self.running = still

    def step_time(self, decode: list[SimRequest], prefill: list[tuple[SimRequest, int]]) -> float:
        """The modelled duration of the step that runs ``decode`` and ``prefill``."""
        n_prefill = sum(chunk for _, chunk in prefill)
        n_decode = len(decode) * (1 + self.profile.spec_tokens)  # each draft token is verified like a decode
        t = self.profile.step_time(len(decode) + len(prefill), n_decode, n_prefill, self.context_tokens())
        if self.profile.attn_pair_s or self.profile.index_pair_s:
            t += self.prefill_attention_time(prefill)
        return t

    def context_tokens(self) -> int:
        """Tokens in the KV cache of the running requests: what a step's attention reads."""
        return sum(r.prefilled for r in self.running)

    def prefill_attention_time(self, prefill: list[tuple[SimRequest, int]]) -> float:
        return sum(self.profile.prefill_attention(r.prefilled, chunk) for r, chunk in prefill)

    @property
    def request_capacity(self) -> int:
        """The most tokens (prompt and output) one request can hold in the KV cache."""
        return self.num_blocks * self.block_size
