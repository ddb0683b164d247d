"""The simulated engine's HTTP server: the OpenAI API as vLLM serves it.

Endpoints: ``/v1/chat/completions`` and ``/v1/completions`` (streaming and not), ``/v1/models``,
``/health``, ``/version``, ``/tokenize``, ``/detokenize`` and ``/metrics`` (Prometheus text with
vLLM's names, histograms included). Tokens are written to the connection straight from the
engine's step (or, in the deterministic profile, from a timer at each token's scheduled time).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

from pytest_llmperf import __version__
from pytest_llmperf.sim.engine import PROFILES, SimEngine, SimRequest
from pytest_llmperf.sim.http import HttpConnection, Request
from pytest_llmperf.sim.metrics import Histogram, render_metrics
from pytest_llmperf.sim.options import SimServerOptions, parse_args
from pytest_llmperf.sim.schedule import TokenSchedule
from pytest_llmperf.tokenizer import SimTokenizer

__all__ = ["SimServer", "main", "serve"]

CHAT_TEMPLATE_TOKENS_PER_MESSAGE = 3  # role markers and separators, as a chat template adds
CHAT_TEMPLATE_TOKENS_FIXED = 1  # the generation prompt
LATE_THRESHOLD_S = 0.005
_DONE = b"data: [DONE]\n\n"
_MALFORMED = b'data: {"choices": [{"delta": \n\n'


def _error(status: int, message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


def _message_text(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


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
        s.requests_success += 1
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


class SimServer:
    def __init__(self, opts: SimServerOptions, loop: asyncio.AbstractEventLoop) -> None:
        self.opts = opts
        self.loop = loop
        self.tokenizer = SimTokenizer()
        self.word_bytes = [(" " + self.tokenizer.word(i)).encode() for i in range(self.tokenizer.vocab_size)]
        self.engine: SimEngine | None = None
        if opts.profile != "deterministic":
            self.engine = SimEngine(
                PROFILES[opts.profile],
                slowdown=opts.slowdown,
                max_num_seqs=opts.max_num_seqs,
                max_num_batched_tokens=opts.max_num_batched_tokens,
                kv_capacity_tokens=opts.kv_cache_tokens,
                jitter=opts.jitter,
                seed=opts.seed,
            )
        self.det_ttft = opts.ttft_ms * opts.slowdown / 1000.0
        self.det_itl = opts.itl_ms * opts.slowdown / 1000.0
        self.schedule = TokenSchedule(loop)
        self.faults = random.Random(opts.seed)
        self.created = int(time.time())
        self.requests_total = 0
        self.requests_success = 0
        self.running_generations = 0
        self.det_prompt_tokens = 0
        self.det_generation_tokens = 0
        self.tokens_scheduled = 0
        self.late_tokens = 0
        self.max_lateness = 0.0
        self.first_arrival = 0.0  # loop time of the first generation request
        self.last_token = 0.0  # loop time of the last token written
        self.h_ttft = Histogram("vllm:time_to_first_token_seconds", Histogram.TTFT_BUCKETS)
        self.h_itl = Histogram("vllm:inter_token_latency_seconds", Histogram.ITL_BUCKETS)
        self.h_e2e = Histogram("vllm:e2e_request_latency_seconds", Histogram.E2E_BUCKETS)

    def connection(self) -> HttpConnection:
        return HttpConnection(self.handle)

    # --- routing ----------------------------------------------------------------------------------

    def handle(self, conn: HttpConnection, req: Request) -> None:
        route = (req.method, req.path)
        if route == ("POST", "/v1/chat/completions"):
            self.generate(conn, req, chat=True)
        elif route == ("POST", "/v1/completions"):
            self.generate(conn, req, chat=False)
        elif route == ("GET", "/health"):
            conn.send(200, b"", "text/plain")
        elif route == ("GET", "/version"):
            conn.send_json(200, {"version": f"llmperf-sim-{__version__}"})
        elif route == ("GET", "/v1/models"):
            conn.send_json(200, self.models())
        elif route == ("GET", "/metrics"):
            conn.send(200, self.metrics().encode(), "text/plain; version=0.0.4")
        elif route == ("POST", "/tokenize"):
            self.tokenize(conn, req)
        elif route == ("POST", "/detokenize"):
            self.detokenize(conn, req)
        elif route == ("POST", "/llmperf/reset_timing"):
            self.first_arrival = self.last_token = self.max_lateness = 0.0
            self.tokens_scheduled = self.late_tokens = 0
            conn.send_json(200, {"reset": True})
        else:
            conn.send_json(404, _error(404, f"{req.method} {req.path} not found", "NotFoundError"))

    def models(self) -> dict[str, Any]:
        card = {
            "id": self.opts.served_model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "llmperf-sim",
            "root": self.opts.model,
            "parent": None,
            "max_model_len": self.opts.max_model_len,
        }
        return {"object": "list", "data": [card]}

    def tokenize(self, conn: HttpConnection, req: Request) -> None:
        try:
            body = req.json()
            if "messages" in body:
                ids = self.tokenizer.encode(" ".join(_message_text(m) for m in body["messages"]))
            else:
                ids = self.tokenizer.encode(str(body.get("prompt", "")))
        except (ValueError, AttributeError, TypeError):
            conn.send_json(400, _error(400, "expected a JSON object with 'prompt' or 'messages'", "BadRequestError"))
            return
        conn.send_json(200, {"count": len(ids), "max_model_len": self.opts.max_model_len, "tokens": ids})

    def detokenize(self, conn: HttpConnection, req: Request) -> None:
        try:
            tokens = [int(t) for t in req.json().get("tokens", [])]
        except (ValueError, AttributeError, TypeError):
            conn.send_json(400, _error(400, "expected a JSON object with 'tokens'", "BadRequestError"))
            return
        bad = [t for t in tokens if not 0 <= t < self.tokenizer.vocab_size]
        if bad:
            conn.send_json(400, _error(400, f"Token id {bad[0]} is out of vocabulary", "BadRequestError"))
            return
        conn.send_json(200, {"prompt": self.tokenizer.decode(tokens)})

    def metrics(self) -> str:
        if self.engine is not None:
            st = self.engine.stats()
            gauges = {"running": st.running, "waiting": st.waiting, "kv": st.kv_cache_usage}
            counters = {
                "prompt": st.prompt_tokens_total,
                "generation": st.generation_tokens_total,
                "preemptions": st.preemptions_total,
            }
        else:
            gauges = {"running": self.running_generations, "waiting": 0, "kv": 0.0}
            counters = {"prompt": self.det_prompt_tokens, "generation": self.det_generation_tokens, "preemptions": 0}
        return render_metrics(
            self.opts.served_model_name,
            gauges=gauges,
            counters=counters,
            success=self.requests_success,
            histograms=(self.h_ttft, self.h_itl, self.h_e2e),
            sim={
                "tokens_scheduled": self.tokens_scheduled,
                "late_tokens": self.late_tokens,
                "max_lateness_seconds": self.max_lateness,
                "delivery_window_seconds": max(0.0, self.last_token - self.first_arrival),
            },
        )

    # --- generation -------------------------------------------------------------------------------

    def generate(self, conn: HttpConnection, req: Request, *, chat: bool) -> None:
        try:
            body = req.json()
        except (ValueError, UnicodeDecodeError):
            conn.send_json(400, _error(400, "request body is not valid JSON", "BadRequestError"))
            return
        if not isinstance(body, dict):
            conn.send_json(400, _error(400, "request body must be a JSON object", "BadRequestError"))
            return
        opts = self.opts
        model = body.get("model", opts.served_model_name)
        if model != opts.served_model_name:
            conn.send_json(404, _error(404, f"The model `{model}` does not exist.", "NotFoundError"))
            return
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                conn.send_json(400, _error(400, "'messages' must be a non-empty list", "BadRequestError"))
                return
            prompt_tokens = CHAT_TEMPLATE_TOKENS_FIXED + sum(
                CHAT_TEMPLATE_TOKENS_PER_MESSAGE + self.tokenizer.count(_message_text(m)) for m in messages
            )
            max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
                prompt_tokens = len(prompt)
            elif isinstance(prompt, str):
                prompt_tokens = self.tokenizer.count(prompt)
            else:
                conn.send_json(400, _error(400, "'prompt' must be a string or a list of token ids", "BadRequestError"))
                return
            max_tokens = body.get("max_tokens", 16)
        prompt_tokens = max(1, prompt_tokens)
        if max_tokens is None:
            max_tokens = opts.max_model_len - prompt_tokens
        if not isinstance(max_tokens, int) or max_tokens < 1:
            conn.send_json(
                400, _error(400, f"max_tokens must be a positive integer, got {max_tokens!r}", "BadRequestError")
            )
            return
        if prompt_tokens + max_tokens > opts.max_model_len:
            conn.send_json(
                400,
                _error(
                    400,
                    f"This model's maximum context length is {opts.max_model_len} tokens. However, you requested "
                    f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
                    "completion). Please reduce the length of the messages or completion.",
                    "BadRequestError",
                ),
            )
            return
        self.requests_total += 1
        n = self.requests_total
        if opts.crash_after is not None and n > opts.crash_after:
            print(f"llmperf sim: crashing on request {n} (--crash-after {opts.crash_after})", flush=True)
            os._exit(3)
        if opts.error_rate and self.faults.random() < opts.error_rate:
            conn.send_json(500, _error(500, "simulated internal server error (--error-rate)", "InternalServerError"))
            return
        if not self.first_arrival:
            self.first_arrival = self.loop.time()
        if self.engine is None:
            self.det_prompt_tokens += prompt_tokens
        stream = bool(body.get("stream", False))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage", False))
        finish_reason = "length"
        if opts.eos_mean_tokens and not body.get("ignore_eos", False):
            # a natural end (EOS), drawn reproducibly per request; ignore_eos runs to max_tokens
            natural = 1 + int(random.Random(opts.seed * 1_000_003 + n).expovariate(1.0 / opts.eos_mean_tokens))
            if natural < max_tokens:
                max_tokens, finish_reason = natural, "stop"
        Generation(
            self,
            conn,
            chat=chat,
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            stream=stream,
            include_usage=include_usage,
            finish_reason=finish_reason,
        ).start()
        if self.engine is None:
            self.schedule.run_due()  # tokens that fell due while this request was parsed


async def serve(opts: SimServerOptions) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    children: list[subprocess.Popen[bytes]] = []
    for _ in range(opts.spawn_children):
        children.append(subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(1)"]))
    if children:
        print(f"llmperf sim: started child processes {[c.pid for c in children]}", flush=True)
    try:
        if opts.startup_delay_s:
            print(f"llmperf sim: start-up delay of {opts.startup_delay_s} s", flush=True)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), opts.startup_delay_s)
        server = SimServer(opts, loop)
        if server.engine is not None:
            server.engine.start()
        # keep the cyclic garbage collector off the token path: long-lived objects are frozen, and young
        # collections (which walk every live Generation) run rarely; per-request objects are acyclic
        gc.collect()
        gc.freeze()
        gc.set_threshold(100_000, 50, 1000)
        srv = await loop.create_server(server.connection, opts.host, opts.port, reuse_address=True, backlog=4096)
        print(
            f"llmperf sim: pid {os.getpid()} pgid {os.getpgrp()} serving {opts.served_model_name!r} "
            f"on http://{opts.host}:{opts.port} (profile {opts.profile}, slowdown {opts.slowdown:g}"
            + (f", SCHED_FIFO priority {opts.realtime_priority})" if opts.realtime_priority else ")"),
            flush=True,
        )
        await stop.wait()
        print("llmperf sim: shutting down", flush=True)
        srv.close()
        if server.engine is not None:
            await server.engine.stop()
    finally:
        _reap(children)


def _reap(children: list[subprocess.Popen[bytes]], grace_s: float = 5.0) -> None:
    """An engine's own children die with it: SIGTERM, a grace period, then SIGKILL."""
    for child in children:
        child.terminate()
    for child in children:
        try:
            child.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def main(argv: list[str] | None = None) -> int:
    opts, unknown = parse_args(argv)
    if unknown:
        print(f"llmperf sim: ignoring flags it does not model: {' '.join(unknown)}", flush=True)
    if opts.fail_at_startup is not None:
        print(opts.fail_at_startup, file=sys.stderr, flush=True)
        return opts.fail_exit_code
    if opts.realtime_priority:
        try:
            if not hasattr(os, "sched_setscheduler"):
                raise OSError(0, "not available on this platform")
            # children (--spawn-children) start at normal priority
            os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(opts.realtime_priority))
        except OSError as exc:
            print(
                f"llmperf sim: --realtime-priority {opts.realtime_priority}: cannot switch to SCHED_FIFO "
                f"({exc.strerror}); it needs Linux and root or CAP_SYS_NICE. Drop the option to serve at "
                "normal priority.",
                file=sys.stderr,
                flush=True,
            )
            return 2
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(opts))
    else:
        uvloop.run(serve(opts))
    return 0
