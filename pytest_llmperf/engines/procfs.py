"""The live processes as /proc shows them: what ``group_members`` and the container's ``descendants`` read."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["ProcStat", "live_processes"]


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    pgid: int


def live_processes() -> Iterator[ProcStat]:
    """Every process that is not a zombie, with its parent and process group (``/proc/PID/stat``)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...
        if len(fields) > 2 and fields[0] != b"Z":
            yield ProcStat(int(entry), int(fields[1]), int(fields[2]))
