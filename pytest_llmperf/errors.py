"""The exception tree of pytest-llmperf.

::

    LlmperfError
    ├── ConfigError            a matrix / workload file is invalid (names the file, entry and field)
    ├── BaselineError          a baseline file cannot be read (corrupt, unknown schema version)
    ├── DatasetError           a dataset cannot be built (missing file, bad lengths)
    └── ServerError            an engine server did not come up or died
        ├── ServerStartupError     exited before it became ready (class unknown)
        │   ├── UnsupportedConfigError   the engine rejected the configuration (its reason in the message)
        │   ├── ServerOutOfMemoryError   the engine ran out of (GPU) memory
        │   ├── ServerCrashError         the engine crashed (a traceback, a dead scheduler or worker)
        │   └── ServerPortInUseError     its port is held by another process (never benchmarked)
        └── ServerTimeoutError     did not become ready within its start-up timeout

Every message names the thing at fault and the next step a user can take.
"""

from __future__ import annotations

__all__ = [
    "BaselineError",
    "ConfigError",
    "DatasetError",
    "LlmperfError",
    "ServerCrashError",
    "ServerError",
    "ServerOutOfMemoryError",
    "ServerPortInUseError",
    "ServerStartupError",
    "ServerTimeoutError",
    "UnsupportedConfigError",
]


class LlmperfError(Exception):
    """Base class of every error raised by pytest-llmperf."""


class ConfigError(LlmperfError):
    """A matrix or workload definition is invalid."""


class BaselineError(LlmperfError):
    """A baseline file is corrupt or of an unknown schema version."""


class DatasetError(LlmperfError):
    """A benchmark dataset could not be built."""


class ServerError(LlmperfError):
    """An engine server failed. ``log_tail`` holds the last lines of its output."""

    kind = "server failure"

    def __init__(
        self,
        message: str,
        *,
        config_id: str,
        log_path: str | None = None,
        log_tail: str = "",
        matched: tuple[str, ...] = (),
        log_offset: int = 0,
    ):
        self.config_id = config_id
        self.log_offset = log_offset  # where this launch's part of the log begins
        self.log_path = log_path
        self.log_tail = log_tail
        self.matched = matched
        full = message
        if matched:
            full += "\n--- the lines that identify it ---\n" + "\n".join(matched)
        if log_tail:
            full += f"\n--- last lines of {log_path} ---\n{log_tail}"
        super().__init__(full)


class ServerStartupError(ServerError):
    """The server process exited before it became ready."""

    kind = "start-up failure"


class UnsupportedConfigError(ServerStartupError):
    """The engine rejected the configuration at start-up."""

    kind = "unsupported configuration"


class ServerOutOfMemoryError(ServerStartupError):
    """The engine ran out of memory at start-up."""

    kind = "out of memory"


class ServerCrashError(ServerStartupError):
    """The engine crashed at start-up."""

    kind = "crash"


class ServerPortInUseError(ServerStartupError):
    """The server's port is held by another process: before launch, or the engine could not bind it."""

    kind = "port in use"


class ImageMissingError(ServerStartupError):
    """The config's container image is not on this host (nothing is pulled implicitly)."""

    kind = "image not present"


class ServerTimeoutError(ServerError):
    """The server did not become ready within its start-up timeout."""

    kind = "start-up timeout"
