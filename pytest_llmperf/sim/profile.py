"""Step-time models of the simulated engine: :class:`Profile`, and the named ones (:data:`PROFILES`).

A profile gives a step's duration from what the step runs; the H200 ones are the starting point of a
calibration (:mod:`pytest_llmperf.sim.calibrated` turns measured results into profiles per knob setting).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PROFILES", "Profile"]


@dataclass(frozen=True)
class Profile:
    """Step-time model: ``overhead + weights(batch) + decode seqs + prefill tokens + context held``.

    ``weights(batch)`` models a mixture-of-experts weight stream: the non-routed part plus the
    routed experts touched by the batch, ``routed_full_s * (1 - (1 - topk/experts) ** batch)``.
    Dense profiles leave it at 0.
    """

    name: str
    description: str
    step_overhead_s: float
    decode_per_seq_s: float
    prefill_per_token_s: float
    context_per_token_s: float
    max_num_seqs: int
    max_num_batched_tokens: int
    kv_capacity_tokens: int
    block_size: int = 16
    nonrouted_weights_s: float = 0.0
    routed_full_s: float = 0.0
    experts: int = 256
    topk: int = 8
    # speculative decoding (MTP / EAGLE): draft tokens verified per decode step, and the fraction of them
    # accepted on average; a decoding request gains 1 + accept * spec_tokens tokens a step (deterministic)
    spec_tokens: int = 0
    spec_accept: float = 0.0
    # prefill attention, per (prompt token, earlier token) pair: the main attention reads at most
    # ``sparse_keys`` keys (DeepSeek-V3.2's DSA top-k), the indexer all of them; 0 leaves it out
    attn_pair_s: float = 0.0
    index_pair_s: float = 0.0
    sparse_keys: int = 2048
    # the scheduler's policy: False mixes decodes and prefill chunks in one step, decodes first (vLLM,
    # TensorRT-LLM); True runs a prefill-only step whenever a prompt can be admitted or continued, and
    # decodes only when none can (SGLang's default, without --enable-mixed-chunk)
    prefill_first: bool = False
    # attention ranks that each schedule their own requests (SGLang's DP attention: one scheduler per DP
    # rank): requests are dealt round-robin, a rank has 1/dp_ranks of the KV cache, the token budget and
    # the running cap, and a step is one forward of every rank (pytest_llmperf.sim.ranks); 1: one scheduler
    dp_ranks: int = 1
    # admission keeps this fraction of every running request's remaining output free in the KV cache
    # (SGLang's new_token_ratio; 0: admit on the prompt alone, as vLLM does)
    admit_reserve: float = 0.0
    calibration: str = ""  # where the numbers come from (a calibration file and its source), "" for a hand-set model

    def prefill_attention(self, start: int, chunk: int) -> float:
        """Attention time of prompt positions ``start .. start + chunk - 1`` (each attends to the ones before)."""
        if not (self.attn_pair_s or self.index_pair_s) or chunk <= 0:
            return 0.0
        end = start + chunk
        pairs = (end * (end - 1) - start * (start - 1)) // 2  # sum of positions
        k = self.sparse_keys
        if end <= k:
            capped = pairs
        elif start >= k:
            capped = k * chunk
        else:
            capped = (k * (k - 1) - start * (start - 1)) // 2 + k * (end - k)
        return self.attn_pair_s * capped + self.index_pair_s * pairs

    def step_time(self, batch: int, n_decode: int, n_prefill_tokens: int, context_tokens: int) -> float:
        t = (
            self.step_overhead_s
            + self.decode_per_seq_s * n_decode
            + self.prefill_per_token_s * n_prefill_tokens
            + self.context_per_token_s * context_tokens
        )
        if self.routed_full_s and batch:
            t += self.nonrouted_weights_s + self.routed_full_s * (1.0 - (1.0 - self.topk / self.experts) ** batch)
        return t


def _h200(engine: str, overhead_s: float, max_num_seqs: int, batched: int) -> Profile:
    # DeepSeek-V3.2 (671 B MoE, FP8) on one 8xH200 node, from the roofline in
    # ../shared/reference/simulators-and-h200-model.md (b.4): ~84 GB/GPU of routed experts streamed
    # per step at large batch (~22 ms at 80 % of 4.8 TB/s), ~2 GB/GPU non-routed (~0.5 ms),
    # ~13 us per prompt token (75k prompt tok/s per node), a few ns per context token (DSA caps the
    # main attention at 2048 keys; the indexer reads all). A model, not a measurement.
    return Profile(
        name=f"h200-{engine}",
        description=f"DeepSeek-V3.2 on 8xH200 ({engine}-shaped overheads); an analytic model, not a measurement",
        step_overhead_s=overhead_s,
        decode_per_seq_s=0.000005,
        prefill_per_token_s=0.0000133,
        context_per_token_s=0.000000004,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=batched,
        kv_capacity_tokens=700_000,
        nonrouted_weights_s=0.0005,
        routed_full_s=0.022,
    )


PROFILES: dict[str, Profile] = {
    # Fast, engine-shaped and light on the host: ~8 ms steps at small batch, so a suite on 2 CPU
    # cores keeps the simulator and the client well below saturation.
    "cpu-small": Profile(
        name="cpu-small",
        description="small dense model on a fast accelerator: ~8 ms steps, +0.15 ms per running sequence",
        step_overhead_s=0.008,
        decode_per_seq_s=0.00015,
        prefill_per_token_s=0.000004,
        context_per_token_s=0.00000002,
        max_num_seqs=256,
        max_num_batched_tokens=8192,
        kv_capacity_tokens=1_000_000,
    ),
    "h200-vllm": _h200("vllm", 0.006, 1024, 8192),
    "h200-sglang": _h200("sglang", 0.005, 1024, 16384),
    "h200-trtllm": _h200("trtllm", 0.0045, 2048, 8192),
}
