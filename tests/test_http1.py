"""The lean HTTP/1.1 transport over real loopback sockets, against servers that write exact bytes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import pytest

from pytest_llmperf.loadgen.http1 import (
    ConnectionClosedError,
    ConnectionPool,
    Response,
    ResponseProtocolError,
    StreamTimeoutError,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Collect:
    """A body sink that keeps what it was fed."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.times: list[float] = []

    def feed(self, data: bytes, ts: float) -> None:
        self.pieces.append(data)
        self.times.append(ts)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


def serve(handler: Handler, test: Callable[[ConnectionPool], Awaitable[None]], **pool_kw: float) -> None:
    async def main() -> None:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with ConnectionPool(
                f"http://127.0.0.1:{port}", timeout_s=pool_kw.pop("timeout_s", 30), **pool_kw
            ) as pool:
                await asyncio.wait_for(test(pool), 20)
        finally:
            server.close()

    asyncio.run(main())


def writes(*parts: bytes, pause: float = 0.0, close: bool = False) -> Handler:
    """A server that answers every request on a connection with ``parts``, written one by one."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await read_request(reader)
                for part in parts:
                    writer.write(part)
                    await writer.drain()
                    if pause:
                        await asyncio.sleep(pause)
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return handler


HEAD_CHUNKED = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def test_chunked_body_reaches_the_sink_one_chunk_a_read_and_the_connection_is_reused() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await writes(HEAD_CHUNKED, chunk(b"data: a\n\n"), chunk(b"data: b\n\n"), b"0\r\n\r\n", pause=0.02)(
            reader, writer
        )

    async def test(pool: ConnectionPool) -> None:
        head = pool.head("POST", "/v1/chat/completions", {})
        for _ in range(3):
            sink = Collect()
            resp = await pool.request(head, b"{}", sink)
            assert (resp.status, resp.reason, resp.body) == (200, "OK", b"")
            assert sink.pieces == [b"data: a\n\n", b"data: b\n\n"]
            assert sink.times[1] - sink.times[0] >= 0.015  # the time of each read, not of the end

    serve(handler, test)
    assert connections == 1


@pytest.mark.parametrize("step", [1, 3, 7])
def test_chunked_framing_split_anywhere_decodes_the_same(step: int) -> None:
    body = chunk(b"data: " + b"x" * 40 + b"\n\n") + chunk(b"data: [DONE]\n\n") + b"0\r\nx-trailer: 1\r\n\r\n"
    raw = HEAD_CHUNKED + body
    parts = [raw[i : i + step] for i in range(0, len(raw), step)]

    async def test(pool: ConnectionPool) -> None:
        sink = Collect()
        await pool.request(pool.head("POST", "/", {}), b"", sink)
        assert b"".join(sink.pieces) == b"data: " + b"x" * 40 + b"\n\ndata: [DONE]\n\n"

    serve(writes(*parts, pause=0.001), test)


def test_content_length_and_read_to_close_bodies() -> None:
    async def length(pool: ConnectionPool) -> None:
        resp = await pool.request(pool.head("GET", "/health", {}), b"")
        assert (resp.status, resp.body) == (500, b"oops!")

    serve(writes(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\noo", b"ps!"), length)

    async def to_close(pool: ConnectionPool) -> None:
        sink = Collect()
        resp = await pool.request(pool.head("POST", "/", {}), b"", sink)
        assert resp.status == 200
        assert b"".join(sink.pieces) == b"data: a\n\ndata: b\n\n"

    serve(writes(b"HTTP/1.1 200 OK\r\n\r\ndata: a\n\n", b"data: b\n\n", close=True), to_close)


def test_interim_100_continue_is_skipped() -> None:
    async def test(pool: ConnectionPool) -> None:
        resp = await pool.request(pool.head("GET", "/", {}), b"")
        assert (resp.status, resp.body) == (200, b"ok")

    serve(writes(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"), test)


@pytest.mark.parametrize(
    ("raw", "error", "text"),
    [
        (HEAD_CHUNKED + chunk(b"data: a\n\n"), ConnectionClosedError, "before the response ended"),
        (b"HTTP/1.1 200 O", ConnectionClosedError, "before the response head"),
        (HEAD_CHUNKED + b"zz\r\ndata\r\n", ResponseProtocolError, "Invalid character in chunk size"),
        (HEAD_CHUNKED + b"3\r\nabcd\r\n", ResponseProtocolError, "Expected LF after chunk data"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", ResponseProtocolError, "invalid HTTP/1.1 response"),
        (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n\r\n", ResponseProtocolError, "Content-Encoding"),
        # the framing defects the hand parser had (issue #19): each one must fail, not truncate or mis-read
        (b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\nabc", ResponseProtocolError, "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1_0\r\n\r\n0123456789", ResponseProtocolError, "Content-Length"),
        (HEAD_CHUNKED + b"0x3\r\nabc\r\n0\r\n\r\n", ResponseProtocolError, "chunk size"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            ResponseProtocolError,
            "Content-Length can't be present with Transfer-Encoding",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            ResponseProtocolError,
            "unsupported Transfer-Encoding 'gzip, chunked'",
        ),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", ResponseProtocolError, "invalid HTTP/1.1 response"),
    ],
    ids=[
        "closed-mid-body",
        "closed-mid-head",
        "bad-size",
        "no-crlf",
        "not-http",
        "gzip",
        "negative-length",
        "underscore-length",
        "hex-prefixed-chunk-size",
        "chunked-and-length",
        "gzip-chunked",
        "header-without-colon",
    ],
)
def test_broken_responses_raise_the_documented_error(raw: bytes, error: type[Exception], text: str) -> None:
    async def test(pool: ConnectionPool) -> None:
        with pytest.raises(error, match=text):
            await pool.request(pool.head("POST", "/", {}), b"", Collect())

    serve(writes(raw, close=True), test)


def test_a_sink_error_fails_the_request_and_drops_the_connection() -> None:
    class Refuse:
        def feed(self, data: bytes, ts: float) -> None:
            raise ValueError("malformed SSE message")

    async def test(pool: ConnectionPool) -> None:
        with pytest.raises(ValueError, match="malformed SSE"):
            await pool.request(pool.head("POST", "/", {}), b"", Refuse())
        resp = await pool.request(pool.head("POST", "/", {}), b"", Collect())  # a fresh connection works
        assert resp.status == 200

    serve(writes(HEAD_CHUNKED, chunk(b"data: a\n\n"), b"0\r\n\r\n"), test)


def test_stall_timeout_fires_when_no_byte_arrives() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(HEAD_CHUNKED + chunk(b"data: a\n\n"))
        await asyncio.sleep(5)
        writer.close()

    async def test(pool: ConnectionPool) -> None:
        t0 = time.perf_counter()
        with pytest.raises(StreamTimeoutError, match="stall timeout"):
            await pool.request(pool.head("POST", "/", {}), b"", Collect())
        assert 0.3 <= time.perf_counter() - t0 < 1.0

    serve(silent, test, stall_timeout_s=0.3)


def test_total_timeout_fires_on_a_slow_but_moving_stream() -> None:
    async def test(pool: ConnectionPool) -> None:
        with pytest.raises(StreamTimeoutError, match="total timeout"):
            await pool.request(pool.head("POST", "/", {}), b"", Collect())

    parts = [HEAD_CHUNKED] + [chunk(b"data: a\n\n")] * 40
    serve(writes(*parts, pause=0.05), test, timeout_s=0.5)


def test_the_request_bytes_name_host_path_headers_and_length() -> None:
    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        writer.close()

    async def test(pool: ConnectionPool) -> None:
        head = pool.head("POST", "/v1/completions", {"Authorization": "Bearer k", "Content-Type": "application/json"})
        resp = await pool.request(head, b'{"a": 1}')
        assert resp == Response(204, "No Content", b"")

    serve(record, test)
    lines = seen[0].split(b"\r\n")
    assert lines[0] == b"POST /v1/completions HTTP/1.1"
    assert lines[1].startswith(b"Host: 127.0.0.1:")
    assert b"Authorization: Bearer k" in lines and b"Content-Length: 8" in lines
    assert seen[0].endswith(b'\r\n\r\n{"a": 1}')


def test_a_bad_base_url_is_refused_with_the_expected_form() -> None:
    with pytest.raises(ValueError, match="expected http://host"):
        ConnectionPool("127.0.0.1:8000", timeout_s=1)


def test_an_error_message_mid_stream_fails_the_request_with_the_servers_words() -> None:
    from pytest_llmperf.loadgen.client import send_streaming_request
    from pytest_llmperf.metrics import RequestRecord

    token = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
    error = b'data: {"error":{"message":"KV cache exhausted","code":500}}\n\n'
    record = RequestRecord()

    async def test(pool: ConnectionPool) -> None:
        await send_streaming_request(pool, pool.head("POST", "/", {}), b"{}", record, chat=True)

    serve(writes(HEAD_CHUNKED, chunk(token), chunk(error), b"0\r\n\r\n"), test)
    assert not record.success
    assert record.error.startswith("ServerStreamError: server error in stream: ")
    assert "KV cache exhausted" in record.error
    assert record.ttft > 0  # the token before the error was timed


def test_a_connection_idle_past_keepalive_is_not_reused_and_a_stale_one_is_replaced() -> None:
    # the server answers only the first request of a connection and closes it on the second unanswered,
    # as uvicorn's idle close crossing a new request looks from the client
    connections = 0

    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await read_request(reader)
        writer.close()

    async def test(pool: ConnectionPool) -> None:
        head = pool.head("GET", "/", {})
        assert (await pool.request(head, b"")).status == 200
        await asyncio.sleep(0.3)  # past keepalive_s: not reused, a new connection
        assert (await pool.request(head, b"")).status == 200
        assert connections == 2
        # within keepalive_s: reused, closed by the server before a byte of the response, sent again
        assert (await pool.request(head, b"")).status == 200
        assert connections == 3

    serve(once, test, keepalive_s=0.2)


def test_a_request_is_not_sent_again_once_its_response_began() -> None:
    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")  # then closes: the response had begun
        await writer.drain()
        writer.close()

    async def test(pool: ConnectionPool) -> None:
        head = pool.head("GET", "/", {})
        assert (await pool.request(head, b"")).status == 200
        with pytest.raises(ConnectionClosedError, match="before the response head"):
            await pool.request(head, b"")  # part of a head had come: not sent again

    serve(half, test)


@pytest.mark.parametrize("sep", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_sse_messages_with_lf_or_crlf_line_ends_are_timed_alike(sep: bytes) -> None:
    from pytest_llmperf.loadgen.client import send_streaming_request
    from pytest_llmperf.metrics import RequestRecord

    def message(text: str) -> bytes:
        return b'data: {"choices":[{"index":0,"delta":{"content":"%s"}}]}' % text.encode() + sep + sep

    usage = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":3}}' + sep + sep
    done = b"data: [DONE]" + sep + sep
    # the last message split inside its separator, across two chunks
    parts = [message("a"), message("b"), message("c")[:-1], message("c")[-1:] + usage + done]
    record = RequestRecord()

    async def test(pool: ConnectionPool) -> None:
        await send_streaming_request(pool, pool.head("POST", "/", {}), b"{}", record, chat=True)

    serve(writes(HEAD_CHUNKED, *(chunk(p) for p in parts), b"0\r\n\r\n", pause=0.01), test)
    assert record.success, record.error
    assert (record.generated_text, record.output_tokens, record.prompt_len) == ("abc", 3, 3)
    assert len(record.itl) == 2 and all(x >= 0.005 for x in record.itl)


def test_bytes_after_a_complete_response_make_the_connection_unusable() -> None:
    """Nothing may follow a response we did not pipeline: the connection is dropped, not reused."""
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await writes(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n")(reader, writer)

    async def test(pool: ConnectionPool) -> None:
        for _ in range(2):
            resp = await pool.request(pool.head("GET", "/", {}), b"")
            assert (resp.status, resp.body) == (200, b"ok")
            await asyncio.sleep(0.05)

    serve(handler, test)
    assert connections == 2


def test_a_large_chunk_in_many_reads_arrives_whole() -> None:
    """A 4 MiB chunk written in 64 KiB pieces: the body is the chunk's bytes, in order, nothing more."""
    data = bytes(range(256)) * (4 * 4096)
    raw = HEAD_CHUNKED + chunk(data) + b"0\r\n\r\n"
    parts = [raw[i : i + 65536] for i in range(0, len(raw), 65536)]

    async def test(pool: ConnectionPool) -> None:
        sink = Collect()
        await pool.request(pool.head("POST", "/", {}), b"", sink)
        assert b"".join(sink.pieces) == data

    serve(writes(*parts), test)
