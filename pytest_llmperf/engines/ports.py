"""Who holds a TCP port: the readiness check answers only for the process the launcher started.

A port that another server holds (a leftover engine of a killed session, a second suite) must never
be benchmarked in place of the launched engine. Linux lists every listening socket in
``/proc/net/tcp{,6}`` with its inode, and every process's sockets in ``/proc/<pid>/fd``, so the
launcher can tell "the launched process group listens here" from "someone else does". Where
``/proc`` is not readable the answer is :data:`UNKNOWN` and only the pre-launch check applies.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterable
from typing import Literal

import httpx

__all__ = ["UNKNOWN", "Owner", "describe_holder", "listening_inodes", "port_owner", "port_taken", "socket_pids"]

Owner = Literal["ours", "foreign", "none", "unknown"]
UNKNOWN: Owner = "unknown"
_LISTEN = "0A"


def listening_inodes(port: int) -> set[int] | None:
    """Inodes of the sockets listening on ``port`` (any address), or ``None`` without /proc/net."""
    inodes: set[int] = set()
    readable = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(int(fields[9]))
    return inodes if readable else None


def _held(inodes: set[int], pids: Iterable[int]) -> dict[int, set[int]]:
    """For each of ``pids`` holding one of the socket ``inodes``: which ones."""
    wanted = {f"socket:[{i}]": i for i in inodes}
    held: dict[int, set[int]] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                inode = wanted.get(os.readlink(f"/proc/{pid}/fd/{fd}"))
                if inode is not None:
                    held.setdefault(pid, set()).add(inode)
    return held


def socket_pids(inodes: set[int], pids: Iterable[int] | None = None) -> list[int]:
    """The processes (of ``pids``, or all readable ones) holding one of the socket ``inodes``."""
    candidates = pids if pids is not None else (int(p) for p in os.listdir("/proc") if p.isdigit())
    return sorted(_held(inodes, candidates))


def port_owner(port: int, group: Iterable[int]) -> Owner:
    """``ours`` when processes of ``group`` hold every socket listening on ``port``; ``foreign`` when any
    listener is another's (with SO_REUSEPORT two servers can share a port and split its requests);
    ``none`` when nobody listens; ``unknown`` without /proc."""
    inodes = listening_inodes(port)
    if inodes is None:
        return UNKNOWN
    if not inodes:
        return "none"
    ours = set().union(*_held(inodes, group).values())
    return "ours" if ours >= inodes else "foreign"


def port_taken(host: str, port: int) -> bool:
    """Whether something accepts connections on ``host:port`` or listens on ``port``."""
    inodes = listening_inodes(port)
    if inodes:
        return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    except OSError:
        return "?"


def describe_holder(host: str, port: int) -> str:
    """What holds ``port``, for an error message: the process(es) and what answers ``GET /v1/models``."""
    parts = []
    inodes = listening_inodes(port)
    if inodes:
        pids = socket_pids(inodes)
        if pids:
            parts.append("held by " + ", ".join(f"pid {p} ({_cmdline(p)})" for p in pids[:3]))
    try:
        r = httpx.get(f"http://{host}:{port}/v1/models", timeout=2.0, trust_env=False)
        parts.append(f"GET /v1/models answers HTTP {r.status_code}: {r.text[:200]}")
    except httpx.HTTPError as exc:
        parts.append(f"no HTTP answer ({type(exc).__name__})")
    return "; ".join(parts)
