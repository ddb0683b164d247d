"""Engine servers: rendering configs into launch commands, and owning the server processes."""

from __future__ import annotations

from pytest_llmperf.engines.launch import LaunchSpec, render_launch
from pytest_llmperf.engines.process import ServerProcess, free_port, group_members, stop_all_servers

__all__ = ["LaunchSpec", "ServerProcess", "free_port", "group_members", "render_launch", "stop_all_servers"]
