"""A minimal HTTP/1.1 server protocol for the simulated engine.

Why not aiohttp's server: the simulator must stream tens of thousands of SSE events per second
on one core while 1000 clients hold connections open, or it distorts the measurements it exists
to check. Writing pre-built chunk bytes straight to the transport from the engine's step costs a
few microseconds per event; a framework's response objects and coroutines cost several times that.

Supported: keep-alive, ``Content-Length`` request bodies (no chunked uploads), one request at a time
per connection (later bytes wait in the buffer), JSON and plain responses, and chunked streaming
responses for ``text/event-stream``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

__all__ = ["HttpConnection", "Request"]

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024


class Request:
    __slots__ = ("body", "headers", "method", "path")

    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body or b"null")


Handler = Callable[["HttpConnection", Request], None]


class HttpConnection(asyncio.Protocol):
    """One client connection. ``handler`` must eventually call one of the ``send_*``/``end_stream`` methods."""

    def __init__(self, handler: Handler, on_lost: Callable[[HttpConnection], None] | None = None) -> None:
        self.handler = handler
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy = False
        self.keep_alive = True
        self.closed = False
        self.on_close: Callable[[], None] | None = None  # set by a streaming response to hear of aborts

    # --- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.on_close is not None:
            self.on_close()
            self.on_close = None
        if self.on_lost is not None:
            self.on_lost(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._next_request()

    # --- parsing ----------------------------------------------------------------------------------

    def _next_request(self) -> None:
        while not self.busy and not self.closed:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEADER_BYTES:
                    self._bad("request headers too large")
                return
            try:
                head = bytes(self.buf[:end]).decode("latin-1")
                lines = head.split("\r\n")
                method, path, version = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
            except ValueError:
                self._bad("malformed request line or headers")
                return
            if length > MAX_BODY_BYTES:
                self._bad("request body too large")
                return
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            conn = headers.get("connection", "").lower()
            self.keep_alive = conn != "close" if version == "HTTP/1.1" else conn == "keep-alive"
            self.busy = True
            self.handler(self, Request(method, path.split("?", 1)[0], headers, body))

    def _bad(self, message: str) -> None:
        self.keep_alive = False
        self.send_json(400, {"error": {"message": message, "type": "BadRequestError", "code": 400}})

    # --- responses --------------------------------------------------------------------------------

    def _head(self, status: int, content_type: str, extra: str) -> bytes:
        reason = HTTPStatus(status).phrase
        conn = "keep-alive" if self.keep_alive else "close"
        return (
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\nconnection: {conn}\r\n{extra}\r\n".encode()
        )

    def send(self, status: int, body: bytes, content_type: str) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(self._head(status, content_type, f"content-length: {len(body)}\r\n") + body)
        self._done()

    def send_json(self, status: int, obj: Any) -> None:
        self.send(status, json.dumps(obj).encode(), "application/json")

    def start_stream(self, content_type: str = "text/event-stream") -> None:
        if self.transport is not None and not self.closed:
            extra = "transfer-encoding: chunked\r\ncache-control: no-cache\r\n"
            self.transport.write(self._head(200, content_type, extra))

    def write_chunk(self, data: bytes) -> None:
        """One chunk of a streaming response (an SSE message or several)."""
        if self.transport is not None and not self.closed:
            self.transport.write(b"%x\r\n%b\r\n" % (len(data), data))

    def end_stream(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(b"0\r\n\r\n")
        self._done()

    def abort(self) -> None:
        """Drop the connection without finishing the response (a reset mid-stream)."""
        if self.transport is not None:
            self.transport.abort()

    def _done(self) -> None:
        self.busy = False
        self.on_close = None
        if not self.keep_alive:
            if self.transport is not None:
                self.transport.close()
            return
        if self.buf:
            self._next_request()
