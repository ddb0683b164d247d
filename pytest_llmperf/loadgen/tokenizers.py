"""Tokenizers for building prompts, with no model hub at any point.

* a local ``tokenizer.json`` (or a model directory holding one), through the ``tokenizers`` package
  (the ``tokenizers`` extra);
* the server's own ``/tokenize`` and ``/detokenize`` endpoints (vLLM and the simulated engine have
  them), when no local tokenizer is given;
* the simulated engine's built-in tokenizer (:class:`pytest_llmperf.tokenizer.SimTokenizer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx

from pytest_llmperf.errors import DatasetError
from pytest_llmperf.loadgen.datasets import Tokenizer
from pytest_llmperf.tokenizer import SimTokenizer

__all__ = ["LocalTokenizer", "ServerTokenizer", "load_tokenizer"]


class LocalTokenizer:
    """A Hugging Face ``tokenizer.json`` read with the ``tokenizers`` package."""

    def __init__(self, path: str | Path) -> None:
        try:
            from tokenizers import Tokenizer as HFTokenizer
        except ImportError:
            raise DatasetError(
                f"reading the tokenizer at {path} needs the 'tokenizers' package: "
                "pip install 'pytest-llmperf[tokenizers]'"
            ) from None
        p = Path(path)
        file = p / "tokenizer.json" if p.is_dir() else p
        if not file.is_file():
            raise DatasetError(f"no tokenizer.json at {path}")
        self.name = str(path)
        self._tok = HFTokenizer.from_file(str(file))
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        added = self._tok.get_added_tokens_decoder()
        self._special = sorted(i for i, token in added.items() if token.special)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=False))

    def num_special_tokens_to_add(self) -> int:
        post = self._tok.post_processor
        return int(post.num_special_tokens_to_add(False)) if post is not None else 0

    @property
    def all_special_ids(self) -> list[int]:
        return list(self._special)


class ServerTokenizer:
    """Tokenize through the server under test (``/tokenize``, ``/detokenize``)."""

    def __init__(self, base_url: str, model: str, *, timeout: float = 30.0) -> None:
        self.name = f"{base_url} (server /tokenize)"
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._client = httpx.Client(timeout=timeout, trust_env=False)
        probe = self._post("/tokenize", {"model": model, "prompt": "probe", "add_special_tokens": False})
        if "tokens" not in probe:
            raise DatasetError(f"{self.name}: /tokenize answered without 'tokens': {probe}")

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            r = self._client.post(self.base_url + path, json=body)
        except httpx.HTTPError as exc:
            raise DatasetError(f"{self.base_url}{path} failed: {exc}") from None
        if r.status_code != 200:
            raise DatasetError(
                f"{self.base_url}{path} answered HTTP {r.status_code}: {r.text[:300]}. Pass a local tokenizer "
                "with --tokenizer PATH (a tokenizer.json or a model directory)."
            )
        data: dict[str, Any] = r.json()
        return data

    def encode(self, text: str) -> list[int]:
        return list(
            self._post("/tokenize", {"model": self.model, "prompt": text, "add_special_tokens": False})["tokens"]
        )

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._post("/detokenize", {"model": self.model, "tokens": list(ids)})["prompt"])

    def num_special_tokens_to_add(self) -> int:
        with_special = self._post("/tokenize", {"model": self.model, "prompt": "", "add_special_tokens": True})
        return len(with_special["tokens"])

    @property
    def all_special_ids(self) -> list[int]:
        return []

    @cached_property
    def vocab_size(self) -> int:
        """Found by bisection on which ids ``/detokenize`` accepts (the server does not publish it)."""
        lo, hi = 1, 1 << 22
        while lo < hi:
            mid = (lo + hi + 1) // 2
            try:
                self._post("/detokenize", {"model": self.model, "tokens": [mid - 1]})
                lo = mid
            except DatasetError:
                hi = mid - 1
        return lo


def load_tokenizer(spec: str | None, *, base_url: str | None = None, model: str | None = None) -> Tokenizer:
    """``spec``: a path to a tokenizer.json or a model directory, ``"sim"`` for the built-in tokenizer, or
    ``None`` for the server's endpoints (needs ``base_url`` and ``model``)."""
    if spec == "sim":
        return SimTokenizer()
    if spec is not None:
        if Path(spec).exists():
            return LocalTokenizer(spec)
        raise DatasetError(
            f"tokenizer {spec!r} is not a local path; pytest-llmperf never downloads from a model hub. Pass a "
            "tokenizer.json or a model directory, or leave --tokenizer out to use the server's /tokenize."
        )
    if base_url is None or model is None:
        raise DatasetError("no tokenizer: pass --tokenizer PATH, or a server that serves /tokenize")
    return ServerTokenizer(base_url, model)
