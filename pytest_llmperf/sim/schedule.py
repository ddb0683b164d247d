"""The deterministic profile's token schedule: every due token of every stream in one heap.

Token ``n`` of a request is due at ``arrival + ttft + (n - 1) * itl``, whatever the load. One event-loop
timer, armed for the earliest due token, emits everything due when it fires; the server also calls
:meth:`TokenSchedule.run_due` between the requests of an arrival burst, so that tokens already due
are written between two request parses rather than after the whole burst (libuv handles every
readable socket of a poll before it runs timers, and a burst of 1000 requests is ~100 ms of work).

Cheaper per token than a loop timer per token (a tuple on a C heap instead of a timer handle), and a
cancelled stream is dropped lazily: its entries are skipped when they come due.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import Callable
from time import perf_counter
from typing import Protocol

__all__ = ["ScheduledStream", "TokenSchedule"]

# a token this close to its due time is written now rather than after one more timer wake-up: the
# loop's timers count whole milliseconds, so waiting for less would wake up early and spin
EARLY_S = 0.0005


class ScheduledStream(Protocol):
    done: bool

    def emit_scheduled(self, n: int, due: float) -> None: ...


class TokenSchedule:
    """Emits each scheduled token at its due time (``time.perf_counter`` seconds)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, clock: Callable[[], float] = perf_counter) -> None:
        self.loop = loop
        self.clock = clock
        self.heap: list[tuple[float, int, ScheduledStream, int]] = []
        self.seq = 0  # ties on the due time go in the order they were scheduled
        self.timer: asyncio.TimerHandle | None = None
        self.armed_for = math.inf
        self.emitting = False

    def __len__(self) -> int:
        return len(self.heap)

    def add(self, due: float, stream: ScheduledStream, n: int) -> None:
        heapq.heappush(self.heap, (due, self.seq, stream, n))
        self.seq += 1
        if not self.emitting and due < self.armed_for:
            self._arm(due)

    def run_due(self) -> int:
        """Emit every token due by now; returns how many were written."""
        if self.emitting or not self.heap:
            return 0
        heap, clock, pop = self.heap, self.clock, heapq.heappop
        written = 0
        self.emitting = True
        try:
            while heap and heap[0][0] <= clock() + EARLY_S:
                due, _, stream, n = pop(heap)
                if not stream.done:
                    stream.emit_scheduled(n, due)
                    written += 1
        finally:
            self.emitting = False
        if heap and heap[0][0] < self.armed_for:
            self._arm(heap[0][0])
        return written

    def _arm(self, due: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.armed_for = due
        self.timer = self.loop.call_later(max(0.0, due - self.clock()), self._fire)

    def _fire(self) -> None:
        self.timer, self.armed_for = None, math.inf
        self.run_due()
        if self.heap and self.timer is None:
            self._arm(self.heap[0][0])
