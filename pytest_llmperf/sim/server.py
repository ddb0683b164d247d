"""The simulated engine's HTTP server: the OpenAI API as vLLM serves it.

Endpoints: ``/v1/chat/completions`` and ``/v1/completions`` (streaming and not), ``/v1/models``,
``/health``, ``/version``, ``/tokenize``, ``/detokenize`` and ``/metrics`` (Prometheus text, vLLM names).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from pytest_llmperf import __version__
from pytest_llmperf.sim.engine import PROFILES, SimEngine, SimRequest
from pytest_llmperf.tokenizer import SimTokenizer

__all__ = ["SimServerOptions", "build_app", "main", "parse_args"]

CHAT_TEMPLATE_TOKENS_PER_MESSAGE = 3  # role markers and separators, as a chat template adds
CHAT_TEMPLATE_TOKENS_FIXED = 1  # the generation prompt


@dataclass(frozen=True)
class SimServerOptions:
    host: str
    port: int
    model: str
    served_model_name: str
    profile: str
    ttft_ms: float
    itl_ms: float
    slowdown: float
    seed: int
    max_num_seqs: int | None
    max_num_batched_tokens: int | None
    max_model_len: int
    startup_delay_s: float
    fail_at_startup: str | None
    fail_exit_code: int
    spawn_children: int
    crash_after: int | None = None
    stall_after: int | None = None
    error_rate: float = 0.0
    malformed_rate: float = 0.0
    reset_rate: float = 0.0


def _error(status: int, message: str, kind: str) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return web.json_response(body, status=status)


class SimServer:
    def __init__(self, opts: SimServerOptions) -> None:
        self.opts = opts
        self.tokenizer = SimTokenizer()
        self.engine: SimEngine | None = None
        self.deterministic = opts.profile == "deterministic"
        self.created = int(time.time())
        self.requests_total = 0
        self.faults = random.Random(opts.seed)
        # counters of the deterministic profile, which bypasses the engine
        self._det_running = 0
        self._det_prompt = 0
        self._det_gen = 0
        self._det_done = 0

    async def on_startup(self, app: web.Application) -> None:
        if not self.deterministic:
            self.engine = SimEngine(
                PROFILES[self.opts.profile],
                slowdown=self.opts.slowdown,
                max_num_seqs=self.opts.max_num_seqs,
                max_num_batched_tokens=self.opts.max_num_batched_tokens,
            )
            self.engine.start()

    async def on_cleanup(self, app: web.Application) -> None:
        if self.engine is not None:
            await self.engine.stop()

    # --- control plane ---------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": f"llmperf-sim-{__version__}"})

    async def models(self, request: web.Request) -> web.Response:
        card = {
            "id": self.opts.served_model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "llmperf-sim",
            "root": self.opts.model,
            "parent": None,
            "max_model_len": self.opts.max_model_len,
        }
        return web.json_response({"object": "list", "data": [card]})

    async def tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        if "messages" in body:
            ids = self.tokenizer.encode(" ".join(_message_text(m) for m in body["messages"]))
        else:
            ids = self.tokenizer.encode(str(body.get("prompt", "")))
        return web.json_response({"count": len(ids), "max_model_len": self.opts.max_model_len, "tokens": ids})

    async def detokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"prompt": self.tokenizer.decode(body.get("tokens", []))})

    async def metrics(self, request: web.Request) -> web.Response:
        label = f'{{model_name="{self.opts.served_model_name}"}}'
        if self.engine is not None:
            s = self.engine.stats()
            running, waiting, kv = s.running, s.waiting, s.kv_cache_usage
            prompt, gen, done = s.prompt_tokens_total, s.generation_tokens_total, s.requests_finished_total
        else:
            running, waiting, kv = self._det_running, 0, 0.0
            prompt, gen, done = self._det_prompt, self._det_gen, self._det_done
        lines = [
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{label} {float(running)}",
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{label} {float(waiting)}",
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{label} {kv}",
            "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
            "# TYPE vllm:prompt_tokens_total counter",
            f"vllm:prompt_tokens_total{label} {float(prompt)}",
            "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
            "# TYPE vllm:generation_tokens_total counter",
            f"vllm:generation_tokens_total{label} {float(gen)}",
            "# HELP vllm:request_success_total Count of successfully processed requests.",
            "# TYPE vllm:request_success_total counter",
            f"vllm:request_success_total{label} {float(done)}",
        ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    # --- generation ------------------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _generate(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return _error(400, "request body is not valid JSON", "BadRequestError")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object", "BadRequestError")
        model = body.get("model", self.opts.served_model_name)
        if model != self.opts.served_model_name:
            return _error(404, f"The model `{model}` does not exist.", "NotFoundError")
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                return _error(400, "'messages' must be a non-empty list", "BadRequestError")
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
                return _error(400, "'prompt' must be a string or a list of token ids", "BadRequestError")
            max_tokens = body.get("max_tokens", 16)
        prompt_tokens = max(1, prompt_tokens)
        if max_tokens is None:
            max_tokens = self.opts.max_model_len - prompt_tokens
        if not isinstance(max_tokens, int) or max_tokens < 1:
            return _error(400, f"max_tokens must be a positive integer, got {max_tokens!r}", "BadRequestError")
        if prompt_tokens + max_tokens > self.opts.max_model_len:
            return _error(
                400,
                f"This model's maximum context length is {self.opts.max_model_len} tokens. However, you "
                f"requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, "
                f"{max_tokens} in the completion). Please reduce the length of the messages or completion.",
                "BadRequestError",
            )
        self.requests_total += 1
        n = self.requests_total
        if self.opts.crash_after is not None and n > self.opts.crash_after:
            print(f"llmperf sim: crashing on request {n} (--crash-after {self.opts.crash_after})", flush=True)
            os._exit(3)
        if self.opts.error_rate and self.faults.random() < self.opts.error_rate:
            return _error(500, "simulated internal server error (--error-rate)", "InternalServerError")
        stream = bool(body.get("stream", False))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage", False))
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        if stream:
            return await self._stream(request, rid, chat, prompt_tokens, max_tokens, include_usage)
        return await self._complete(rid, chat, prompt_tokens, max_tokens)

    async def _tokens(self, prompt_tokens: int, max_tokens: int) -> Any:
        """Yield once per generated token, at the time the modelled engine produces it."""
        if self.engine is not None:
            req: SimRequest = self.engine.submit(prompt_tokens, max_tokens)
            produced = 0
            try:
                while produced < max_tokens:
                    produced += await req.tokens.get()
                    yield produced
            finally:
                req.aborted = produced < max_tokens
            return
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        scale = self.opts.slowdown / 1000.0  # --slowdown applies to the deterministic schedule too
        ttft, itl = self.opts.ttft_ms * scale, self.opts.itl_ms * scale
        self._det_running += 1
        self._det_prompt += prompt_tokens
        try:
            for i in range(max_tokens):
                delay = t0 + ttft + i * itl - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                self._det_gen += 1
                yield i + 1
            self._det_done += 1
        finally:
            self._det_running -= 1

    async def _stream(
        self, request: web.Request, rid: str, chat: bool, prompt_tokens: int, max_tokens: int, include_usage: bool
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        head = json.dumps(self.opts.served_model_name)
        if chat:
            prefix = (
                f'data: {{"id":"{rid}","object":"chat.completion.chunk","created":{int(time.time())},'
                f'"model":{head},"choices":[{{"index":0,"delta":{{'
            )
            role = (prefix + '"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n').encode()
            mid = prefix + '"content":"'
            tail = '"},"logprobs":null,"finish_reason":null}]}\n\n'
            last_tail = '"},"logprobs":null,"finish_reason":"length"}]}\n\n'
        else:
            prefix = (
                f'data: {{"id":"{rid}","object":"text_completion","created":{int(time.time())},'
                f'"model":{head},"choices":[{{"index":0,'
            )
            role = b""
            mid = prefix + '"text":"'
            tail = '","logprobs":null,"finish_reason":null,"stop_reason":null}],"usage":null}\n\n'
            last_tail = '","logprobs":null,"finish_reason":"length","stop_reason":null}],"usage":null}\n\n'
        word = self.tokenizer.word
        first = True
        stall = self.opts.stall_after is not None and self.requests_total > self.opts.stall_after
        malformed_at = max_tokens // 2 + 1 if self.faults.random() < self.opts.malformed_rate else -1
        reset_at = max_tokens // 2 + 1 if self.faults.random() < self.opts.reset_rate else -1
        async for n in self._tokens(prompt_tokens, max_tokens):
            piece = mid + " " + word(n) + (last_tail if n == max_tokens else tail)
            data = piece.encode()
            if first:
                data = role + data
                first = False
            if n == malformed_at:
                data = b'data: {"choices": [{"delta": \n\n'
            await resp.write(data)
            if n == reset_at and request.transport is not None:
                request.transport.abort()  # drop the connection mid-stream
                return resp
            if stall:
                await asyncio.Event().wait()  # stop streaming; holds until the client gives up
        if include_usage:
            usage = {
                "prompt_tokens": prompt_tokens,
                "total_tokens": prompt_tokens + max_tokens,
                "completion_tokens": max_tokens,
            }
            obj = "chat.completion.chunk" if chat else "text_completion"
            chunk = {
                "id": rid,
                "object": obj,
                "created": int(time.time()),
                "model": self.opts.served_model_name,
                "choices": [],
                "usage": usage,
            }
            await resp.write(f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _complete(self, rid: str, chat: bool, prompt_tokens: int, max_tokens: int) -> web.Response:
        words: list[str] = []
        async for n in self._tokens(prompt_tokens, max_tokens):
            words.append(self.tokenizer.word(n))
        text = " " + " ".join(words)
        usage = {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + max_tokens,
            "completion_tokens": max_tokens,
        }
        choice: dict[str, Any]
        if chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": "length",
            }
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length", "stop_reason": None}
            obj = "text_completion"
        return web.json_response(
            {
                "id": rid,
                "object": obj,
                "created": int(time.time()),
                "model": self.opts.served_model_name,
                "choices": [choice],
                "usage": usage,
            }
        )


def _message_text(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def build_app(opts: SimServerOptions) -> web.Application:
    server = SimServer(opts)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.on_startup.append(server.on_startup)
    app.on_cleanup.append(server.on_cleanup)
    app.router.add_get("/health", server.health)
    app.router.add_get("/version", server.version)
    app.router.add_get("/v1/models", server.models)
    app.router.add_get("/metrics", server.metrics)
    app.router.add_post("/tokenize", server.tokenize)
    app.router.add_post("/detokenize", server.detokenize)
    app.router.add_post("/v1/chat/completions", server.chat)
    app.router.add_post("/v1/completions", server.completions)
    return app


def parse_args(argv: list[str] | None = None) -> tuple[SimServerOptions, list[str]]:
    p = argparse.ArgumentParser(
        prog="llmperf sim serve",
        description="The simulated LLM serving engine of pytest-llmperf (OpenAI API as vLLM serves it).",
    )
    p.add_argument("--model", default=None)
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--profile", choices=[*sorted(PROFILES), "deterministic"], default="cpu-small")
    p.add_argument("--ttft-ms", type=float, default=50.0, help="deterministic profile: time to first token")
    p.add_argument("--itl-ms", type=float, default=50.0, help="deterministic profile: inter-token latency")
    p.add_argument("--slowdown", type=float, default=1.0, help="multiply every step time (prove the gate)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-num-seqs", type=int, default=None)
    p.add_argument("--max-num-batched-tokens", type=int, default=None)
    p.add_argument("--max-model-len", type=int, default=32768)
    p.add_argument("--startup-delay", type=float, default=0.0, help="fault: seconds before the port answers")
    p.add_argument("--fail-at-startup", default=None, metavar="MESSAGE", help="fault: print MESSAGE and exit")
    p.add_argument("--fail-exit-code", type=int, default=1)
    p.add_argument("--spawn-children", type=int, default=0, help="fault: start N child processes")
    p.add_argument(
        "--crash-after",
        type=int,
        default=None,
        metavar="N",
        help="fault: exit when request N+1 arrives (the readiness probe counts; 0: die on the first)",
    )
    p.add_argument(
        "--stall-after",
        type=int,
        default=None,
        metavar="N",
        help="fault: requests after the N-th stop streaming after their first token",
    )
    p.add_argument("--error-rate", type=float, default=0.0, metavar="F", help="fault: HTTP 500 for a fraction F")
    p.add_argument(
        "--malformed-rate",
        type=float,
        default=0.0,
        metavar="F",
        help="fault: a fraction F of streams carry one malformed SSE message",
    )
    p.add_argument(
        "--reset-rate",
        type=float,
        default=0.0,
        metavar="F",
        help="fault: a fraction F of streams have their connection reset mid-stream",
    )
    args = list(sys.argv[1:] if argv is None else argv)
    model_tag = None
    if args and not args[0].startswith("-"):  # `vllm serve MODEL ...` style
        model_tag = args.pop(0)
    ns, unknown = p.parse_known_args(args)
    if ns.slowdown <= 0:
        p.error("--slowdown must be positive")
    model = ns.model or model_tag or "llmperf-sim"
    opts = SimServerOptions(
        host=ns.host,
        port=ns.port,
        model=model,
        served_model_name=ns.served_model_name or model,
        profile=ns.profile,
        ttft_ms=ns.ttft_ms,
        itl_ms=ns.itl_ms,
        slowdown=ns.slowdown,
        seed=ns.seed,
        max_num_seqs=ns.max_num_seqs,
        max_num_batched_tokens=ns.max_num_batched_tokens,
        max_model_len=ns.max_model_len,
        startup_delay_s=ns.startup_delay,
        fail_at_startup=ns.fail_at_startup,
        fail_exit_code=ns.fail_exit_code,
        spawn_children=ns.spawn_children,
        crash_after=ns.crash_after,
        stall_after=ns.stall_after,
        error_rate=ns.error_rate,
        malformed_rate=ns.malformed_rate,
        reset_rate=ns.reset_rate,
    )
    return opts, unknown


async def _serve(opts: SimServerOptions) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    children: list[subprocess.Popen[bytes]] = []
    for _ in range(opts.spawn_children):
        children.append(subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(1)"]))
    if children:
        print(f"llmperf sim: started child processes {[c.pid for c in children]}", flush=True)
    if opts.startup_delay_s:
        print(f"llmperf sim: start-up delay of {opts.startup_delay_s} s", flush=True)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), opts.startup_delay_s)
    runner = web.AppRunner(build_app(opts), access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, opts.host, opts.port, reuse_address=True)
    await site.start()
    print(
        f"llmperf sim: pid {os.getpid()} pgid {os.getpgrp()} serving {opts.served_model_name!r} "
        f"on http://{opts.host}:{opts.port} (profile {opts.profile}, slowdown {opts.slowdown})",
        flush=True,
    )
    await stop.wait()
    print("llmperf sim: shutting down", flush=True)
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    opts, unknown = parse_args(argv)
    if unknown:
        print(f"llmperf sim: ignoring flags it does not model: {' '.join(unknown)}", flush=True)
    if opts.fail_at_startup is not None:
        print(opts.fail_at_startup, file=sys.stderr, flush=True)
        return opts.fail_exit_code
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(opts))
    else:
        uvloop.run(_serve(opts))
    return 0
