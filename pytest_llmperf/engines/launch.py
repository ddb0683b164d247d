"""Render an :class:`EngineConfig` into the command line and environment that start its server.

Each engine has its own spelling of the same knob (``-tp`` / ``--tp-size`` / ``--tp_size``);
flags an engine renamed across versions are chosen by ``EngineConfig.version`` where it is known:

* vLLM: ``VLLM_ATTENTION_BACKEND`` (environment) before 0.14, ``--attention-backend`` from 0.14 on
  (the variable was deprecated by vLLM PR #26315 and is silently ignored by 0.26, issue #50292).
* SGLang: the DeepSeek sparse-attention backends follow the ``attention_backend`` spelling the config
  uses: ``nsa`` renders ``--nsa-prefill-backend``/``--nsa-decode-backend``, ``dsa`` the ``--dsa-*`` names.

Without a port, the command is rendered as a user would type it (the engine's default port); the
launcher adds ``--port N`` with a free port. ``--llmperf-simulate`` runs the same argument list on
the simulated engine (:func:`simulate_launch`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pytest_llmperf.config import EngineConfig
from pytest_llmperf.engines.container import (
    CONFIG_LABEL,
    OWNER_LABEL,
    SESSION_LABEL,
    Container,
    container_argv,
    container_name,
    env_names,
    mounts_for,
)
from pytest_llmperf.redact import redact_argv, redact_env

__all__ = [
    "LaunchSpec",
    "canonical_command",
    "container_command",
    "container_for",
    "containerize",
    "parse_version",
    "render_launch",
    "simulate_launch",
]

ENGINE_PREFIX: dict[str, tuple[str, ...]] = {
    "vllm": ("vllm", "serve"),
    "sglang": ("python3", "-m", "sglang.launch_server"),
    "trtllm": ("trtllm-serve",),
}


@dataclass(frozen=True)
class LaunchSpec:
    config_id: str
    argv: tuple[str, ...]  # what is executed: the engine's command, or the container runtime's around it
    env: dict[str, str] = field(default_factory=dict)
    container: Container | None = None  # the engine runs in this container (argv is the runtime's ``run``)

    def shell(self) -> str:
        """The command as a user would type it, environment first; secrets (``HF_TOKEN``, ``--api-key``,
        URL credentials) masked, since this text goes into logs, results and baselines."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(redact_env(self.env).items()))
        cmd = shlex.join(redact_argv(self.argv))
        return f"{env} {cmd}" if env else cmd


def parse_version(version: str | None) -> tuple[int, ...] | None:
    """``"v0.13.0"`` -> (0, 13, 0); ``"1.2.0rc5"`` -> (1, 2, 0); ``None`` when unknown."""
    if not version:
        return None
    m = re.match(r"v?(\d+(?:\.\d+)*)", version.strip())
    return tuple(int(x) for x in m.group(1).split(".")) if m else None


# Each engine's flags for the config's fields, in the order its docs (and the study) write them. A bool
# field is a switch; None leaves the flag out. Adding an engine is a table here, its prefix above, and its
# failure texts in classify.py.
FLAGS: dict[str, tuple[tuple[str, str], ...]] = {
    "vllm": (
        ("-tp", "tensor_parallel_size"),
        ("-dp", "data_parallel_size"),
        ("-pp", "pipeline_parallel_size"),
        ("-dcp", "decode_context_parallel_size"),
        ("--enable-expert-parallel", "enable_expert_parallel"),
        ("--tokenizer-mode", "tokenizer_mode"),
        ("--reasoning-parser", "reasoning_parser"),
        ("--tool-call-parser", "tool_call_parser"),
        ("--enable-auto-tool-choice", "enable_auto_tool_choice"),
        ("--chat-template", "chat_template"),
        ("--max-model-len", "max_model_len"),
        ("--max-num-seqs", "max_num_seqs"),
        ("--kv-cache-dtype", "kv_cache_dtype"),
    ),
    "sglang": (
        ("--chat-template", "chat_template"),
        ("--tp-size", "tensor_parallel_size"),
        ("--dp-size", "data_parallel_size"),
        ("--enable-dp-attention", "dp_attention"),
        ("--ep-size", "expert_parallel_size"),
        ("--pp-size", "pipeline_parallel_size"),
        ("--reasoning-parser", "reasoning_parser"),
        ("--tool-call-parser", "tool_call_parser"),
        ("--context-length", "max_model_len"),
        ("--max-running-requests", "max_num_seqs"),
        ("--kv-cache-dtype", "kv_cache_dtype"),
        ("--attention-backend", "attention_backend"),
    ),
    "trtllm": (
        ("--tp_size", "tensor_parallel_size"),
        ("--ep_size", "expert_parallel_size"),
        ("--pp_size", "pipeline_parallel_size"),
        ("--max_seq_len", "max_model_len"),
        ("--max_batch_size", "max_num_seqs"),
        ("--reasoning_parser", "reasoning_parser"),
    ),
}
SGLANG_SPECULATIVE = (
    ("--speculative-algorithm", "algorithm"),
    ("--speculative-num-steps", "num_steps"),
    ("--speculative-eagle-topk", "eagle_topk"),
    ("--speculative-num-draft-tokens", "num_draft_tokens"),
)
DEEP_GEMM_OFF = {"vllm": "VLLM_USE_DEEP_GEMM", "sglang": "SGLANG_ENABLE_JIT_DEEPGEMM", "trtllm": "TRTLLM_DG_ENABLED"}


def _opt(flag: str, value: object | None) -> list[str]:
    if value is None or value is False:
        return []
    return [flag] if value is True else [flag, str(value)]


def _flags(obj: object, table: tuple[tuple[str, str], ...]) -> list[str]:
    return [word for flag, name in table for word in _opt(flag, getattr(obj, name))]


def _prefix(cfg: EngineConfig, python: str) -> list[str]:
    if cfg.launcher is not None:
        return [python if word == "{python}" else word for word in cfg.launcher]
    if cfg.python is not None and python == cfg.python:  # the engine's own virtual environment: its scripts
        bin_dir = os.path.dirname(cfg.python)
        return [
            cfg.python if word == "python3" else os.path.join(bin_dir, word) if i == 0 else word
            for i, word in enumerate(ENGINE_PREFIX[cfg.engine])
        ]
    return list(ENGINE_PREFIX[cfg.engine])


def _vllm(cfg: EngineConfig, env: dict[str, str]) -> list[str]:
    argv = [cfg.model, *_flags(cfg, FLAGS["vllm"])]
    if cfg.speculative is not None:
        spec = {
            k: v
            for k, v in (
                ("method", cfg.speculative.method),
                ("num_speculative_tokens", cfg.speculative.num_speculative_tokens),
            )
            if v is not None
        }
        argv += ["--speculative-config", json.dumps(spec, separators=(",", ":"))]
    if cfg.attention_backend is not None:
        version = parse_version(cfg.version)
        if version is not None and version < (0, 14):
            env["VLLM_ATTENTION_BACKEND"] = cfg.attention_backend
        else:
            argv += ["--attention-backend", cfg.attention_backend]
    return argv


def _sglang(cfg: EngineConfig, env: dict[str, str]) -> list[str]:
    argv = ["--model-path", cfg.model, *_flags(cfg, FLAGS["sglang"])]
    sparse = cfg.attention_backend if cfg.attention_backend in ("nsa", "dsa") else None
    argv += _opt(
        f"--{sparse}-prefill-backend" if sparse else "--prefill-attention-backend", cfg.prefill_attention_backend
    )
    argv += _opt(f"--{sparse}-decode-backend" if sparse else "--decode-attention-backend", cfg.decode_attention_backend)
    if cfg.speculative is not None:
        argv += _flags(cfg.speculative, SGLANG_SPECULATIVE)
    return argv


def _trtllm(cfg: EngineConfig, env: dict[str, str]) -> list[str]:
    return [cfg.model, *_flags(cfg, FLAGS["trtllm"])]


def _engine(cfg: EngineConfig, env: dict[str, str], python: str) -> list[str]:
    """A real engine's command: prefix, the engine's own flags, DeepGEMM off, the served name."""
    build = {"vllm": _vllm, "sglang": _sglang, "trtllm": _trtllm}[cfg.engine]
    argv = [*_prefix(cfg, python), *build(cfg, env)]
    if cfg.deep_gemm is False:
        env[DEEP_GEMM_OFF[cfg.engine]] = "0"
    if cfg.engine != "trtllm":
        argv += _opt("--served-model-name", cfg.served_model_name)
    return argv


def _sim(cfg: EngineConfig, python: str, sim_slowdown: float) -> list[str]:
    s = cfg.sim
    argv = [
        python,
        "-m",
        "pytest_llmperf.sim",
        "serve",
        cfg.model,
        "--profile",
        s.profile,
        "--seed",
        str(s.seed),
        "--slowdown",
        f"{s.slowdown * sim_slowdown:g}",
    ]
    if s.profile == "deterministic":
        argv += ["--ttft-ms", f"{s.ttft_ms:g}", "--itl-ms", f"{s.itl_ms:g}"]
    if s.jitter:
        argv += ["--jitter", f"{s.jitter:g}"]
    argv += _opt("--served-model-name", cfg.served_model_name)
    argv += _opt("--max-num-seqs", cfg.max_num_seqs)
    argv += _opt("--max-model-len", cfg.max_model_len)
    return argv


def render_launch(
    cfg: EngineConfig,
    *,
    port: int | None = None,
    host: str | None = None,
    sim_slowdown: float = 1.0,
    python: str | None = None,
) -> LaunchSpec:
    """The exact command and environment for ``cfg``.

    ``port``/``host`` are added when given (or when the config fixes them); without them the
    command is the one a user types by hand. The interpreter is ``python``, else the config's own
    (``python = ...``), else ``python3`` inside a container image, else this one.
    """
    python = python or cfg.python or ("python3" if cfg.image else sys.executable)
    env: dict[str, str] = {}
    argv = _sim(cfg, python, sim_slowdown) if cfg.engine == "sim" else _engine(cfg, env, python)
    listen_host = host or cfg.host
    listen_port = port if port is not None else cfg.port
    if cfg.engine == "sglang":  # SGLang's scripts put the address right after the model
        addr = _opt("--host", listen_host) + _opt("--port", listen_port)
        at = len(_prefix(cfg, python)) + 2
        argv = argv[:at] + addr + argv[at:]
    else:
        argv += _opt("--host", listen_host) + _opt("--port", listen_port)
    argv += list(cfg.extra_args)
    env.update(cfg.env)
    return LaunchSpec(cfg.id, tuple(argv), env)


def simulate_launch(
    cfg: EngineConfig, *, port: int, sim_slowdown: float = 1.0, python: str | None = None
) -> LaunchSpec:
    """Run ``cfg``'s engine command line on the simulated engine (``--llmperf-simulate``).

    The simulator takes the engine's own arguments (ignoring those it does not model) with the
    H200-shaped profile of that engine family. A config declared unsupported fails at start-up
    with the engine's published error text, so the strict expected-failure path runs as on GPUs.
    """
    python = python or sys.executable  # the simulation runs here, whatever environment the engine has
    if cfg.engine == "sim":
        return render_launch(cfg, port=port, host="127.0.0.1", sim_slowdown=sim_slowdown, python=python)
    real = render_launch(cfg, port=None, python="python3")
    args = list(real.argv[len(ENGINE_PREFIX[cfg.engine]) :])
    argv = [
        python,
        "-m",
        "pytest_llmperf.sim",
        "serve",
        *args,
        "--profile",
        f"h200-{cfg.engine}",
        "--slowdown",
        f"{sim_slowdown:g}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    argv += ["--served-model-name", cfg.request_model]
    if cfg.unsupported is not None:
        argv += [
            "--fail-at-startup",
            cfg.unsupported.message or f"simulated start-up failure: {cfg.unsupported.reason}",
        ]
    return LaunchSpec(cfg.id, tuple(argv), dict(real.env))


def canonical_command(cfg: EngineConfig, *, sim_slowdown: float = 1.0) -> str:
    """The command recorded with results: as a user types it (no port chosen at launch), ``python``
    for the interpreter of the simulated engine, at the session's simulated slowdown."""
    return render_launch(cfg, python="python", sim_slowdown=sim_slowdown).shell()


def containerize(spec: LaunchSpec, container: Container) -> LaunchSpec:
    """``spec``'s command run inside ``container``: the runtime's command line around it; the environment
    stays the client's (passed in by name), without ``CUDA_VISIBLE_DEVICES`` (the runtime maps the devices)."""
    env = {k: v for k, v in spec.env.items() if k != "CUDA_VISIBLE_DEVICES"}
    return LaunchSpec(spec.config_id, tuple(container_argv(container, spec.argv)), env, container)


ENTRYPOINT_IMAGES = ("vllm",)  # engines whose release image's entrypoint is the engine command itself


def container_for(
    cfg: EngineConfig,
    spec: LaunchSpec,
    *,
    runtime: str,
    session: str,
    owner: str,
    cwd: str | None = None,
) -> Container:
    """The container ``cfg`` (which has an image) runs in, for ``spec`` (its GPU slice in
    ``CUDA_VISIBLE_DEVICES`` when the pool assigned one)."""
    assert cfg.image is not None
    visible = spec.env.get("CUDA_VISIBLE_DEVICES")
    gpus: tuple[int, ...] | None = None
    if visible:
        gpus = tuple(int(i) for i in visible.split(",") if i.strip().isdigit())
    elif cfg.engine != "sim" and cfg.gpus_needed > 0:
        gpus = ()  # all the host's GPUs: no slice was assigned
    local = mounts_for(cfg.model, None if cwd is None else Path(cwd), real_engine=cfg.engine != "sim")
    return Container(
        runtime=runtime,
        image=cfg.image,
        name=container_name(cfg.id, session),
        labels={SESSION_LABEL: session, CONFIG_LABEL: cfg.id, OWNER_LABEL: owner},
        gpus=gpus,
        mounts=local,
        env_names=env_names(spec.env),
        workdir=cwd,
        reset_entrypoint=cfg.engine in ENTRYPOINT_IMAGES,
    )


def container_command(cfg: EngineConfig, kind: str, *, gpus: str | None = None) -> str:
    """``cfg``'s container command line as ``kind`` (podman or docker) runs it, with placeholders for the
    session's values (SESSION, OWNER, the suite's ROOTDIR) and its GPU slice (``gpus``: ``"4,5,6,7"``; None: all)."""
    spec = render_launch(cfg, python="python3")
    if gpus is not None:
        spec = LaunchSpec(spec.config_id, spec.argv, {**spec.env, "CUDA_VISIBLE_DEVICES": gpus})
    container = container_for(cfg, spec, runtime=kind, session="SESSION", owner="OWNER", cwd="ROOTDIR")
    return containerize(spec, container).shell()
