"""The watchdog that outlives pytest: whatever kills pytest, even SIGKILL, the server's process group is
killed (and its container removed) within seconds."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Watchdog", "start_watchdog"]

# A tiny process in its own session that holds the read end of a pipe whose write end only pytest holds.
# When pytest dies, even by SIGKILL, the pipe reads EOF and the watchdog runs the cleanup command, if any
# (a container outlives its runtime client), then kills the server's whole process group (the parent-death
# signal reaches only the direct child). b"x" disarms it.
_WATCHDOG = """
import os, signal, subprocess, sys, time
pgid, grace, cleanup = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
while True:
    try:
        data = os.read(0, 1)
        break
    except InterruptedError:
        continue
if data != b"x" and cleanup:  # a container outlives its runtime client: remove it by name
    try:
        subprocess.run(cleanup, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    except Exception:
        pass
if data != b"x":
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except OSError:
            break
        end = time.monotonic() + wait
        while time.monotonic() < end:
            try:
                os.killpg(pgid, 0)
            except OSError:
                sys.exit(0)
            time.sleep(0.05)
"""


@dataclass
class Watchdog:
    process: subprocess.Popen[bytes]
    fd: int | None

    def disarm(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.write(fd, b"x")
            os.close(fd)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5.0)


def start_watchdog(pgid: int, grace_s: float, cleanup: Sequence[str] = ()) -> Watchdog | None:
    """Arm a watchdog for process group ``pgid``; None where it cannot start (the fixture still stops it)."""
    read_fd, write_fd = os.pipe()
    try:
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _WATCHDOG, str(pgid), str(grace_s), *cleanup],
            stdin=read_fd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # not in the terminal's foreground group: Ctrl-C leaves it to us
        )
    except OSError:
        os.close(write_fd)
        return None
    finally:
        os.close(read_fd)
    return Watchdog(process, write_fd)
