"""A lean HTTP/1.1 client for streamed responses: the load generator's transport.

One :class:`asyncio.Protocol` per keep-alive connection. The response body is de-chunked inside
``data_received`` and handed straight to the request's :class:`BodySink`, with the time the bytes
were read. A streamed event costs one callback: no ``StreamReader``, no future, no task wake-up
and no timer per event, which is where aiohttp's client spends most of its per-event CPU (a
profile of this project's earlier aiohttp client at 1000 streams put 35% of its CPU in the
``StreamReader`` and its per-wait timeout). docs/performance.md has the before and after.

What it speaks: ``Content-Length``, ``Transfer-Encoding: chunked`` and read-to-close bodies,
keep-alive reuse, ``http`` and ``https``. It does not consult proxy variables or ``~/.netrc``
(vLLM's client does, at the cost of two thread-pool round trips per request); the load generator
connects to the server it measures. Timeouts are checked by one periodic sweep, not a timer per
read: a request fails when no byte arrived for ``stall_timeout_s`` or when it ran ``timeout_s``.

Errors, each the exception a failed request's ``error`` text starts with:

* :class:`ConnectionClosedError`: the server closed the connection before the response ended;
* :class:`ResponseProtocolError`: the bytes were not a valid HTTP/1.1 response;
* :class:`StreamTimeoutError`: the stall or total timeout fired.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import httptools

__all__ = [
    "BodySink",
    "ConnectionClosedError",
    "ConnectionPool",
    "Response",
    "ResponseProtocolError",
    "StreamTimeoutError",
]

MAX_HEAD_BYTES = 65536
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"content-encoding"})


class ConnectionClosedError(ConnectionError):
    """The server closed the connection before the response ended."""


class ResponseProtocolError(Exception):
    """The server's bytes are not a valid HTTP/1.1 response."""


class StreamTimeoutError(TimeoutError):
    """No byte arrived for the stall timeout, or the request ran past its total timeout."""


class BodySink(Protocol):
    """Receives a 200 response's body as it arrives. ``feed`` may raise: the request fails with it."""

    def feed(self, data: bytes, ts: float) -> None: ...


@dataclass
class Response:
    status: int
    reason: str
    body: bytes  # empty when the body went to a sink


class _Connection(asyncio.Protocol):
    """One connection, one request at a time. llhttp (``httptools``) frames the response; its
    ``on_body`` callback routes each piece of the body to the sink with the time of the read."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = False
        self.uses = 0  # requests sent on this connection
        self.responded = False  # a byte of the current response has arrived
        self.last_io = 0.0
        self.deadline = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Response] | None = None
        self._sink: BodySink | None = None
        self._expecting = False  # a response is due: bytes at any other time are not safe
        self._to_close = False  # the body runs until the server closes the connection
        self._head_done = False
        self._head_bytes = 0
        self._ts = 0.0
        self._reason = b""
        self._framing: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._to_sink = False

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is None or self._waiter.done():
            return
        if self._to_close and exc is None:
            self._complete(self._parser.get_status_code())
            return
        detail = f": {exc}" if exc else ""
        where = "before the response ended" if self._head_done else "before the response head"
        self._fail(ConnectionClosedError(f"the server closed the connection {where}{detail}"))

    def data_received(self, data: bytes) -> None:
        self._ts = self.last_io = time.perf_counter()
        if not self._expecting:  # bytes nobody asked for: the connection is not safe to reuse
            self.reusable = False
            self.abort()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:  # a sink's error fails the request with itself
            self._fail(exc.__context__ or exc)
            return
        except httptools.HttpParserError as exc:
            self._fail(ResponseProtocolError(f"invalid HTTP/1.1 response: {exc}"))
            return
        if not self._head_done:  # llhttp keeps no limit of its own
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._fail(ResponseProtocolError(f"response head longer than {MAX_HEAD_BYTES} bytes"))

    # llhttp callbacks (httptools calls only those defined)

    def on_message_begin(self) -> None:
        if not self._expecting:  # a second response after ours: nothing may follow an unpipelined one
            self.reusable = False
            raise ResponseProtocolError("bytes after the end of the response")
        self.responded = True

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) in (14, 16, 17) and name.lower() in _FRAMING:
            self._framing.append((name.lower(), value.lower()))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        framing = self._framing
        self._framing = []
        if status < 200:
            self._reason = b""
            return  # 100 Continue and friends: the real head follows
        self._head_done = True
        for name, value in framing:
            if name == b"content-encoding" and value.strip() != b"identity":
                raise ResponseProtocolError(f"unsupported Content-Encoding {value.decode('latin-1')!r}")
            if name == b"transfer-encoding" and [c.strip() for c in value.split(b",")] != [b"chunked"]:
                raise ResponseProtocolError(f"unsupported Transfer-Encoding {value.decode('latin-1')!r}")
        self._to_sink = status == 200 and self._sink is not None
        self.reusable = parser.should_keep_alive()
        names = {name for name, _ in framing}
        self._to_close = (
            b"transfer-encoding" not in names and b"content-length" not in names and status not in (204, 304)
        )
        if self._to_close:
            self.reusable = False

    def on_body(self, data: bytes) -> None:
        if self._to_sink:
            self._sink.feed(data, self._ts)  # type: ignore[union-attr]  # set whenever _to_sink is
        else:
            self._body.append(data)

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            return
        self.reusable = self.reusable and self._parser.should_keep_alive()
        self._complete(status)

    # the request

    def send(self, data: bytes, sink: BodySink | None, deadline: float) -> asyncio.Future[Response]:
        assert self.transport is not None
        self._waiter = self.loop.create_future()
        if self.closed:  # lost between connect and send
            self._waiter.set_exception(ConnectionClosedError("the server closed the connection before the request"))
            return self._waiter
        self.uses += 1
        self.responded = False
        self._sink = sink
        self._expecting = True
        self._to_close = False
        self._head_done = False
        self._head_bytes = 0
        self._reason = b""
        self._body = []
        self.reusable = False
        self.deadline = deadline
        self.last_io = time.perf_counter()
        self.transport.write(data)
        return self._waiter

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def expire(self, now: float, stall_s: float | None) -> None:
        """Called by the pool's sweep on a busy connection."""
        if stall_s is not None and now - self.last_io > stall_s:
            self._fail(StreamTimeoutError(f"no data from the server for {stall_s:g} s (stall timeout)"))
        elif now > self.deadline:
            self._fail(StreamTimeoutError("the request ran past its total timeout"))

    @property
    def busy(self) -> bool:
        return self._waiter is not None and not self._waiter.done()

    def _complete(self, status: int) -> None:
        self._expecting = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(status, self._reason.decode("latin-1"), b"".join(self._body)))
        self._body = []
        self._sink = None

    def _fail(self, exc: BaseException) -> None:
        self._expecting = False
        self.reusable = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self._sink = None
        self.abort()


class ConnectionPool:
    """Keep-alive connections to one server, for one run. Use as ``async with``.

    It does not bound the number of connections: the caller's concurrency limit does. A connection
    idle for ``keepalive_s`` is not reused: uvicorn, under vLLM, SGLang and TensorRT-LLM alike, closes
    idle connections after 5 s, and a request sent as that close crosses it would fail.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float,
        stall_timeout_s: float | None = None,
        server_stall_timeout_s: float | None = None,
        keepalive_s: float = 4.0,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base URL {base_url!r}: expected http://host[:port] or https://host[:port]")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if parts.scheme == "https" else None
        default_port = (parts.scheme == "https" and self.port == 443) or (parts.scheme == "http" and self.port == 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if default_port else f"{host}:{self.port}"
        self.timeout_s = timeout_s
        self.stall_timeout_s = stall_timeout_s
        # no byte on any open stream for this long: the server has stalled, and every request fails at once
        self.server_stall_timeout_s = server_stall_timeout_s
        self.stalled = ""  # why the server was found stalled; later requests fail without being sent
        self.keepalive_s = keepalive_s
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> ConnectionPool:
        self._loop = asyncio.get_running_loop()
        self._schedule_sweep()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._all):
            if conn.transport is not None:
                conn.transport.close()
        self._all.clear()
        self._idle.clear()

    def head(self, method: str, path: str, headers: dict[str, str]) -> bytes:
        """The request line and headers up to (not including) ``Content-Length``."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host_header}", "Accept: */*", "User-Agent: pytest-llmperf"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n").encode("latin-1")

    async def request(self, head: bytes, body: bytes, sink: BodySink | None = None) -> Response:
        """Send one request (``head`` from :meth:`head`) and wait for its whole response.

        A request on a reused connection that the server closed before sending a byte of the
        response is sent once more, on a new connection: the server had closed the connection
        as idle while the request was on its way (RFC 9112, 9.3.1), so it never saw it. The
        idle limit makes that rare, but a client that its host starves reads a finished response
        late, and its idea of how long a connection has been idle is short by as much.
        """
        if self.stalled:
            raise StreamTimeoutError(f"not sent: {self.stalled}")
        data = head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        deadline = time.perf_counter() + self.timeout_s
        conn = await self._acquire()
        try:
            return await self._exchange(conn, data, sink, deadline)
        except ConnectionClosedError:
            if conn.uses == 1 or conn.responded:
                raise
        return await self._exchange(await self._acquire(fresh=True), data, sink, deadline)

    async def _exchange(self, conn: _Connection, data: bytes, sink: BodySink | None, deadline: float) -> Response:
        try:
            response = await conn.send(data, sink, deadline)
        except BaseException:  # failed or cancelled mid-response: the connection is in an unknown state
            self._drop(conn)
            raise
        if conn.reusable and not conn.closed:
            conn.last_io = time.perf_counter()
            self._idle.append(conn)
        else:
            self._drop(conn)
        return response

    async def _acquire(self, *, fresh: bool = False) -> _Connection:
        oldest_usable = time.perf_counter() - self.keepalive_s
        while self._idle and not fresh:
            conn = self._idle.pop()
            if (
                not conn.closed
                and conn.last_io > oldest_usable
                and conn.transport is not None
                and not conn.transport.is_closing()
            ):
                return conn
            self._drop(conn)
        loop = self._loop or asyncio.get_running_loop()
        connect = loop.create_connection(lambda: _Connection(loop), self.host, self.port, ssl=self.ssl)
        try:
            _, conn = await asyncio.wait_for(connect, timeout=self.stall_timeout_s or self.timeout_s)
        except asyncio.TimeoutError:
            raise StreamTimeoutError(f"could not connect to {self.host_header} in time") from None
        self._all.add(conn)
        return conn

    def _drop(self, conn: _Connection) -> None:
        conn.abort()
        self._all.discard(conn)

    def _schedule_sweep(self) -> None:
        assert self._loop is not None
        shortest = min((t for t in (self.stall_timeout_s, self.server_stall_timeout_s) if t is not None), default=5.0)
        self._sweeper = self._loop.call_later(max(0.01, min(1.0, shortest / 5)), self._sweep)

    def _sweep(self) -> None:
        now = time.perf_counter()
        busy = [conn for conn in self._all if conn.busy]
        limit = self.server_stall_timeout_s
        if busy and limit is not None and now - max(conn.last_io for conn in busy) > limit:
            self.stalled = (
                f"the server sent nothing on any of its {len(busy)} open stream(s) for {limit:g} s: it has stalled "
                "(server stall timeout)"
            )
            for conn in busy:
                conn._fail(StreamTimeoutError(self.stalled))
        else:
            for conn in busy:
                conn.expire(now, self.stall_timeout_s)
        self._schedule_sweep()
