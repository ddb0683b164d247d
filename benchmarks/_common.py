"""Shared by the benchmark scripts: a simulated engine pinned to one core, and the summary table."""

from __future__ import annotations

import os
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pytest_llmperf.config import EngineConfig
from pytest_llmperf.engines import LaunchSpec, ServerProcess, free_port, render_launch


def start_pinned_sim(cfg: EngineConfig) -> tuple[ServerProcess, list[int]]:
    """Start the simulator on the first core and move this process (the client) to the others."""
    cpus = sorted(os.sched_getaffinity(0))
    port = free_port()
    spec = render_launch(cfg, port=port)
    if len(cpus) >= 2:
        spec = LaunchSpec(spec.config_id, ("taskset", "-c", str(cpus[0]), *spec.argv), spec.env)
        os.sched_setaffinity(0, cpus[1:])
    server = ServerProcess(
        spec,
        base_url=f"http://127.0.0.1:{port}",
        model=cfg.request_model,
        log_path=Path(tempfile.mkdtemp()) / "sim.log",
        startup_timeout_s=30,
    )
    server.start()
    return server, cpus


def print_summary(rows: Sequence[dict[str, float]], width: int = 26) -> None:
    print(f"{'metric':<{width}}{'mean':>12}{'min':>12}{'max':>12}")
    for key in rows[0]:
        values = [r[key] for r in rows]
        print(f"{key:<{width}}{statistics.fmean(values):>12.2f}{min(values):>12.2f}{max(values):>12.2f}")
