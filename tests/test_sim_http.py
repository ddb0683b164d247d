"""The simulated engine's HTTP/1.1 server protocol over real loopback sockets, with exact request bytes.

Each framing defect the hand parser had (issue #19) is one test here: header lines without a colon,
chunked request bodies, HTTP/1.0 clients, clients that never read their stream.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest

from pytest_llmperf.sim import http as sim_http
from pytest_llmperf.sim.http import HttpConnection, Request

Client = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def echo_or_stream(conn: HttpConnection, req: Request) -> None:
    """``/stream?n``: n SSE chunks; anything else: the method, path and body as JSON."""
    if req.path == "/stream":
        conn.start_stream()
        for i in range(int(req.headers.get("x-chunks", "3"))):
            conn.write_chunk(b"data: %d\n\n" % i)
        conn.end_stream()
    else:
        conn.send_json(200, {"method": req.method, "path": req.path, "body": req.body.decode()})


def run(client: Client, handler: Callable[[HttpConnection, Request], None] = echo_or_stream) -> list[HttpConnection]:
    conns: list[HttpConnection] = []

    def factory() -> HttpConnection:
        conn = HttpConnection(handler)
        conns.append(conn)
        return conn

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await asyncio.wait_for(client(reader, writer), 20)
        finally:
            writer.close()
            server.close()

    asyncio.run(main())
    return conns


async def read_response(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += data[:-2]
    else:
        body = await reader.read()
    return head[0], headers, body


def test_a_header_line_without_a_colon_is_a_400_and_the_connection_closes() -> None:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert status == "HTTP/1.1 400 Bad Request"
        assert headers["connection"] == "close"
        assert json.loads(body)["error"]["type"] == "BadRequestError"
        assert await reader.read() == b""  # closed

    run(client)


def test_a_chunked_request_body_is_the_body_not_the_next_request() -> None:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"POST /v1/completions HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'5\r\n{"a":\r\n2\r\n1}\r\n0\r\n\r\n'
            b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        first = json.loads((await read_response(reader))[2])
        second = json.loads((await read_response(reader))[2])
        assert first == {"method": "POST", "path": "/v1/completions", "body": '{"a":1}'}
        assert second == {"method": "GET", "path": "/after", "body": ""}

    run(client)


def test_pipelined_requests_are_answered_one_at_a_time_in_order() -> None:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"".join(b"GET /r%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(5)))
        paths = [json.loads((await read_response(reader))[2])["path"] for _ in range(5)]
        assert paths == [f"/r{i}" for i in range(5)]

    run(client)


def test_an_http_1_0_client_gets_a_stream_without_chunked_framing_ended_by_the_close() -> None:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"POST /stream HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert status.startswith("HTTP/1.1 200")
        assert "transfer-encoding" not in headers and headers["connection"] == "close"
        assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"

    run(client)


def test_bad_content_lengths_are_refused() -> None:
    for value in (b"-3", b"1_0", b"0x3"):

        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, value: bytes = value) -> None:
            writer.write(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: " + value + b"\r\n\r\nabc")
            status, _, body = await read_response(reader)
            assert status == "HTTP/1.1 400 Bad Request", value
            assert b"Content-Length" in body

        run(client)


def test_a_client_that_never_reads_its_stream_is_dropped_not_buffered_without_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sim_http, "MAX_UNREAD_BYTES", 4 * 1024 * 1024)
    piece = b"data: " + b"x" * (256 * 1024) + b"\n\n"
    written = 0

    def flood(conn: HttpConnection, req: Request) -> None:
        nonlocal written
        conn.start_stream()
        for _ in range(200):  # 50 MiB if nothing stopped it
            if conn.closed:
                return
            conn.write_chunk(piece)
            written += len(piece)
        conn.end_stream()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"POST /flood HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        await asyncio.sleep(0.3)  # never read

    conns = run(client, flood)
    assert conns[0].closed
    assert written < 8 * 1024 * 1024
