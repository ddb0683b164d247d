"""The streaming request functions: one OpenAI-compatible request, timed as ``vllm bench serve`` does.

This is the hot path of the load generator. The transport (``http1``) hands each read of the body
to the request's ``_SSEStream`` inside the connection callback, with the time of the read; per SSE
message the stream does one ``find`` for the message boundary and one JSON parse. Nothing is
logged or allocated per event beyond the ITL float and the text piece.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import orjson

from pytest_llmperf.loadgen.datasets import SampleRequest
from pytest_llmperf.loadgen.http1 import ConnectionPool
from pytest_llmperf.metrics import RequestRecord

__all__ = ["MalformedStreamError", "ServerStreamError", "auth_headers", "build_payload", "send_streaming_request"]

_DATA = b"data:"
_DONE = b"[DONE]"
_loads = orjson.loads  # 2.5x faster than json.loads per SSE event (docs/performance.md)


def auth_headers(*, chat: bool) -> dict[str, str]:
    headers = {"Content-Type": "application/json"} if chat else {}
    key = os.environ.get("OPENAI_API_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def build_payload(
    backend: str, model: str, req: SampleRequest, *, ignore_eos: bool, extra_body: dict[str, Any] | None = None
) -> bytes:
    """The request body of vLLM's ``openai`` / ``openai-chat`` backends."""
    body: dict[str, Any]
    if backend == "openai-chat":
        body = {
            "model": model,
            "messages": [{"role": "user", "content": [{"type": "text", "text": req.prompt}]}],
            "max_completion_tokens": req.expected_output_len,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    elif backend == "openai":
        body = {
            "model": model,
            "prompt": req.prompt,
            "repetition_penalty": 1.0,
            "max_tokens": req.expected_output_len,
            "logprobs": None,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    else:
        raise ValueError(f"unknown backend {backend!r}: expected 'openai-chat' or 'openai'")
    if ignore_eos:
        body["ignore_eos"] = True
    if extra_body:
        body.update(extra_body)
    return json.dumps(body).encode()


class _SSEStream:
    """The body sink of one streamed request: splits SSE messages and times the token-bearing ones.

    Runs inside the connection's ``data_received``; ``ts`` is when the bytes were read.
    """

    __slots__ = ("buf", "chat", "got_token", "itl", "most_recent", "record", "st", "text_parts")

    def __init__(self, record: RequestRecord, chat: bool) -> None:
        self.record = record
        self.chat = chat
        self.itl = record.itl
        self.text_parts: list[str] = []
        self.buf = b""
        self.got_token = False
        self.st = 0.0
        self.most_recent = 0.0

    def feed(self, data: bytes, ts: float) -> None:
        buf = self.buf + data if self.buf else data
        if b"\r" in buf:  # CRLF line ends (sse-starlette's default) are as valid SSE as LF
            buf = buf.replace(b"\r\n", b"\n")
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            msg = buf[start:end].strip()
            start = end + 2
            if not msg or msg[0] == 58:  # b":" comment / ping
                continue
            if not msg.startswith(_DATA):
                raise MalformedStreamError(
                    f"malformed SSE message in the server's stream (no 'data:' field): {msg[:200]!r}"
                )
            data_bytes = msg[5:].lstrip()
            if data_bytes == _DONE:
                continue
            try:
                message = _loads(data_bytes)
            except ValueError as exc:  # no cost on the hot path unless raised
                raise MalformedStreamError(
                    f"malformed SSE event in the server's stream ({type(exc).__name__}: {exc}): {data_bytes[:200]!r}"
                ) from None
            choices = message.get("choices")
            if choices:
                if self.got_token:
                    self.itl.append(ts - self.most_recent)
                else:
                    self.got_token = True
                    self.record.ttft = ts - self.st
                self.most_recent = ts
                c0 = choices[0]
                piece = c0["delta"].get("content") if self.chat else c0.get("text")
                if piece:
                    self.text_parts.append(piece)
            elif "error" in message:
                raise ServerStreamError(f"server error in stream: {json.dumps(message['error'])[:500]}")
            usage = message.get("usage")
            if usage:
                record = self.record
                record.output_tokens = usage.get("completion_tokens") or 0
                prompt_tokens = usage.get("prompt_tokens")
                if prompt_tokens:
                    record.prompt_len = prompt_tokens
        self.buf = buf[start:] if start else buf

    def finish(self) -> None:
        tail = self.buf.strip()
        if tail.startswith(_DATA) and tail[5:].strip() != _DONE:
            raise MalformedStreamError(f"the server's stream ended inside an SSE message: {tail[:200]!r}")


class ServerStreamError(Exception):
    """The server sent an ``error`` message in the middle of a stream."""


class MalformedStreamError(ValueError):
    """The server's SSE stream is not what an OpenAI-compatible server sends (not JSON, no ``data:``)."""


async def send_streaming_request(
    pool: ConnectionPool,
    head: bytes,
    payload: bytes,
    record: RequestRecord,
    *,
    chat: bool,
) -> RequestRecord:
    """Send one streaming request and fill ``record`` with its timings.

    ``head`` is the request head from ``pool.head(...)``. Any failure (non-200, malformed SSE,
    dropped connection, an ``error`` message mid-stream, a timeout) becomes ``record.success =
    False`` with ``record.error`` set; nothing is raised.
    """
    sink = _SSEStream(record, chat)
    st = time.perf_counter()
    record.start_time = st
    sink.st = st
    sink.most_recent = st
    try:
        resp = await pool.request(head, payload, sink)
        if resp.status != 200:
            body = resp.body[:500].decode(errors="replace")
            record.error = f"HTTP {resp.status} {resp.reason}: {body}"
            return record
        sink.finish()
        if not sink.got_token:
            record.error = "Never received a valid chunk to calculate TTFT."
            return record
        record.latency = sink.most_recent - st
        record.generated_text = "".join(sink.text_parts)
        record.success = True
    except Exception as exc:  # every failure is a failed request, never a crashed run
        record.success = False
        record.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return record
