"""Render an :class:`EngineConfig` into the command line and environment that start its server."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field

from pytest_llmperf.config import EngineConfig

__all__ = ["LaunchSpec", "canonical_command", "render_launch"]


@dataclass(frozen=True)
class LaunchSpec:
    config_id: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)

    def shell(self) -> str:
        """The command as a user would type it, environment first."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        cmd = shlex.join(self.argv)
        return f"{env} {cmd}" if env else cmd


def _opt(flag: str, value: object | None) -> list[str]:
    return [] if value is None else [flag, str(value)]


def render_launch(
    cfg: EngineConfig, *, port: int, host: str = "127.0.0.1", sim_slowdown: float = 1.0, python: str = sys.executable
) -> LaunchSpec:
    """The exact command and environment for ``cfg``, listening on ``host:port``."""
    argv: list[str]
    if cfg.engine == "sim":
        s = cfg.sim
        argv = [
            python,
            "-m",
            "pytest_llmperf.sim",
            "serve",
            cfg.model,
            "--host",
            host,
            "--port",
            str(port),
            "--profile",
            s.profile,
            "--seed",
            str(s.seed),
            "--slowdown",
            f"{s.slowdown * sim_slowdown:g}",
        ]
        if s.profile == "deterministic":
            argv += ["--ttft-ms", f"{s.ttft_ms:g}", "--itl-ms", f"{s.itl_ms:g}"]
        argv += _opt("--served-model-name", cfg.served_model_name)
        argv += _opt("--max-num-seqs", cfg.max_num_seqs)
        argv += _opt("--max-model-len", cfg.max_model_len)
    elif cfg.engine == "vllm":
        argv = ["vllm", "serve", cfg.model, "--host", host, "--port", str(port)]
        argv += _opt("--tensor-parallel-size", cfg.tensor_parallel_size)
        argv += _opt("--data-parallel-size", cfg.data_parallel_size)
        argv += ["--enable-expert-parallel"] if cfg.enable_expert_parallel else []
        argv += _opt("--max-model-len", cfg.max_model_len)
        argv += _opt("--max-num-seqs", cfg.max_num_seqs)
        argv += _opt("--served-model-name", cfg.served_model_name)
    elif cfg.engine == "sglang":
        argv = ["python3", "-m", "sglang.launch_server", "--model-path", cfg.model, "--host", host, "--port", str(port)]
        argv += _opt("--tp-size", cfg.tensor_parallel_size)
        argv += _opt("--dp-size", cfg.data_parallel_size)
        argv += _opt("--ep-size", cfg.tensor_parallel_size if cfg.enable_expert_parallel else None)
        argv += _opt("--context-length", cfg.max_model_len)
        argv += _opt("--max-running-requests", cfg.max_num_seqs)
        argv += _opt("--served-model-name", cfg.served_model_name)
    elif cfg.engine == "trtllm":
        argv = ["trtllm-serve", cfg.model, "--host", host, "--port", str(port)]
        argv += _opt("--tp_size", cfg.tensor_parallel_size)
        argv += _opt("--ep_size", cfg.tensor_parallel_size if cfg.enable_expert_parallel else None)
        argv += _opt("--max_seq_len", cfg.max_model_len)
        argv += _opt("--max_batch_size", cfg.max_num_seqs)
    else:  # pragma: no cover - the config model restricts engine names
        raise ValueError(f"unknown engine {cfg.engine!r}")
    argv += list(cfg.extra_args)
    return LaunchSpec(cfg.id, tuple(argv), dict(cfg.env))


def canonical_command(cfg: EngineConfig) -> str:
    """The command recorded with results: default port 8000, ``python`` for the interpreter."""
    return render_launch(cfg, port=8000, python="python").shell()
