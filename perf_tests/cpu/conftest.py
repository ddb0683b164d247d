"""The real-engine tier: make the tiny local models vLLM serves, before any server starts."""

from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    models = Path(config.rootpath) / ".llmperf" / "models"
    try:
        from pytest_llmperf.tiny_model import write_tiny_model
    except ImportError:  # pragma: no cover
        return
    for name, head_dim in (("tiny-llama", 64), ("tiny-llama-head16", 16)):
        if not (models / name / "config.json").exists():
            try:
                write_tiny_model(models / name, head_dim=head_dim, max_len=4096)
            except ImportError:
                return  # no `tokenizers`: the cpu tier is skipped anyway without vllm
