"""The serving knobs of an engine command line, as the simulator models them.

The simulator is started with the engine's own arguments (``vllm serve MODEL -tp 8 ...``,
``python3 -m sglang.launch_server ...``, ``trtllm-serve ...``) and environment. :func:`parse_knobs`
reads the settings the DeepSeek-V3.2 study turns, one knob at a time, into :class:`Knobs`;
:meth:`Knobs.values` names each knob's setting (``parallel=tp8+dp8+dpattn``), which is how a
calibrated profile keys its per-knob factors (:mod:`pytest_llmperf.sim.calibrated`).
"""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["KNOB_NAMES", "Knobs", "knobs_from_command", "parse_knobs", "unread_flags"]

# the knobs, in the order their factors apply; each has one value at the engine's default
KNOB_NAMES = ("parallel", "spec", "attention", "kv_dtype", "context", "deep_gemm", "tool_call")

_DEEP_GEMM_OFF = {"VLLM_USE_DEEP_GEMM": "0", "SGLANG_ENABLE_JIT_DEEPGEMM": "0", "SGL_ENABLE_JIT_DEEPGEMM": "0",
                  "TRTLLM_DG_ENABLED": "0"}  # fmt: skip


@dataclass(frozen=True)
class Knobs:
    """What a command line sets. ``dp_attention``: attention runs data-parallel (one sequence set per
    rank), as SGLang's ``--enable-dp-attention`` and vLLM's ``-dp N`` with ``-tp 1`` do."""

    tp: int = 1
    dp: int = 1
    ep: bool = False
    dp_attention: bool = False
    spec_tokens: int = 0  # draft tokens verified per step (MTP / EAGLE)
    spec_name: str = ""
    attention: str = ""  # "" = the engine's default backend
    kv_dtype: str = ""  # "" = auto (the model's dtype, or the engine's default cache format)
    max_model_len: int | None = None
    deep_gemm: bool = True
    tool_call: bool = False

    @property
    def attention_ranks(self) -> int:
        """Ranks that split the sequences (and their KV cache) between them: ``dp`` under DP attention."""
        return self.dp if self.dp_attention else 1

    def values(self) -> dict[str, str]:
        """Each knob's setting; the engine defaults are ``"default"``."""
        layout = f"tp{self.tp}" + (f"+dp{self.dp}" if self.dp > 1 else "")
        layout += "+dpattn" if self.dp_attention else ""
        layout += "+ep" if self.ep else ""
        return {
            "parallel": layout,
            "spec": f"{self.spec_name}{self.spec_tokens}" if self.spec_tokens else "default",
            "attention": self.attention or "default",
            "kv_dtype": self.kv_dtype or "default",
            "context": str(self.max_model_len) if self.max_model_len else "default",
            "deep_gemm": "default" if self.deep_gemm else "off",
            "tool_call": "on" if self.tool_call else "default",
        }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    add = p.add_argument
    add("-tp", "--tensor-parallel-size", "--tp-size", "--tp", "--tp_size", dest="tp", type=int, default=1)
    add("-dp", "--data-parallel-size", "--dp-size", "--dp", "--dp_size", dest="dp", type=int, default=1)
    add("--enable-expert-parallel", "-ep", dest="enable_ep", action="store_true")
    add("--ep-size", "--ep", "--expert-parallel-size", "--ep_size", dest="ep_size", type=int, default=1)
    add("--enable-dp-attention", dest="dp_attention", action="store_true")
    add("--speculative-config", dest="spec_config", default=None)
    add("--speculative-algorithm", dest="spec_algorithm", default=None)
    add("--speculative-num-steps", dest="spec_steps", type=int, default=None)
    add("--speculative-num-draft-tokens", dest="spec_draft", type=int, default=None)
    add("--attention-backend", dest="attention", default=None)
    add("--nsa-decode-backend", "--decode-attention-backend", dest="decode_attention", default=None)
    add("--kv-cache-dtype", dest="kv_dtype", default=None)
    add("--max-model-len", "--context-length", "--max_seq_len", dest="max_model_len", type=int, default=None)
    add("--tool-call-parser", dest="tool_call_parser", default=None)
    return p


def parse_knobs(engine: str, args: Sequence[str], env: Mapping[str, str]) -> Knobs:
    """The knobs of ``engine``'s arguments (without its program name) and environment."""
    ns, _ = _parser().parse_known_args(list(args))
    spec_tokens, spec_name = 0, ""
    if ns.spec_config:
        try:
            cfg = json.loads(ns.spec_config)
        except ValueError:
            cfg = {}
        if isinstance(cfg, dict):
            spec_tokens = int(cfg.get("num_speculative_tokens") or 1)
            spec_name = str(cfg.get("method") or "spec")
    elif ns.spec_algorithm:
        spec_name = str(ns.spec_algorithm).lower()
        spec_tokens = (ns.spec_draft - 1) if ns.spec_draft else (ns.spec_steps or 1)
    attention = env.get("VLLM_ATTENTION_BACKEND", "") if engine == "vllm" else ""
    if ns.attention or ns.decode_attention:
        attention = "+".join(x for x in (ns.attention, ns.decode_attention) if x)
    dp_attention = bool(ns.dp_attention) or (engine == "vllm" and ns.dp > 1 and ns.tp == 1)
    kv = "" if ns.kv_dtype in (None, "auto") else str(ns.kv_dtype)
    return Knobs(
        tp=ns.tp,
        dp=ns.dp,
        ep=bool(ns.enable_ep) or ns.ep_size > 1,
        dp_attention=dp_attention,
        spec_tokens=max(0, spec_tokens),
        spec_name=spec_name,
        attention=attention,
        kv_dtype=kv,
        max_model_len=ns.max_model_len,
        deep_gemm=not any(env.get(k) == v for k, v in _DEEP_GEMM_OFF.items()),
        tool_call=ns.tool_call_parser is not None,
    )


def unread_flags(args: Sequence[str]) -> list[str]:
    """The arguments of ``args`` that no knob reads (what a calibrated profile leaves unmodelled)."""
    return _parser().parse_known_args(list(args))[1]


def knobs_from_command(engine: str, command: str) -> Knobs:
    """The knobs of a recorded command (``VAR=value ... program args``), as results and baselines keep it."""
    words = shlex.split(command)
    env: dict[str, str] = {}
    while words and "=" in words[0] and not words[0].startswith("-"):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    return parse_knobs(engine, words, env)
