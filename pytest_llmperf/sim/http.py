"""A minimal HTTP/1.1 server protocol for the simulated engine; llhttp (``httptools``) frames requests.

Why not aiohttp's server: the simulator must stream tens of thousands of SSE events per second
on one core while 1000 clients hold connections open, or it distorts the measurements it exists
to check. Writing pre-built chunk bytes straight to the transport from the engine's step costs a
few microseconds per event; a framework's response objects and coroutines cost several times that.

Requests are parsed by llhttp, the parser under uvicorn (and so under vLLM and SGLang): keep-alive,
``Content-Length`` and chunked request bodies, pipelined requests answered one at a time in order,
HTTP/1.0 clients (keep-alive only when they ask; a stream is sent as a read-to-close body, never
chunked). A malformed request gets a 400 and the connection closes. A client that does not read
its stream is bounded: past ``MAX_UNREAD_BYTES`` waiting in the transport the connection is dropped.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import httptools

__all__ = ["MAX_BODY_BYTES", "MAX_HEADER_BYTES", "MAX_UNREAD_BYTES", "HttpConnection", "Request"]

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_UNREAD_BYTES = 16 * 1024 * 1024  # a stream's bytes the client has not read; more and it is dropped
MAX_QUEUED_REQUESTS = 16  # pipelined requests parsed ahead; more and reading pauses


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


class _BadRequest(Exception):
    pass


class HttpConnection(asyncio.Protocol):
    """One client connection. ``handler`` must eventually call one of the ``send_*``/``end_stream`` methods."""

    def __init__(self, handler: Handler, on_lost: Callable[[HttpConnection], None] | None = None) -> None:
        self.handler = handler
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.keep_alive = True
        self.closed = False
        self.on_close: Callable[[], None] | None = None  # set by a streaming response to hear of aborts
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[tuple[Request, bool, bool]] = deque()  # (request, keep-alive, HTTP/1.1)
        self._url = b""
        self._headers: dict[str, str] = {}
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._chunked = True  # the current response is chunked (False for HTTP/1.0 clients)
        self._reading_paused = False
        self._write_paused = False

    # --- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._queue.clear()
        if self.on_close is not None:
            self.on_close()
            self.on_close = None
        if self.on_lost is not None:
            self.on_lost(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._refuse(str(cause) if isinstance(cause, _BadRequest) else "malformed request")
        except httptools.HttpParserUpgrade:
            self._refuse("protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._refuse(f"malformed request: {exc}")

    # --- llhttp callbacks -------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._head_bytes = 0
        self._body = []
        self._body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > MAX_BODY_BYTES:
            raise _BadRequest("request body too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self._parser
        method = parser.get_method().decode("latin-1")
        path = self._url.decode("latin-1").split("?", 1)[0]
        request = Request(method, path, self._headers, b"".join(self._body))
        self._queue.append((request, parser.should_keep_alive(), parser.get_http_version() == "1.1"))
        if self.busy and len(self._queue) >= MAX_QUEUED_REQUESTS and self.transport is not None:
            self.transport.pause_reading()
            self._reading_paused = True
        self._next_request()

    def _count_head(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > MAX_HEADER_BYTES:
            raise _BadRequest("request headers too large")

    # --- dispatch ---------------------------------------------------------------------------------

    def _next_request(self) -> None:
        while not self.busy and not self.closed and self._queue:
            request, self.keep_alive, self._chunked = self._queue.popleft()
            if self._reading_paused and self.transport is not None:
                self.transport.resume_reading()
                self._reading_paused = False
            self.busy = True
            self.handler(self, request)

    def _refuse(self, message: str) -> None:
        """A request llhttp rejected: answer 400 once the responses before it are out, then close."""
        self._queue.clear()
        if self.busy:  # a response is on its way: do not interleave; close after it
            self.keep_alive = False
            return
        self.keep_alive = False
        self._chunked = True
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
            if not self._chunked:  # an HTTP/1.0 client: the body runs to the close
                self.keep_alive = False
                self.transport.write(self._head(200, content_type, "cache-control: no-cache\r\n"))
                return
            extra = "transfer-encoding: chunked\r\ncache-control: no-cache\r\n"
            self.transport.write(self._head(200, content_type, extra))

    def write_chunk(self, data: bytes) -> None:
        """One chunk of a streaming response (an SSE message or several)."""
        transport = self.transport
        if transport is not None and not self.closed:
            transport.write(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)
            # past the high-water mark asyncio calls pause_writing; past MAX_UNREAD_BYTES the client is not reading
            if self._write_paused and transport.get_write_buffer_size() > MAX_UNREAD_BYTES:
                self.abort()

    def end_stream(self) -> None:
        if self.transport is not None and not self.closed and self._chunked:
            self.transport.write(b"0\r\n\r\n")
        self._done()

    def abort(self) -> None:
        """Drop the connection without finishing the response (a reset mid-stream)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _done(self) -> None:
        self.busy = False
        self.on_close = None
        if not self.keep_alive:
            self._queue.clear()
            if self.transport is not None:
                self.transport.close()
            return
        self._next_request()
