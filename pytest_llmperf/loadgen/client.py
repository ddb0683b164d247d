"""The streaming request functions: one OpenAI-compatible request, timed as ``vllm bench serve`` does.

This is the hot path of the load generator. Per SSE message it does: one ``find`` for the
message boundary, one ``perf_counter()``, and a JSON parse only of messages that can carry a
token or the usage block. Nothing is logged or allocated per event beyond the ITL float.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from typing import Any

import aiohttp

from pytest_llmperf.loadgen.datasets import SampleRequest
from pytest_llmperf.metrics import RequestRecord

__all__ = ["auth_headers", "build_payload", "send_streaming_request"]

_DATA = b"data:"
_DONE = b"[DONE]"


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


async def send_streaming_request(
    session: aiohttp.ClientSession,
    url: str,
    payload: bytes,
    headers: dict[str, str],
    record: RequestRecord,
    *,
    chat: bool,
) -> RequestRecord:
    """Send one streaming request and fill ``record`` with its timings.

    Any failure (non-200, malformed SSE, dropped connection, an ``error`` message mid-stream)
    becomes ``record.success = False`` with ``record.error`` set; nothing is raised.
    """
    perf = time.perf_counter
    loads = json.loads
    text_parts: list[str] = []
    itl = record.itl
    st = perf()
    record.start_time = st
    most_recent = st
    got_token = False
    try:
        async with session.post(url, data=payload, headers=headers) as resp:
            if resp.status != 200:
                body = (await resp.read())[:500].decode(errors="replace")
                record.error = f"HTTP {resp.status} {resp.reason}: {body}"
                return record
            buf = b""
            async for chunk in resp.content.iter_any():
                buf += chunk
                while True:
                    end = buf.find(b"\n\n")
                    if end < 0:
                        break
                    msg = buf[:end].strip()
                    buf = buf[end + 2 :]
                    if not msg or msg[0] == 58:  # b":" comment / ping
                        continue
                    ts = perf()
                    if not msg.startswith(_DATA):
                        raise ValueError(f"malformed SSE message (no 'data:' field): {msg[:200]!r}")
                    data_bytes = msg[5:].lstrip()
                    if data_bytes == _DONE:
                        continue
                    data = loads(data_bytes)
                    choices = data.get("choices")
                    if choices:
                        if got_token:
                            itl.append(ts - most_recent)
                        else:
                            got_token = True
                            record.ttft = ts - st
                        most_recent = ts
                        c0 = choices[0]
                        piece = c0["delta"].get("content") if chat else c0.get("text")
                        if piece:
                            text_parts.append(piece)
                    elif "error" in data:
                        record.error = f"server error in stream: {json.dumps(data['error'])[:500]}"
                        return record
                    usage = data.get("usage")
                    if usage:
                        record.output_tokens = usage.get("completion_tokens") or 0
                        prompt_tokens = usage.get("prompt_tokens")
                        if prompt_tokens:
                            record.prompt_len = prompt_tokens
            if buf.strip():
                tail = buf.strip()
                if tail.startswith(_DATA) and tail[5:].strip() != _DONE:
                    raise ValueError(f"stream ended inside an SSE message: {tail[:200]!r}")
        if not got_token:
            record.error = "Never received a valid chunk to calculate TTFT."
            return record
        record.latency = most_recent - st
        record.generated_text = "".join(text_parts)
        record.success = True
    except Exception as exc:  # every failure is a failed request, never a crashed run
        record.success = False
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        record.error = detail or type(exc).__name__
    return record
