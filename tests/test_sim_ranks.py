"""DP attention in the simulated engine: one scheduler per attention rank, stepping in lockstep."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from suite_files import StartSim, flat_profile

from pytest_llmperf.sim.calibrated import FamilyProfile, default_profiles
from pytest_llmperf.sim.engine import Profile, SimEngine, SimRequest
from pytest_llmperf.sim.knobs import Knobs, knobs_from_command
from pytest_llmperf.sim.kv_capacity import KV_BYTES_FP8, nonrouted_weight_share, sglang_dp_attention_kv_tokens
from pytest_llmperf.sim.ranks import RankedEngine, new_engine
from pytest_llmperf.sim.virtual import Shape, random_shape, replay, timed_requests


def prof(**kw: Any) -> Profile:
    """10 ms steps, small batches, prefill first: each rank's plan is easy to follow."""
    return flat_profile(0.01, **{"max_num_seqs": 64, "max_num_batched_tokens": 128, "prefill_first": True, **kw})


def test_requests_are_dealt_round_robin_and_the_limits_split_between_the_ranks() -> None:
    engine = new_engine(prof(dp_ranks=4, kv_capacity_tokens=4096))
    assert isinstance(engine, RankedEngine) and type(new_engine(prof())) is SimEngine
    _, reqs = timed_requests(random_shape(10, 2, 10), [0.0])
    for r in reqs:
        engine.enqueue(r)
    assert [len(r.waiting) for r in engine.ranks] == [3, 3, 2, 2]
    assert all(
        r.num_blocks == 1024 // 16 and r.max_num_batched_tokens == 32 and r.max_num_seqs == 16 for r in engine.ranks
    )
    assert engine.stats().waiting == 10 and engine.stats().kv_cache_usage == 0.0


def test_a_rank_decodes_while_another_rank_still_prefills() -> None:
    """Prefill first, per rank: the short prompts dealt to rank 1 are answered while rank 0 still works through
    its long prompts; one node-wide prefill-first scheduler answers none of them before every prompt is in."""
    shape = Shape("mixed", ((1000, 4), (10, 4)) * 4)  # round-robin: the long prompts to rank 0, the short to rank 1

    def timelines(p: Profile) -> tuple[list[float], list[float], list[float]]:
        clock = [0.0]
        times, reqs = timed_requests(shape, clock)
        engine = new_engine(p)
        for r in reqs:
            engine.enqueue(r)
        while engine.has_work():
            decode, prefill = engine.schedule()
            clock[0] += engine.step_time(decode, prefill)
            engine.advance(decode, prefill)
        long_first = [t.first for t in times[0::2]]
        short_last = [t.last for t in times[1::2]]
        return long_first, short_last, [t.last for t in times]

    long_first, short_last, _ = timelines(prof(dp_ranks=2, max_num_batched_tokens=256))  # 128 tokens a rank
    assert max(short_last) < min(long_first[1:])  # every short request done before rank 0's second prompt is in
    long_first, short_last, _ = timelines(prof(max_num_batched_tokens=128))
    assert min(short_last) > max(long_first)


def test_a_forward_lasts_the_node_wide_cost_plus_the_slowest_ranks_attention() -> None:
    p = prof(dp_ranks=2, attn_pair_s=1e-6, prefill_per_token_s=1e-5, max_num_batched_tokens=2000)
    engine = new_engine(p)
    for prompt in (1000, 10):  # rank 0 a 1000-token prompt, rank 1 a 10-token one
        engine.enqueue(SimRequest(prompt, 2, 0.0, lambda n: None))
    decode, prefill = engine.schedule()
    assert sorted(c for _, c in prefill) == [10, 1000] and not decode
    expected = p.step_time(2, 0, 1010, 0) + 2 * p.prefill_attention(0, 1000)  # rank 0 on its half of the GPUs
    assert engine.step_time(decode, prefill) == pytest.approx(expected)


def test_a_full_kv_pool_holds_a_ranks_prompts_back_and_every_token_still_comes() -> None:
    p = prof(dp_ranks=2, kv_capacity_tokens=2 * 2 * 160, max_num_batched_tokens=2 * 512)  # two prompts a rank
    m = replay(p, random_shape(100, 50, 12))
    assert m["completed"] == 12 and m["total_output_tokens"] == 600
    # three waves a rank (two prompts in, decoded to the end, then the next two) where one big pool takes all
    one = replay(prof(kv_capacity_tokens=100_000, max_num_batched_tokens=1024), random_shape(100, 50, 12))
    assert m["duration"] > 2 * one["duration"]


def test_sglang_under_dp_attention_gets_per_rank_schedulers_and_its_own_kv_arithmetic() -> None:
    cmd = "python3 -m sglang.launch_server --model-path m --tp-size 8 --dp-size 8 --enable-dp-attention"
    p = FamilyProfile.uncalibrated("sglang").profile(knobs_from_command("sglang", cmd))
    assert p.dp_ranks == 8
    # SGLang 0.5.6 on an H200: mem_fraction_static 0.769, the attention replicated on every rank
    assert p.kv_capacity_tokens == 8 * sglang_dp_attention_kv_tokens(8) and 230_000 < p.kv_capacity_tokens / 8 < 240_000
    fp8 = FamilyProfile.uncalibrated("sglang").profile(knobs_from_command("sglang", cmd + " --kv-cache-dtype fp8_e4m3"))
    assert fp8.kv_capacity_tokens == 8 * sglang_dp_attention_kv_tokens(8, KV_BYTES_FP8)
    # a TP-only SGLang, and vLLM's DP engines, keep one node-wide scheduler
    assert FamilyProfile.uncalibrated("sglang").profile(Knobs(tp=8)).dp_ranks == 1
    vllm_dp = knobs_from_command("vllm", "vllm serve m -tp 1 -dp 8 --enable-expert-parallel")
    assert FamilyProfile.uncalibrated("vllm").profile(vllm_dp).dp_ranks == 1


def test_the_packaged_sglang_dp_profile_serves_through_the_ranked_engine() -> None:
    cmd = (
        "python3 -m sglang.launch_server --model-path m --tp-size 8 --dp-size 8 --enable-dp-attention "
        "--context-length 32768 --attention-backend nsa --nsa-prefill-backend fa3 --nsa-decode-backend fa3"
    )
    p, _ = default_profiles().profile("sglang", knobs_from_command("sglang", cmd))

    async def serve() -> list[int]:
        engine = new_engine(p)
        assert isinstance(engine, RankedEngine)
        engine.start()
        done: list[asyncio.Future[int]] = []
        for _ in range(16):
            fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()

            def on_token(n: int, fut: asyncio.Future[int] = fut) -> None:
                if n == 3 and not fut.done():
                    fut.set_result(n)

            engine.submit(200, 3, on_token)
            done.append(fut)
        got = await asyncio.wait_for(asyncio.gather(*done), 10)
        stats = engine.stats()
        await engine.stop()
        assert stats.requests_finished_total == 16 and stats.generation_tokens_total == 48
        return got

    assert asyncio.run(serve()) == [3] * 16


def test_dp_attention_reads_the_whole_attention_on_every_rank_each_step() -> None:
    """TP 8 streams 1/8 of the non-routed weights a step; a DP-attention rank all of the attention, and vLLM's
    -tp 1 engines the MLPs and LM head as well (DeepSeek-V3.2's shapes)."""
    assert nonrouted_weight_share(8, 8) == pytest.approx(1.0)
    assert 5.5 < nonrouted_weight_share(8, 1) < 6.5
    assert nonrouted_weight_share(1, 1) == pytest.approx(8.0)
    fam = FamilyProfile.uncalibrated("sglang")
    tp = fam.profile(Knobs(tp=8))
    dp = fam.profile(Knobs(tp=8, dp=8, dp_attention=True))
    assert dp.nonrouted_weights_s == pytest.approx(tp.nonrouted_weights_s * nonrouted_weight_share(8, 1))
    # the extra read shows in a decode step at any batch
    assert dp.step_time(8, 8, 0, 0) - tp.step_time(8, 8, 0, 0) == pytest.approx(
        dp.nonrouted_weights_s - tp.nonrouted_weights_s + (dp.decode_per_seq_s - tp.decode_per_seq_s) * 8
    )


def test_a_request_no_ranks_pool_can_hold_is_refused_not_left_waiting(start_sim: StartSim) -> None:
    """A request larger than one rank's KV pool would wait for room forever (and hold up its rank's queue)."""
    args = "--tp-size 8 --dp-size 8 --enable-dp-attention --kv-cache-tokens 8000"  # 1000 tokens a rank
    server = start_sim(*args.split(), "--profile", "h200-sglang")
    body = {"model": "llmperf-sim", "prompt": "hello there", "max_tokens": 1500}
    r = httpx.post(server.base_url + "/v1/completions", json=body, timeout=10)
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert "more than the simulated engine's cache of one DP-attention rank holds (992)" in message
    assert "raise --kv-cache-tokens" in message
    ok = httpx.post(server.base_url + "/v1/completions", json={**body, "max_tokens": 20}, timeout=10)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 20
