"""One generation request of the simulated engine: token callbacks become SSE chunks (or one JSON body).

The chunks are built from byte templates made once per request, so that a streamed token costs a
concatenation and one write; fault injection (a malformed event, a reset, a stall) acts here too.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, Any

from pytest_llmperf.sim.engine import SimRequest
from pytest_llmperf.sim.http import HttpConnection

if TYPE_CHECKING:
    from pytest_llmperf.sim.server import SimServer

__all__ = ["LATE_THRESHOLD_S", "Generation"]

LATE_THRESHOLD_S = 0.005
_DONE = b"data: [DONE]\n\n"
_MALFORMED = b'data: {"choices": [{"delta": \n\n'


class Generation:
    """One generation request: turns token callbacks into SSE chunks (or one JSON body)."""

    def __init__(
        self,
        server: SimServer,
        conn: HttpConnection,
        *,
        chat: bool,
        prompt_tokens: int,
        max_tokens: int,
        stream: bool,
        include_usage: bool,
        finish_reason: str = "length",
    ) -> None:
        self.server = server
        self.conn = conn
        self.chat = chat
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.stream = stream
        self.include_usage = include_usage
        self.finish_reason = finish_reason
        self.rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.arrival = server.loop.time()
        # the schedule's truth on a fine clock: uvloop's loop.time() counts whole milliseconds
        self.arrival_precise = time.perf_counter()
        self.last = self.arrival
        self.done = False
        self.engine_req: SimRequest | None = None
        opts = server.opts
        faults = server.faults
        self.stall = opts.stall_after is not None and server.requests_total > opts.stall_after
        half = max_tokens // 2 + 1
        self.malformed_at = half if opts.malformed_rate and faults.random() < opts.malformed_rate else -1
        self.reset_at = half if opts.reset_rate and faults.random() < opts.reset_rate else -1
        model = json.dumps(opts.served_model_name)
        if chat:
            prefix = (
                f'data: {{"id":"{self.rid}","object":"chat.completion.chunk","created":{self.created},'
                f'"model":{model},"choices":[{{"index":0,"delta":{{'
            )
            self.role = (
                prefix + '"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n'
            ).encode()
            self.mid = (prefix + '"content":"').encode()
            self.tail = b'"},"logprobs":null,"finish_reason":null}]}\n\n'
            self.last_tail = f'"}},"logprobs":null,"finish_reason":"{finish_reason}"}}]}}\n\n'.encode()
        else:
            prefix = (
                f'data: {{"id":"{self.rid}","object":"text_completion","created":{self.created},'
                f'"model":{model},"choices":[{{"index":0,'
            )
            self.role = b""
            self.mid = (prefix + '"text":"').encode()
            self.tail = b'","logprobs":null,"finish_reason":null,"stop_reason":null}],"usage":null}\n\n'
            self.last_tail = (
                f'","logprobs":null,"finish_reason":"{finish_reason}","stop_reason":null}}],"usage":null}}\n\n'.encode()
            )
        conn.on_close = self.cancel

    def start(self) -> None:
        if self.stream:
            self.conn.start_stream()
        self.server.running_generations += 1
        if self.server.engine is not None:
            self.engine_req = self.server.engine.submit(self.prompt_tokens, self.max_tokens, self.on_token)
        else:
            self._schedule_det(1)

    # deterministic profile: token n is due at arrival + ttft + (n - 1) * itl, whatever the load
    def _schedule_det(self, n: int) -> None:
        s = self.server
        s.schedule.add(self.arrival_precise + s.det_ttft + (n - 1) * s.det_itl, self, n)

    def emit_scheduled(self, n: int, due: float) -> None:
        s = self.server
        late = time.perf_counter() - due  # when the token is written, against its schedule
        s.tokens_scheduled += 1
        if late > s.max_lateness:
            s.max_lateness = late
        if late > LATE_THRESHOLD_S:
            s.late_tokens += 1
        s.det_generation_tokens += 1
        self.on_token(n)
        if not self.done and n < self.max_tokens and not (self.stall and n >= 1):
            self._schedule_det(n + 1)

    def on_token(self, n: int) -> None:
        if self.done:
            return
        s = self.server
        now = s.loop.time()
        if n == 1:
            s.h_ttft.observe(now - self.arrival)
        else:
            s.h_itl.observe(now - self.last)
        self.last = now
        s.last_token = now
        if self.stream:
            data = (
                self.mid + s.word_bytes[n % len(s.word_bytes)] + (self.last_tail if n >= self.max_tokens else self.tail)
            )
            if n == 1 and self.role:
                data = self.role + data
            if n == self.malformed_at:
                data = _MALFORMED
            self.conn.write_chunk(data)
            if n == self.reset_at:
                self.cancel()
                self.conn.abort()
                return
        if self.stall and n >= 1:
            # stop streaming: the engine forgets the request, the connection stays open and silent
            if self.engine_req is not None:
                self.engine_req.aborted = True
            self.done = True
            s.running_generations -= 1
            return
        if n >= self.max_tokens:
            self.finish()

    def finish(self) -> None:
        s = self.server
        self.done = True
        s.running_generations -= 1
        s.requests_success[self.finish_reason] = s.requests_success.get(self.finish_reason, 0) + 1
        s.h_e2e.observe(s.loop.time() - self.arrival)
        usage = {
            "prompt_tokens": self.prompt_tokens,
            "total_tokens": self.prompt_tokens + self.max_tokens,
            "completion_tokens": self.max_tokens,
        }
        if self.stream:
            tail = b""
            if self.include_usage:
                obj = "chat.completion.chunk" if self.chat else "text_completion"
                chunk = {
                    "id": self.rid,
                    "object": obj,
                    "created": self.created,
                    "model": s.opts.served_model_name,
                    "choices": [],
                    "usage": usage,
                }
                tail = b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
            self.conn.write_chunk(tail + _DONE)
            self.conn.end_stream()
            return
        text = "".join(s.word_bytes[i % len(s.word_bytes)].decode() for i in range(1, self.max_tokens + 1))
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": self.finish_reason,
            }
            obj = "chat.completion"
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": self.finish_reason,
                "stop_reason": None,
            }
            obj = "text_completion"
        self.conn.send_json(
            200,
            {
                "id": self.rid,
                "object": obj,
                "created": self.created,
                "model": s.opts.served_model_name,
                "choices": [choice],
                "usage": usage,
            },
        )

    def cancel(self) -> None:
        """The client went away: forget the request."""
        if self.done:
            return
        self.done = True
        self.server.running_generations -= 1
        if self.engine_req is not None:
            self.engine_req.aborted = True
        # a scheduled token of the deterministic profile is dropped when it comes due (done is set)
