"""The deterministic profile's token schedule on a real event loop."""

from __future__ import annotations

import asyncio
import time

from pytest_llmperf.sim.schedule import EARLY_S, TokenSchedule


class Stream:
    def __init__(self, name: str, log: list[tuple[str, int, float, float]]) -> None:
        self.name = name
        self.log = log
        self.done = False

    def emit_scheduled(self, n: int, due: float) -> None:
        self.log.append((self.name, n, due, time.perf_counter()))


def test_tokens_are_emitted_in_due_order_never_early_and_cancelled_streams_are_skipped() -> None:
    log: list[tuple[str, int, float, float]] = []

    async def main() -> None:
        schedule = TokenSchedule(asyncio.get_running_loop())
        a, b, gone = Stream("a", log), Stream("b", log), Stream("gone", log)
        t0 = time.perf_counter()
        for n in range(1, 6):  # interleaved dues, added out of order
            schedule.add(t0 + 0.010 * n, a, n)
            schedule.add(t0 + 0.010 * n + 0.003, b, n)
            schedule.add(t0 + 0.010 * n + 0.001, gone, n)
        schedule.add(t0 + 0.002, b, 0)  # earlier than anything armed so far: the timer is re-armed for it
        gone.done = True  # the client went away
        while len(schedule):
            await asyncio.sleep(0.005)

    asyncio.run(main())
    assert [name for name, *_ in log].count("gone") == 0
    assert [(name, n) for name, n, *_ in log][:3] == [("b", 0), ("a", 1), ("b", 1)]
    dues = [due for _, _, due, _ in log]
    assert dues == sorted(dues) and len(log) == 11
    assert all(at >= due - EARLY_S for _, _, due, at in log)


def test_run_due_writes_what_fell_due_while_the_loop_was_busy() -> None:
    log: list[tuple[str, int, float, float]] = []

    async def main() -> int:
        schedule = TokenSchedule(asyncio.get_running_loop())
        s = Stream("s", log)
        t0 = time.perf_counter()
        schedule.add(t0 + 0.002, s, 1)
        schedule.add(t0 + 0.050, s, 2)
        while time.perf_counter() < t0 + 0.004:  # a callback that keeps the loop from its timers
            pass
        written = schedule.run_due()  # as the server does between two requests of a burst
        await asyncio.sleep(0.08)
        return written

    assert asyncio.run(main()) == 1
    assert [n for _, n, *_ in log] == [1, 2]
