"""Calibrated engine profiles: an engine family's step-time constants and, per knob setting, the factors
that setting applies, with the mechanisms below; read from and written to a TOML file.

Mechanisms (structural: follow from the command line, nothing fitted):

* parallel layout: under DP attention (SGLang ``--enable-dp-attention --dp N``, vLLM ``-dp N -tp 1``)
  each of the N ranks holds only its own sequences: KV capacity x N, and the attention reads of the
  context per step / N (under TP the single latent KV head of MLA is replicated on every rank); each
  rank holds and streams the whole attention's weights every step (``kv_capacity.nonrouted_weight_share``:
  5.9x TP 8's non-routed bytes for SGLang's ``--tp 8 --dp 8``, 8x for vLLM's ``-tp 1 -dp 8``);
* SGLang's DP attention: one scheduler per DP rank, stepping in lockstep (``pytest_llmperf.sim.ranks``:
  requests dealt round-robin, a rank's own KV pool, token budget and running cap), with the KV pool
  SGLang's own memory arithmetic gives a rank (``kv_capacity.sglang_dp_attention_kv_tokens``: 234,290
  tokens on an H200, where the attention weights and a larger activation reserve take their share);
* speculative decoding (MTP, EAGLE): each decoding sequence verifies ``1 + k`` tokens a step and gains
  ``1 + accept * k``; SGLang caps running requests at 48 with speculative decoding (its default);
* KV capacity (a TP rank; SGLang's DP-attention rank above): ~35 GB per GPU after the FP8 weights, at
  1284 B per token and layer (BF16 latent, FP8 indexer keys: ../shared/reference/simulators-and-h200-model.md,
  b.4): ~447k tokens per attention rank; an FP8 cache (788 B) holds 1.63x that;
* prefill attention: each prompt token attends to the ones before it, the main attention to at most
  2048 of them (DSA), the indexer to all: a cost per (query, key) pair from the FLOP counts of b.4;
* context length: requests longer than the maximum are refused, as the engine does.

* scheduler: vLLM and TensorRT-LLM mix decodes and prefill chunks in one step (decodes first, within
  the token budget); SGLang runs prefill-only batches whenever a prompt can be admitted, and admits
  with room kept for the running requests' output.

Fitted, per knob setting (bounded 0.25-4, prior 1.0): ``overhead`` (the per-step fixed cost:
communication, launches, the API server's per-step work), ``per_seq`` (per decoding sequence),
``prefill`` (per prompt token), and for speculative decoding ``accept`` (the acceptance rate, prior
0.8). A factor is where a knob's effect beyond its mechanism goes; a factor at a bound says the
mechanism is missing something (``llmperf sim calibrate`` prints them).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import tomllib

from pytest_llmperf.errors import LlmperfError
from pytest_llmperf.sim.engine import PROFILES, Profile
from pytest_llmperf.sim.knobs import KNOB_NAMES, Knobs
from pytest_llmperf.sim.kv_capacity import (
    KV_BYTES_BF16,
    KV_BYTES_FP8,
    LAYERS,
    nonrouted_weight_share,
    sglang_dp_attention_kv_tokens,
)

__all__ = [
    "BASE_BOUNDS",
    "FACTOR_BOUNDS",
    "KNOB_FIT",
    "PRIOR",
    "FamilyProfile",
    "ProfileSet",
    "calibration_key",
    "default_profiles",
    "load_profiles",
    "simulation_label",
]

FACTOR_FIELDS = {
    "overhead": "step_overhead_s",
    "per_seq": "decode_per_seq_s",
    "prefill": "prefill_per_token_s",
    "context": "context_per_token_s",
    "moe": "routed_full_s",
}
# every knob fits the three step-time terms its setting may move (its unexplained effect goes there);
# speculative decoding also fits its acceptance rate
_TERMS = ("overhead", "per_seq", "prefill")
KNOB_FIT: dict[str, tuple[str, ...]] = {name: _TERMS for name in KNOB_NAMES}
KNOB_FIT["spec"] = ("accept", *_TERMS)
PRIOR: dict[str, float] = {"accept": 0.8}
FACTOR_BOUNDS: dict[str, tuple[float, float]] = {"accept": (0.05, 1.0)}
DEFAULT_FACTOR_BOUNDS = (0.25, 4.0)
# the family constants a calibration fits, with their bounds (seconds; tokens for kv_tokens)
BASE_BOUNDS: dict[str, tuple[float, float]] = {
    "step_overhead_s": (0.001, 0.2),
    "decode_per_seq_s": (1e-6, 2e-3),
    "prefill_per_token_s": (2e-6, 5e-4),
}
# prefill attention per (query, key) pair on the node. Prefill runs MLA un-absorbed (as multi-head attention
# with 128 heads of 192-dim queries/keys and 128-dim values): 2 x 128 x (192 + 128) = 82 kFLOP per pair and
# layer, 5.0 MFLOP over 61 layers, at 40 % of 8 x 989 TFLOPS (BF16); the indexer ~1 MFLOP at 40 % of
# 8 x 1979 TFLOPS (FP8): the roofline note, b.4
ATTN_PAIR_S = 2 * 128 * (192 + 128) * 61 / (0.4 * 8 * 989e12)
INDEX_PAIR_S = 1e6 / (0.4 * 8 * 1979e12)
# KV capacity per attention rank: ~35 GB/GPU left after the FP8 weights (~85 GB) at 0.9 utilisation, at
# V3.2's BF16 latent + FP8 indexer bytes (1284 B x 61 layers); the FP8 cache format is 788 B x 61
KV_TOKENS_BF16 = 35e9 / (KV_BYTES_BF16 * LAYERS)
FP8_CAPACITY = KV_BYTES_BF16 / KV_BYTES_FP8  # BF16 latent + indexer bytes per token over the FP8 layout's
SPEC_MAX_RUNNING = {"sglang": 48}
PREFILL_FIRST = {"sglang"}  # SGLang runs prefill-only batches first (no --enable-mixed-chunk by default)
ADMIT_RESERVE = {"sglang": 0.3}  # and admits with output room reserved (new_token_ratio, between 0.7 and 0.1)
PER_RANK_SCHEDULERS = {"sglang"}  # under DP attention, one scheduler per DP rank (pytest_llmperf.sim.ranks)


DEFAULT_PROFILE_FILE = Path(__file__).with_name("profiles") / "deepseek-v32-h200.toml"


def default_profiles() -> ProfileSet:
    """The packaged calibration (the study's profiles), or the uncalibrated roofline where it is missing."""
    try:
        return _load_cached(str(DEFAULT_PROFILE_FILE), DEFAULT_PROFILE_FILE.stat().st_mtime_ns)
    except FileNotFoundError:
        return ProfileSet({})


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int) -> ProfileSet:
    return load_profiles(path)


def calibration_key(engine: str) -> str:
    """A short name of the calibration an ``h200-<engine>`` profile uses: part of a simulated result's hardware key."""
    ps = default_profiles()
    if engine not in ps.families or ps.path is None:
        return "uncalibrated"
    return f"{ps.path.name} {ps.digest[:12]}"  # the content's hash: any recalibration changes it


def simulation_label(engine: str, profile: str = "") -> str:
    """What a simulated result says of itself: the simulator, and where its profile's numbers come from."""
    if engine == "sim":
        return f"llmperf-sim, profile {profile or 'cpu-small'} (a hand-set model)"
    ps = default_profiles()
    if engine not in ps.families:
        return f"llmperf-sim, profile h200-{engine} (uncalibrated: an analytic roofline, not a measurement)"
    return f"llmperf-sim, H200 profiles {ps.label}"


def factor_bounds(name: str) -> tuple[float, float]:
    return FACTOR_BOUNDS.get(name, DEFAULT_FACTOR_BOUNDS)


@dataclass
class FamilyProfile:
    """One engine family's calibrated model: base constants and per-knob-setting factors."""

    engine: str
    base: dict[str, float]
    knobs: dict[str, dict[str, float]] = field(default_factory=dict)  # "parallel=tp8+dp8+dpattn" -> factors
    fitted_on: dict[str, str] = field(default_factory=dict)  # the base's or a knob's key -> configuration id

    @classmethod
    def uncalibrated(cls, engine: str) -> FamilyProfile:
        p = PROFILES.get(f"h200-{engine}", PROFILES["h200-vllm"])
        base = {
            "step_overhead_s": p.step_overhead_s,
            "decode_per_seq_s": p.decode_per_seq_s,
            "prefill_per_token_s": p.prefill_per_token_s,
            "context_per_token_s": p.context_per_token_s,
            "kv_tokens": float(round(KV_TOKENS_BF16)),
            "max_num_seqs": float(p.max_num_seqs),
            "max_num_batched_tokens": float(p.max_num_batched_tokens),
            "nonrouted_weights_s": p.nonrouted_weights_s,
            "routed_full_s": p.routed_full_s,
        }
        return cls(engine, base)

    def factors(self, knobs: Knobs) -> tuple[dict[str, float], list[str]]:
        """The product of every knob setting's factors; notes name the settings with no calibration."""
        out: dict[str, float] = {}
        notes: list[str] = []
        for name, value in knobs.values().items():
            if value == "default":
                continue
            key = f"{name}={value}"
            got = self.knobs.get(key)
            if got is None:
                if key not in self.fitted_on:
                    notes.append(f"{key}: not calibrated (mechanism only)")
                continue
            for f, v in got.items():
                out[f] = out.get(f, PRIOR.get(f, 1.0)) * v if f != "accept" else v
        return out, notes

    def profile(self, knobs: Knobs, *, label: str = "", extra: Mapping[str, float] | None = None) -> Profile:
        """The step-time model of this family under ``knobs`` (``extra``: factors tried by a calibration)."""
        factors, _ = self.factors(knobs)
        for f, v in (extra or {}).items():
            factors[f] = v if f == "accept" else factors.get(f, 1.0) * v
        b = self.base
        ranks = knobs.attention_ranks
        tp = max(1, knobs.tp)  # the layout the weights are split by (8 in every study configuration but vLLM's DP)
        kv = b["kv_tokens"] * ranks
        if knobs.kv_dtype.startswith("fp8"):
            kv *= FP8_CAPACITY
        if self.engine == "sglang" and ranks > 1:  # its own arithmetic: a DP-attention rank holds the whole attention
            cell = KV_BYTES_FP8 if knobs.kv_dtype.startswith("fp8") else KV_BYTES_BF16
            kv = sglang_dp_attention_kv_tokens(ranks, cell) * ranks
        dp_ranks = ranks if self.engine in PER_RANK_SCHEDULERS else 1
        max_seqs = int(b["max_num_seqs"])
        if knobs.spec_tokens and self.engine in SPEC_MAX_RUNNING:
            max_seqs = min(max_seqs, SPEC_MAX_RUNNING[self.engine])
        values = {f: b.get(fieldname, 0.0) * factors.get(f, 1.0) for f, fieldname in FACTOR_FIELDS.items()}
        return Profile(
            name=f"h200-{self.engine}",
            description=f"DeepSeek-V3.2 on 8xH200, {self.engine}, calibrated",
            step_overhead_s=values["overhead"],
            decode_per_seq_s=values["per_seq"],
            prefill_per_token_s=values["prefill"],
            context_per_token_s=values["context"] / ranks,
            max_num_seqs=max_seqs,
            max_num_batched_tokens=int(b["max_num_batched_tokens"]),
            kv_capacity_tokens=int(kv),
            nonrouted_weights_s=b.get("nonrouted_weights_s", 0.0) * nonrouted_weight_share(tp, max(1, tp // ranks)),
            routed_full_s=values["moe"],
            prefill_first=self.engine in PREFILL_FIRST,
            admit_reserve=ADMIT_RESERVE.get(self.engine, 0.0),
            dp_ranks=dp_ranks,
            attn_pair_s=ATTN_PAIR_S,
            index_pair_s=INDEX_PAIR_S,
            spec_tokens=knobs.spec_tokens,
            spec_accept=factors.get("accept", PRIOR["accept"]) if knobs.spec_tokens else 0.0,
            calibration=label,
        )


@dataclass
class ProfileSet:
    """Every family of one calibration file, with where its numbers come from."""

    families: dict[str, FamilyProfile]
    source: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    digest: str = ""  # sha256 of the file it was read from ("" for one not read from a file)

    @property
    def label(self) -> str:
        where = self.path.name if self.path else "uncalibrated"
        return f"{where}, calibrated on {self.source.get('calibrated_from', 'nothing: an analytic roofline')}"

    def family(self, engine: str) -> FamilyProfile:
        return self.families.get(engine) or FamilyProfile.uncalibrated(engine)

    def profile(self, engine: str, knobs: Knobs) -> tuple[Profile, list[str]]:
        fam = self.family(engine)
        _, notes = fam.factors(knobs)
        if engine not in self.families:
            notes.insert(0, f"no calibrated profile for {engine}: the analytic roofline")
        return fam.profile(knobs, label=self.label), notes

    def dumps(self) -> str:
        lines = [
            "# Simulated-engine profiles calibrated from measured results (llmperf sim calibrate).",
            "# Written by a tool: edit the measurements or the calibration, not this file.",
            "",
            "[source]",
        ]
        lines += [f"{k} = {_toml(v)}" for k, v in self.source.items()]
        for engine, fam in self.families.items():
            lines += ["", f"[{engine}]"]
            lines += [f"{k} = {_toml(v)}" for k, v in fam.base.items()]
            if fam.fitted_on:
                lines += ["", f"[{engine}.fitted_on]"]
                lines += [f"{_key(k)} = {_toml(v)}" for k, v in fam.fitted_on.items()]
            for key, factors in fam.knobs.items():
                lines += ["", f"[{engine}.knobs.{_key(key)}]"]
                lines += [f"{k} = {_toml(v)}" for k, v in factors.items()]
        return "\n".join(lines) + "\n"


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else '"' + k.replace('"', '\\"') + '"'


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.6g}" if "e" not in f"{v:.6g}" and "." in f"{v:.6g}" else repr(float(f"{v:.6g}"))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def load_profiles(path: str | Path) -> ProfileSet:
    """Read a calibration file; a :class:`LlmperfError` naming the file and the field when it is wrong."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        data = tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise LlmperfError(f"simulator profile file {path} not found (write one: llmperf sim calibrate ...)") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise LlmperfError(f"simulator profile file {path}: {exc}") from None
    source = data.pop("source", {})
    families: dict[str, FamilyProfile] = {}
    for engine, table in data.items():
        if not isinstance(table, dict):
            raise LlmperfError(f"{path}: [{engine}] must be a table of an engine's constants")
        base = {k: float(v) for k, v in table.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        missing = [k for k in (*BASE_BOUNDS, "kv_tokens", "max_num_seqs", "max_num_batched_tokens") if k not in base]
        if missing:
            raise LlmperfError(f"{path}: [{engine}] lacks {', '.join(missing)}")
        knobs = {str(k): {f: float(x) for f, x in v.items()} for k, v in table.get("knobs", {}).items()}
        for key in knobs:
            if key.partition("=")[0] not in KNOB_NAMES:
                raise LlmperfError(f"{path}: [{engine}.knobs] {key!r}: the knob must be one of {', '.join(KNOB_NAMES)}")
        fam = FamilyProfile(engine, base, knobs, {str(k): str(v) for k, v in table.get("fitted_on", {}).items()})
        families[engine] = fam
    return ProfileSet(families, source, path, hashlib.sha256(raw).hexdigest())


def with_base(fam: FamilyProfile, **base: float) -> FamilyProfile:
    return replace(fam, base={**fam.base, **base})
