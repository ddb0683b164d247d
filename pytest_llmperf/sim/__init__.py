"""The built-in simulated engine: an OpenAI-compatible server with a continuous-batching timing model."""

from __future__ import annotations

from pytest_llmperf.sim.engine import PROFILES, Profile, SimEngine
from pytest_llmperf.sim.options import SimServerOptions, parse_args
from pytest_llmperf.sim.process import main, serve
from pytest_llmperf.sim.server import SimServer

__all__ = ["PROFILES", "Profile", "SimEngine", "SimServer", "SimServerOptions", "main", "parse_args", "serve"]
