"""The simulated engine as a process: its command line, signals, children, priority and GC tuning.

``python -m pytest_llmperf.sim serve MODEL [vLLM-style flags]`` (or ``llmperf sim``) runs :func:`main`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import subprocess
import sys

from pytest_llmperf.sim.knobs import unread_flags
from pytest_llmperf.sim.options import SimServerOptions, parse_args
from pytest_llmperf.sim.server import SimServer

__all__ = ["main", "serve"]


async def serve(opts: SimServerOptions) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    children: list[subprocess.Popen[bytes]] = []
    for _ in range(opts.spawn_children):
        children.append(subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(1)"]))
    if children:
        print(f"llmperf sim: started child processes {[c.pid for c in children]}", flush=True)
    try:
        if opts.startup_delay_s:
            print(f"llmperf sim: start-up delay of {opts.startup_delay_s} s", flush=True)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), opts.startup_delay_s)
        server = SimServer(opts, loop)
        if server.engine is not None:
            server.engine.start()
        # keep the cyclic garbage collector off the token path: long-lived objects are frozen, and young
        # collections (which walk every live Generation) run rarely; per-request objects are acyclic
        gc.collect()
        gc.freeze()
        gc.set_threshold(100_000, 50, 1000)
        srv = await loop.create_server(server.connection, opts.host, opts.port, reuse_address=True, backlog=4096)
        print(
            f"llmperf sim: pid {os.getpid()} pgid {os.getpgrp()} serving {opts.served_model_name!r} "
            f"on http://{opts.host}:{opts.port} (profile {opts.profile}, slowdown {opts.slowdown:g}"
            + (f", SCHED_FIFO priority {opts.realtime_priority})" if opts.realtime_priority else ")"),
            flush=True,
        )
        if server.engine is not None and server.engine.profile.calibration:
            print(f"llmperf sim: simulated timing, {server.engine.profile.calibration}", flush=True)
        for note in server.profile_notes:
            print(f"llmperf sim: {note}", flush=True)
        await stop.wait()
        print("llmperf sim: shutting down", flush=True)
        srv.close()
        if server.engine is not None:
            await server.engine.stop()
    finally:
        _reap(children)


def _reap(children: list[subprocess.Popen[bytes]], grace_s: float = 5.0) -> None:
    """An engine's own children die with it: SIGTERM, a grace period, then SIGKILL."""
    for child in children:
        child.terminate()
    for child in children:
        try:
            child.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def main(argv: list[str] | None = None) -> int:
    opts, unknown = parse_args(argv)
    if opts.calibrated:
        unknown = unread_flags(unknown)  # the calibrated profile reads the engine's knobs from them
    if unknown:
        print(f"llmperf sim: ignoring flags it does not model: {' '.join(unknown)}", flush=True)
    if opts.fail_at_startup is not None:
        print(opts.fail_at_startup, file=sys.stderr, flush=True)
        return opts.fail_exit_code
    if opts.realtime_priority:
        try:
            if not hasattr(os, "sched_setscheduler"):
                raise OSError(0, "not available on this platform")
            # children (--spawn-children) start at normal priority
            os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(opts.realtime_priority))
        except OSError as exc:
            print(
                f"llmperf sim: --realtime-priority {opts.realtime_priority}: cannot switch to SCHED_FIFO "
                f"({exc.strerror}); it needs Linux and root or CAP_SYS_NICE. Drop the option to serve at "
                "normal priority.",
                file=sys.stderr,
                flush=True,
            )
            return 2
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(opts))
    else:
        uvloop.run(serve(opts))
    return 0
