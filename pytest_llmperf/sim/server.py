"""The simulated engine's HTTP server: the OpenAI API as vLLM serves it.

Endpoints: ``/v1/chat/completions`` and ``/v1/completions`` (streaming and not), ``/v1/models``,
``/health``, ``/version``, ``/tokenize``, ``/detokenize`` and ``/metrics`` (Prometheus text with
vLLM's names, histograms included). Tokens are written to the connection straight from the
engine's step (or, in the deterministic profile, from a timer at each token's scheduled time).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

from pytest_llmperf import __version__
from pytest_llmperf.sim.calibrated import default_profiles, load_profiles
from pytest_llmperf.sim.engine import PROFILES, Profile, SimEngine
from pytest_llmperf.sim.generation import Generation
from pytest_llmperf.sim.http import HttpConnection, Request
from pytest_llmperf.sim.knobs import parse_knobs
from pytest_llmperf.sim.metrics import Histogram, render_metrics
from pytest_llmperf.sim.openai_api import ApiError, bad_request, message_text, parse_generation
from pytest_llmperf.sim.options import SimServerOptions
from pytest_llmperf.sim.ranks import new_engine
from pytest_llmperf.sim.schedule import TokenSchedule
from pytest_llmperf.tokenizer import SimTokenizer

__all__ = ["SimServer", "resolve_profile"]


def resolve_profile(opts: SimServerOptions, env: dict[str, str]) -> tuple[Profile, list[str]]:
    """The timing model: a named profile, or for ``h200-<engine>`` the calibrated one under the knobs that
    the engine's own flags (``opts.engine_args``) and environment set; notes say what was not calibrated."""
    base = PROFILES[opts.profile]
    if not opts.calibrated:
        return base, []
    engine = opts.profile.removeprefix("h200-")
    profiles = load_profiles(opts.profile_file) if opts.profile_file else default_profiles()
    knobs = parse_knobs(engine, opts.engine_args, env)
    profile, notes = profiles.profile(engine, knobs)
    settings = ", ".join(f"{k}={v}" for k, v in knobs.values().items() if v != "default") or "the defaults"
    modelled = f"knobs from the command line: {settings}"
    if profile.dp_ranks > 1:
        kv = profile.kv_capacity_tokens // profile.dp_ranks
        modelled += f"; {profile.dp_ranks} DP-attention schedulers, {kv:,} KV tokens a rank"
    return profile, [modelled, *notes]


class SimServer:
    def __init__(self, opts: SimServerOptions, loop: asyncio.AbstractEventLoop) -> None:
        self.opts = opts
        self.loop = loop
        self.tokenizer = SimTokenizer()
        self.word_bytes = [(" " + self.tokenizer.word(i)).encode() for i in range(self.tokenizer.vocab_size)]
        self.engine: SimEngine | None = None
        self.profile_notes: list[str] = []
        if opts.profile != "deterministic":
            profile, self.profile_notes = resolve_profile(opts, dict(os.environ))
            self.engine = new_engine(
                profile,
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
        self.requests_success: dict[str, int] = {}  # by finished_reason ("length", "stop")
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
            conn.send_json(404, ApiError(404, f"{req.method} {req.path} not found", "NotFoundError").body())

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
                ids = self.tokenizer.encode(" ".join(message_text(m) for m in body["messages"]))
            else:
                ids = self.tokenizer.encode(str(body.get("prompt", "")))
        except (ValueError, AttributeError, TypeError):
            conn.send_json(400, bad_request("expected a JSON object with 'prompt' or 'messages'").body())
            return
        conn.send_json(200, {"count": len(ids), "max_model_len": self.opts.max_model_len, "tokens": ids})

    def detokenize(self, conn: HttpConnection, req: Request) -> None:
        try:
            tokens = [int(t) for t in req.json().get("tokens", [])]
        except (ValueError, AttributeError, TypeError):
            conn.send_json(400, bad_request("expected a JSON object with 'tokens'").body())
            return
        bad = [t for t in tokens if not 0 <= t < self.tokenizer.vocab_size]
        if bad:
            conn.send_json(400, bad_request(f"Token id {bad[0]} is out of vocabulary").body())
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
        opts = self.opts
        try:
            params = parse_generation(
                req.body,
                chat=chat,
                count=self.tokenizer.count,
                served_model_name=opts.served_model_name,
                max_model_len=opts.max_model_len,
            )
        except ApiError as exc:
            conn.send_json(exc.status, exc.body())
            return
        need = params.prompt_tokens + params.max_tokens
        if self.engine is not None and need > self.engine.request_capacity:  # it would wait for room forever
            rank = " of one DP-attention rank" if self.engine.profile.dp_ranks > 1 else ""
            error = bad_request(
                f"This request needs {need} tokens of KV cache (prompt {params.prompt_tokens} + max_tokens "
                f"{params.max_tokens}), more than the simulated engine's cache{rank} holds "
                f"({self.engine.request_capacity}): lower max_tokens, or raise --kv-cache-tokens."
            )
            conn.send_json(error.status, error.body())
            return
        self.requests_total += 1
        n = self.requests_total
        if opts.crash_after is not None and n > opts.crash_after:
            print(f"llmperf sim: crashing on request {n} (--crash-after {opts.crash_after})", flush=True)
            os._exit(3)
        if opts.error_rate and self.faults.random() < opts.error_rate:
            error = ApiError(500, "simulated internal server error (--error-rate)", "InternalServerError")
            conn.send_json(500, error.body())
            return
        if not self.first_arrival:
            self.first_arrival = self.loop.time()
        if self.engine is None:
            self.det_prompt_tokens += params.prompt_tokens
        max_tokens, finish_reason = params.max_tokens, "length"
        if opts.eos_mean_tokens and not params.ignore_eos:
            # a natural end (EOS), drawn reproducibly per request; ignore_eos runs to max_tokens
            natural = 1 + int(random.Random(opts.seed * 1_000_003 + n).expovariate(1.0 / opts.eos_mean_tokens))
            if natural < max_tokens:
                max_tokens, finish_reason = natural, "stop"
        Generation(
            self,
            conn,
            chat=chat,
            prompt_tokens=params.prompt_tokens,
            max_tokens=max_tokens,
            stream=params.stream,
            include_usage=params.include_usage,
            finish_reason=finish_reason,
        ).start()
        if self.engine is None:
            self.schedule.run_due()  # tokens that fell due while this request was parsed
