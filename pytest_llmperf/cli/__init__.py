"""The ``llmperf`` command: one module per verb, each importing the library, never one another."""

from pytest_llmperf.cli.main import main

__all__ = ["main"]
