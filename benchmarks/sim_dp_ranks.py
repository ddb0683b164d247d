"""An experiment, not the simulator: SGLang's DP attention as per-rank schedulers, held out on the study.

Under ``--enable-dp-attention`` each of SGLang's 8 DP ranks schedules its own requests (prefill first,
a chunk of ``chunked_prefill_size / dp``), and a forward may be mixed: prefill on some ranks, decode on
others. This runs the packaged profile's SGLang configuration that the study's random shapes use
(sglang-attn-fa3) that way, in virtual time: requests dealt round-robin to 8 copies of the engine's
scheduler, each with 1/8 of the KV cache, of the token budget and of the running cap, stepping in
lockstep; a step lasts the node-wide cost of all ranks' tokens plus the slowest rank's prefill
attention (one GPU's, 8x the node's). It prints each workload's prediction against the published block,
next to the node-wide scheduler's (docs/performance.md, "The calibrated simulator against the study").
``--kv-per-rank sglang`` gives each rank the KV cache SGLang's own memory arithmetic leaves it
(:func:`sglang_kv_tokens_per_rank`) instead of 1/8 of the profile's.

    python benchmarks/sim_dp_ranks.py [--config sglang-attn-fa3] [--ranks 8] [--kv-per-rank profile|sglang|N]
"""

from __future__ import annotations

import argparse
import dataclasses

from pytest_llmperf.errors import LlmperfError
from pytest_llmperf.sim.calibrate import Measured, predict, read_results
from pytest_llmperf.sim.calibrated import default_profiles
from pytest_llmperf.sim.engine import SimEngine
from pytest_llmperf.sim.virtual import MAX_STEPS, timed_requests, timeline_metrics

METRICS = ("output_throughput", "mean_tpot_ms", "median_itl_ms", "p99_itl_ms", "mean_ttft_ms")
MIB = 1 << 20


def sglang_kv_tokens_per_rank(other_mib: float = 0.0) -> int:
    """KV tokens of one H200 rank of ``sglang --tp 8 --dp 8 --enable-dp-attention`` for DeepSeek-V3.2 (SGLang 0.5.6).

    ``server_args._handle_gpu_memory_settings`` on a 143,771 MiB H200: chunked prefill 8192, CUDA-graph
    batch 512, and it reserves 512 + 1.5 x 8192 + 2 x 512 + 1024 (tp 8) + 3 x 512 x 8 and 1.5 x 512 x 8
    (DP attention, graphs over 300) MiB, so ``mem_fraction_static`` = round((total - reserved) / total, 3).
    The KV pool is that fraction of the GPU less the weights a rank holds: 1/8 of the routed experts
    (58 layers x 256 x 3 x 7168 x 2048, FP8) and of the dense and shared MLPs and the LM head, but the
    whole of the attention, indexer and embedding (DP attention replicates them; ``kv_b_proj`` is kept in
    BF16 for the absorbed kernels). A token costs (512 + 64) x 2 B of BF16 latent (SGLang's DSA default on
    SM90) + 132 B of FP8 indexer key per layer, 61 layers. ``other_mib``: CUDA context, NCCL and workspace
    memory the profiler also sees, not counted here.
    """
    total_mib = 143_771
    reserved = 512 + 1.5 * 8192 + 2 * 512 + 8 / 8 * 1024 + 3 * 512 * 8 + 1.5 * 512 * 8
    fraction = round((total_mib - reserved) / total_mib, 3)
    routed = 58 * 256 * 3 * 7168 * 2048 / 8  # FP8, 1 byte a parameter
    attention = 61 * (7168 * 1536 + 1536 * 128 * 192 + 7168 * 576 + 512 * 128 * 256 + 128 * 128 * 7168)
    kv_b_bf16 = 61 * 512 * 128 * 256  # its second byte
    indexer = 61 * (1536 * 64 * 128 + 7168 * 128 + 7168 * 64)
    sharded_mlp = (58 * 3 * 7168 * 2048 + 3 * 3 * 7168 * 18432) / 8
    embedding, lm_head = 129_280 * 7168 * 2, 129_280 * 7168 * 2 / 8  # BF16
    weights = routed + attention + kv_b_bf16 + indexer + sharded_mlp + embedding + lm_head
    pool = fraction * total_mib * MIB - weights - other_mib * MIB
    return int(pool // ((576 * 2 + 132) * 61))


def per_rank_replay(m: Measured, ranks: int, kv_per_rank: int | None = None) -> dict[str, float]:
    prof, _ = default_profiles().profile(m.engine, m.knobs)
    rank_prof = dataclasses.replace(
        prof,
        kv_capacity_tokens=kv_per_rank or prof.kv_capacity_tokens // ranks,
        max_num_batched_tokens=prof.max_num_batched_tokens // ranks,
        max_num_seqs=max(1, prof.max_num_seqs // ranks),
    )
    engines = [SimEngine(rank_prof) for _ in range(ranks)]
    clock = [0.0]
    times, reqs = timed_requests(m.shape, clock)
    for i, req in enumerate(reqs):
        engines[i % ranks].waiting.append(req)  # dealt round-robin, as SGLang's DP controller does
    for _ in range(MAX_STEPS):
        if not any(e.running or e.waiting for e in engines):
            break
        plans = [e.schedule() for e in engines]
        if not any(d or p for d, p in plans):
            break
        n_decode = sum(len(d) for d, _ in plans) * (1 + prof.spec_tokens)
        n_prefill = sum(c for _, p in plans for _, c in p)
        batch = sum(len(d) + len(p) for d, p in plans)
        context = sum(r.prefilled for e in engines for r in e.running)
        step = prof.step_time(batch, n_decode, n_prefill, context)
        step += max(ranks * sum(prof.prefill_attention(r.prefilled, c) for r, c in p) for _, p in plans)
        clock[0] += step
        for e, (d, p) in zip(engines, plans, strict=True):
            e.advance(d, p)
    return timeline_metrics(m.shape, times, reqs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="sglang-attn-fa3")
    ap.add_argument("--ranks", type=int, default=8)
    ap.add_argument("--results", default="baselines/perf_tests/study")
    ap.add_argument("--kv-per-rank", default="profile", help="profile (1/ranks of its KV), sglang, or a token count")
    args = ap.parse_args()
    if args.ranks < 1:
        ap.error(f"--ranks {args.ranks}: the number of DP ranks must be at least 1")
    kv_per_rank: int | None = None
    if args.kv_per_rank == "sglang":
        kv_per_rank = sglang_kv_tokens_per_rank()
        print(f"KV per rank from SGLang's memory arithmetic: {kv_per_rank:,} tokens")
    elif args.kv_per_rank != "profile":
        if not args.kv_per_rank.isdigit() or int(args.kv_per_rank) < 1:
            ap.error(f"--kv-per-rank {args.kv_per_rank}: give profile, sglang or a positive token count")
        kv_per_rank = int(args.kv_per_rank)
    try:
        measured = read_results([args.results])
    except LlmperfError as exc:
        ap.error(f"--results: {exc}")
    chosen = [m for m in measured if m.config == args.config]
    if not chosen:
        known = ", ".join(sorted({m.config for m in measured}))
        ap.error(f"--config {args.config}: no result of that configuration under {args.results} (there: {known})")
    names = ("thr", "tpot", "med itl", "p99 itl", "ttft")
    for m in chosen:
        for label, pred in (
            ("node", predict(default_profiles(), m)),
            ("ranks", per_rank_replay(m, args.ranks, kv_per_rank)),
        ):
            errs = "  ".join(f"{n} {pred[k] / m.metrics[k] - 1:+5.0%}" for n, k in zip(names, METRICS, strict=True))
            print(f"{m.workload:18} {label:5}  {errs}")


if __name__ == "__main__":
    main()
