"""pytest-llmperf: performance regression testing of LLM serving engines with pytest."""

from __future__ import annotations

from pytest_llmperf.errors import (
    BaselineError,
    ConfigError,
    DatasetError,
    LlmperfError,
    ServerError,
    ServerStartupError,
    ServerTimeoutError,
)

__version__ = "0.1.0"

__all__ = [
    "BaselineError",
    "ConfigError",
    "DatasetError",
    "LlmperfError",
    "ServerError",
    "ServerStartupError",
    "ServerTimeoutError",
    "__version__",
]
