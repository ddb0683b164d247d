"""KV-cache capacity from an engine's own memory arithmetic, where the engine's source states it.

SGLang sizes its KV pool at start-up (``server_args._handle_gpu_memory_settings`` and
``ModelRunner.profile_max_num_token``, v0.5.6): ``mem_fraction_static`` of the GPU, less the weights the
rank holds, is the pool. Under DP attention that is much less than a TP rank gets: the reserve for
activations and CUDA graphs grows with the DP size, and every rank holds the whole attention.
"""

from __future__ import annotations

__all__ = [
    "H200_MIB",
    "KV_BYTES_BF16",
    "KV_BYTES_FP8",
    "LAYERS",
    "nonrouted_weight_share",
    "sglang_dp_attention_kv_tokens",
]

H200_MIB = 143_771  # an H200's memory as the CUDA driver reports it
LAYERS = 61
# bytes a token takes in one layer of DeepSeek-V3.2's cache: the MLA latent (512 + 64 values) and the DSA
# indexer's FP8 key with its scale (128 + 4); SGLang's FP8 layout stores the latent in 656 bytes
KV_BYTES_BF16 = (512 + 64) * 2 + 132
KV_BYTES_FP8 = 656 + 132
MIB = 1 << 20

# DeepSeek-V3.2's weights, bytes. The attention of all 61 layers: q_a, q_b, kv_a and o_proj in FP8; kv_b_proj
# at 2 bytes a parameter (the absorbed decode kernels' w_kc / w_vc copy of it is what a decode step reads);
# the DSA indexer's wq_b, wk and weights_proj. Then the 58 MoE layers' routed experts (FP8), the dense and
# shared MLPs (FP8), and the BF16 embedding / LM head.
ATTENTION_BYTES = LAYERS * (
    7168 * 1536 + 1536 * 128 * 192 + 7168 * 576 + 128 * 128 * 7168 + 2 * 512 * 128 * 256 + 1536 * 64 * 128 + 7168 * 192
)
ROUTED_BYTES = 58 * 256 * 3 * 7168 * 2048
MLP_BYTES = 58 * 3 * 7168 * 2048 + 3 * 3 * 7168 * 18432
VOCAB_BYTES = 129_280 * 7168 * 2


def sglang_dp_attention_kv_tokens(dp: int, bytes_per_token_layer: int = KV_BYTES_BF16) -> int:
    """KV tokens of one rank of ``sglang.launch_server --tp 8 --dp DP --enable-dp-attention`` serving
    DeepSeek-V3.2 on 8 H200 (SGLang 0.5.6's defaults).

    ``_handle_gpu_memory_settings``: chunked prefill 8192 and CUDA graphs to batch 512 on a 141 GB GPU,
    and it reserves 512 + 1.5 x 8192 + 2 x 512 + 1024 (tp 8) MiB, plus 3 x 512 x DP and 1.5 x 512 x DP
    for DP attention (graphs over batch 300), so ``mem_fraction_static`` = round((total - reserved) /
    total, 3): 0.769 at DP 8. The pool is that fraction of the GPU less the weights a rank holds: 1/8 of
    the routed experts, of the dense and shared MLPs and of the LM head, but the whole attention, DSA
    indexer and embedding, which DP attention replicates. CUDA context and NCCL buffers are not counted:
    the pool is an upper bound by what they take (~13,700 tokens a GiB).
    """
    reserved = 512 + 1.5 * 8192 + 2 * 512 + 8 / 8 * 1024 + 3 * 512 * dp + 1.5 * 512 * dp
    fraction = round((H200_MIB - reserved) / H200_MIB, 3)
    weights = ATTENTION_BYTES + VOCAB_BYTES + (ROUTED_BYTES + MLP_BYTES + VOCAB_BYTES) / 8
    pool = fraction * H200_MIB * MIB - weights
    return int(pool // (bytes_per_token_layer * LAYERS))


def nonrouted_weight_share(tp: int, attention_tp: int) -> float:
    """The non-routed weights one GPU reads every step, relative to the 8-way tensor-parallel layout.

    A step streams the weights every token passes through once per GPU. Under TP 8 each GPU holds 1/8
    of them; under DP attention each attention rank holds the whole attention (``attention_tp`` 1), and
    with ``-tp 1`` (vLLM's DP engines) the dense and shared MLPs and the LM head as well: 5.9x the TP
    layout's bytes for SGLang's ``--tp 8 --dp 8 --enable-dp-attention``, 8x for vLLM's ``-tp 1 -dp 8``.
    """
    tp8 = (ATTENTION_BYTES + MLP_BYTES + VOCAB_BYTES) / 8
    return (ATTENTION_BYTES / max(1, attention_tp) + (MLP_BYTES + VOCAB_BYTES) / max(1, tp)) / tp8
