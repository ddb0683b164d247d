"""Typed configuration: engine configs, workloads and the matrix that combines them.

A matrix file is TOML::

    [defaults]
    markers = ["sim"]          # markers applied to every test of this matrix (h200: needs an 8xH200 node)

    [defaults.images]          # each engine's release image, named once (optional; a config may set its own
    vllm = "vllm/vllm-openai:v0.13.0"   # image = "...", or python = "/venvs/vllm/bin/python")

    [gate.tolerance]           # relative tolerance per metric (optional)
    output_throughput = 0.05

    [[engines]]
    id = "sim-default"
    engine = "sim"
    model = "sim-model"
    max_num_seqs = 64

    [[workloads]]
    id = "random-256x64"
    dataset = "random"
    random_input_len = 256
    random_output_len = 64
    num_prompts = 64
    max_concurrency = 16

Every engine runs every workload unless it lists ``workloads = [ids]``.
A bad file raises :class:`ConfigError` naming the file, the entry and the field.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pytest_llmperf.config_messages import describe_location, near_name
from pytest_llmperf.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "Case",
    "EngineConfig",
    "Matrix",
    "MatrixDefaults",
    "SimOptions",
    "Speculative",
    "Unsupported",
    "Workload",
    "expand_cases",
    "find_matrices",
    "load_matrix",
]

EngineName = Literal["sim", "vllm", "sglang", "trtllm"]
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_id(value: str) -> str:
    if not _ID_RE.match(value):
        raise ValueError(
            "must start with a letter or digit and contain only letters, digits and '_ . + -' "
            f"(it becomes part of test ids and file names), got {value!r}"
        )
    return value


class SimOptions(_Strict):
    """Options of the built-in simulated engine (``engine = "sim"``)."""

    profile: Literal["cpu-small", "deterministic"] = "cpu-small"
    ttft_ms: float = Field(default=50.0, gt=0)
    itl_ms: float = Field(default=50.0, gt=0)
    slowdown: float = Field(default=1.0, gt=0)
    jitter: float = Field(default=0.0, ge=0, lt=1)  # relative std-dev of step times: run-to-run noise
    seed: int = 0


class Unsupported(_Strict):
    """A configuration the engine is known to reject at start-up: a strict expected failure.

    ``match`` is a regular expression searched in the server's log; ``message`` (optional) is the
    engine's error text as published, which ``--llmperf-simulate`` makes the simulator print.
    """

    match: str
    reason: str
    issue: str | None = None
    message: str | None = None

    @field_validator("match")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class Speculative(_Strict):
    """Speculative decoding. vLLM renders ``--speculative-config`` JSON from ``method`` and
    ``num_speculative_tokens``; SGLang renders its EAGLE flags from ``algorithm``, ``num_steps``,
    ``eagle_topk`` and ``num_draft_tokens``."""

    method: str | None = None
    num_speculative_tokens: int | None = Field(default=None, ge=1)
    algorithm: str | None = None
    num_steps: int | None = Field(default=None, ge=1)
    eagle_topk: int | None = Field(default=None, ge=1)
    num_draft_tokens: int | None = Field(default=None, ge=1)


class EngineConfig(_Strict):
    """One engine server configuration: what is launched, once, for all its workloads.

    The typed knobs are rendered into each engine's own flags and environment (see
    ``pytest_llmperf/engines/launch.py``); ``extra_args`` and ``env`` are appended as they are.
    """

    id: str
    engine: EngineName
    model: str
    version: str | None = None  # the engine version the config is written for (selects renamed flags)
    # the words before the model in place of the engine's usual ones (`vllm serve`): for example
    # ["{python}", "-m", "vllm.entrypoints.openai.api_server", "--model"]; {python} is this interpreter
    launcher: tuple[str, ...] | None = None
    # the engine's environment: a release container image (its command runs inside it), or the Python of a
    # virtual environment of its own; default: the matrix's [defaults.images] / [defaults.pythons] for the engine
    image: str | None = None
    python: str | None = None
    served_model_name: str | None = None
    host: str | None = None  # listen address; default 127.0.0.1 (the client always uses loopback)
    port: int | None = Field(default=None, ge=1, le=65535)  # default: a free port chosen at launch
    tensor_parallel_size: int | None = Field(default=None, ge=1)
    data_parallel_size: int | None = Field(default=None, ge=1)
    pipeline_parallel_size: int | None = Field(default=None, ge=1)
    decode_context_parallel_size: int | None = Field(default=None, ge=1)
    enable_expert_parallel: bool = False  # vLLM: EP over TP x DP
    expert_parallel_size: int | None = Field(default=None, ge=1)  # SGLang, TensorRT-LLM
    dp_attention: bool = False  # SGLang --enable-dp-attention
    attention_backend: str | None = None
    prefill_attention_backend: str | None = None  # SGLang NSA/DSA prefill backend
    decode_attention_backend: str | None = None  # SGLang NSA/DSA decode backend
    kv_cache_dtype: str | None = None
    max_model_len: int | None = Field(default=None, ge=1)
    max_num_seqs: int | None = Field(default=None, ge=1)
    speculative: Speculative | None = None
    tokenizer_mode: str | None = None
    reasoning_parser: str | None = None
    tool_call_parser: str | None = None
    enable_auto_tool_choice: bool = False
    chat_template: str | None = None
    deep_gemm: bool | None = None  # False: turn DeepGEMM off through the engine's environment switch
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    gpus: int | None = Field(default=None, ge=0)  # GPUs the server needs; default: the parallel sizes' product
    tokenizer: str | None = None  # a local tokenizer for building prompts; default: the server's /tokenize
    startup_timeout_s: float = Field(default=600.0, gt=0)
    markers: tuple[str, ...] = ()
    workloads: tuple[str, ...] | None = None
    unsupported: Unsupported | None = None
    knob: str | None = None  # the study's optimization option this config varies (reports)
    derives_from: str | None = None  # the config id it changes one knob of (reports)
    note: str | None = None
    sim: SimOptions = Field(default_factory=lambda: SimOptions())

    _id = field_validator("id")(_check_id)

    @model_validator(mode="after")
    def _engine_specific(self) -> EngineConfig:
        if self.enable_expert_parallel and self.engine not in ("vllm", "sim"):
            raise ValueError("enable_expert_parallel is vLLM's switch; use expert_parallel_size for " + self.engine)
        if self.dp_attention and self.engine not in ("sglang", "sim"):
            raise ValueError("dp_attention is an SGLang switch (vLLM: data_parallel_size with enable_expert_parallel)")
        if self.image and self.python:
            raise ValueError("give image (a container) or python (a virtual environment), not both")
        return self

    @property
    def request_model(self) -> str:
        """The model name sent in requests (vLLM's ``--served-model-name`` when set)."""
        return self.served_model_name or self.model

    @property
    def gpus_needed(self) -> int:
        if self.gpus is not None:
            return self.gpus
        if self.engine == "sim":
            return 0
        if self.engine == "sglang" and self.dp_attention:
            return self.tensor_parallel_size or 1  # DP attention ranks live inside the TP group
        return (self.tensor_parallel_size or 1) * (self.data_parallel_size or 1) * (self.pipeline_parallel_size or 1)


class Workload(_Strict):
    """A benchmark workload, with the names and defaults of ``vllm bench serve``."""

    id: str
    dataset: Literal["random", "sharegpt"] = "random"
    dataset_path: str | None = None
    backend: Literal["openai-chat", "openai"] = "openai-chat"
    endpoint: str | None = None
    num_prompts: int = Field(100, ge=1)
    random_input_len: int = Field(1024, ge=1)
    random_output_len: int = Field(128, ge=1)
    random_range_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    random_prefix_len: int = Field(0, ge=0)
    sharegpt_output_len: int | None = Field(None, ge=1)
    request_rate: float = Field(math.inf, gt=0)
    burstiness: float = Field(1.0, gt=0)
    max_concurrency: int | None = Field(None, ge=1)
    seed: int = 0
    ignore_eos: bool = False
    num_warmups: int = Field(0, ge=0)
    timeout_s: float = Field(3600.0, gt=0)
    stall_timeout_s: float = Field(120.0, gt=0)  # one stream without a byte this long fails
    # no byte on any open stream this long: the engine has stalled; the run stops and its requests fail
    server_stall_timeout_s: float = Field(30.0, gt=0)
    markers: tuple[str, ...] = ()

    _id = field_validator("id")(_check_id)

    @field_validator("request_rate", mode="before")
    @classmethod
    def _rate(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == "inf":
            return math.inf
        return value

    @property
    def resolved_endpoint(self) -> str:
        if self.endpoint:
            return self.endpoint
        return "/v1/chat/completions" if self.backend == "openai-chat" else "/v1/completions"


class MatrixDefaults(_Strict):
    markers: tuple[str, ...] = ()
    images: dict[EngineName, str] = Field(default_factory=dict)  # each engine's container image, named once
    pythons: dict[EngineName, str] = Field(default_factory=dict)  # or each engine's virtual environment


class GateSettings(_Strict):
    tolerance: dict[str, float] = Field(default_factory=dict)

    @field_validator("tolerance")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        for metric, tol in value.items():
            if not 0 < tol < 1:
                raise ValueError(f"tolerance of {metric!r} must be a fraction in (0, 1), got {tol}")
        return value


class Matrix(_Strict):
    defaults: MatrixDefaults = Field(default_factory=MatrixDefaults)
    gate: GateSettings = Field(default_factory=GateSettings)
    engines: tuple[EngineConfig, ...]
    workloads: tuple[Workload, ...]

    @model_validator(mode="before")
    @classmethod
    def _engine_defaults(cls, data: Any) -> Any:
        """[defaults.images] / [defaults.pythons] fill the configs of each engine that name neither."""
        if not isinstance(data, dict):
            return data
        defaults = data.get("defaults") or {}
        images, pythons = defaults.get("images") or {}, defaults.get("pythons") or {}
        if not images and not pythons:
            return data
        engines = []
        for entry in data.get("engines") or []:
            if isinstance(entry, dict) and not entry.get("image") and not entry.get("python"):
                engine = entry.get("engine")
                if engine in images:
                    entry = {**entry, "image": images[engine]}
                elif engine in pythons:
                    entry = {**entry, "python": pythons[engine]}
            engines.append(entry)
        return {**data, "engines": engines}

    @model_validator(mode="after")
    def _consistent(self) -> Matrix:
        for kind, entries in (("engines", self.engines), ("workloads", self.workloads)):
            seen: set[str] = set()
            for entry in entries:
                if entry.id in seen:
                    raise ValueError(f"{kind}: duplicate id {entry.id!r}")
                seen.add(entry.id)
        known = {w.id for w in self.workloads}
        for engine in self.engines:
            for wid in engine.workloads or ():
                if wid not in known:
                    raise ValueError(
                        f"engines (id={engine.id!r}): workload {wid!r} is not defined; known workloads: {sorted(known)}"
                    )
        return self


@dataclass(frozen=True)
class Case:
    """One (engine config, workload) pair: one perf test."""

    engine: EngineConfig
    workload: Workload
    matrix_path: Path
    tolerance: dict[str, float]
    markers: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.engine.id}-{self.workload.id}"


def load_matrix(path: str | Path) -> Matrix:
    """Read and validate a matrix TOML file."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: matrix file not found") from None
    try:
        data = tomllib.loads(raw)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return Matrix.model_validate(data)
    except ValidationError as exc:
        lines = [f"{path}: invalid matrix ({exc.error_count()} error(s))"]
        for err in exc.errors():
            lines.append(
                f"  {describe_location(data, tuple(err['loc']))}: {err['msg']}{near_name(err, Matrix, _MODELS)}"
            )
        raise ConfigError("\n".join(lines)) from None


_MODELS: dict[str, type[BaseModel]] = {
    "engines": EngineConfig,
    "workloads": Workload,
    "defaults": MatrixDefaults,
    "gate": GateSettings,
    "sim": SimOptions,
    "unsupported": Unsupported,
    "speculative": Speculative,
}


def expand_cases(matrix: Matrix, path: Path) -> list[Case]:
    """Every (engine, workload) pair of a matrix, in file order, engines outermost."""
    cases: list[Case] = []
    for engine in matrix.engines:
        for workload in matrix.workloads:
            if engine.workloads is not None and workload.id not in engine.workloads:
                continue
            markers = tuple(dict.fromkeys(matrix.defaults.markers + engine.markers + workload.markers))
            cases.append(Case(engine, workload, path, dict(matrix.gate.tolerance), markers))
    return cases


def find_matrices(path: Path) -> list[tuple[Path, Matrix]]:
    """A matrix file, or every ``*.toml`` under a folder that defines ``[[engines]]``."""
    if path.is_file():
        return [(path, load_matrix(path))]
    if not path.is_dir():
        raise ConfigError(f"{path}: no such file or folder")
    found = []
    for file in sorted(path.rglob("*.toml")):
        if "[[engines]]" in file.read_text(encoding="utf-8"):
            found.append((file, load_matrix(file)))
    if not found:
        raise ConfigError(f"{path}: no matrix file (a *.toml with [[engines]]) found")
    return found
