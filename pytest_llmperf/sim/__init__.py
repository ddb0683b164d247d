"""The built-in simulated engine: an OpenAI-compatible server with a continuous-batching timing model."""

from __future__ import annotations

from pytest_llmperf.sim.engine import PROFILES, Profile, SimEngine
from pytest_llmperf.sim.server import SimServerOptions, build_app, main, parse_args

__all__ = ["PROFILES", "Profile", "SimEngine", "SimServerOptions", "build_app", "main", "parse_args"]
