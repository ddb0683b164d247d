"""Inject pauses like a shared host's into everything else on this machine, for a bounded time.

On every CPU, a SCHED_FIFO process spins for ``--spin`` seconds every ``--period`` seconds, so that
normal-priority processes (a test run, the simulator, the client) lose the core as they do when the
host takes it (2 to 60 ms now and then here: docs/performance.md, "The tests"). Run a timing-sensitive
test under it to see whether the test's verdict survives such pauses:

    python benchmarks/host_pauses.py --spin 0.06 --period 0.5 --seconds 120 &
    pytest tests/test_plugin.py -k update_accepts

Needs SCHED_FIFO (root or CAP_SYS_NICE). Stops by itself after ``--seconds``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time


def spin(cpu: int, spin_s: float, period_s: float, seconds: float) -> None:
    os.sched_setaffinity(0, {cpu})
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(2))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        while time.monotonic() - t0 < spin_s:
            pass
        time.sleep(period_s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spin", type=float, default=0.06, help="length of one pause, seconds (default 0.06)")
    ap.add_argument("--period", type=float, default=0.5, help="time between pauses, seconds (default 0.5)")
    ap.add_argument("--seconds", type=float, default=60.0, help="how long to keep it up (default 60, at most 600)")
    args = ap.parse_args()
    if not 0 < args.spin <= 0.5 or args.period <= 0 or not 0 < args.seconds <= 600:
        ap.error("give 0 < --spin <= 0.5, --period > 0 and 0 < --seconds <= 600")
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(2))
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except PermissionError:
        ap.error("SCHED_FIFO is not permitted here: run as root or with CAP_SYS_NICE")
    procs = [
        multiprocessing.Process(target=spin, args=(cpu, args.spin, args.period, args.seconds))
        for cpu in sorted(os.sched_getaffinity(0))
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()


if __name__ == "__main__":
    main()
