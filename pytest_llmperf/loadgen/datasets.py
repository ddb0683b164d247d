"""Benchmark datasets: ``random`` and ``sharegpt`` with the sampling rules of ``vllm bench serve``."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from pytest_llmperf.config import Workload
from pytest_llmperf.errors import DatasetError

__all__ = ["SampleRequest", "Tokenizer", "random_requests", "requests_for", "sharegpt_requests"]


class Tokenizer(Protocol):
    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def num_special_tokens_to_add(self) -> int: ...

    @property
    def all_special_ids(self) -> list[int]: ...


@dataclass(frozen=True, slots=True)
class SampleRequest:
    prompt: str
    prompt_len: int
    expected_output_len: int


def random_requests(
    tokenizer: Tokenizer,
    *,
    num_requests: int,
    input_len: int,
    output_len: int,
    range_ratio: float = 0.0,
    prefix_len: int = 0,
    seed: int = 0,
) -> list[SampleRequest]:
    """Token-run prompts of uniformly drawn lengths (vLLM's RandomDataset)."""
    if not 0.0 <= range_ratio < 1.0:
        raise DatasetError(f"random_range_ratio must be in [0, 1), got {range_ratio}")
    rng = np.random.default_rng(seed)
    real_in = max(0, input_len - tokenizer.num_special_tokens_to_add())
    in_low = math.floor(real_in * (1 - range_ratio))
    in_high = math.ceil(real_in * (1 + range_ratio))
    out_low = max(1, math.floor(output_len * (1 - range_ratio)))
    out_high = math.ceil(output_len * (1 + range_ratio))
    if in_low < 0 or in_high < in_low:
        raise DatasetError(f"random_input_len={input_len} leaves no room for the prompt")
    input_lens = rng.integers(in_low, in_high + 1, size=num_requests)
    output_lens = rng.integers(out_low, out_high + 1, size=num_requests)
    offsets = rng.integers(0, tokenizer.vocab_size, size=num_requests)
    special = set(tokenizer.all_special_ids)
    allowed = np.array([t for t in range(tokenizer.vocab_size) if t not in special], dtype=np.int64)
    prefix: list[int] = []
    if prefix_len > 0:
        drawn = allowed[rng.integers(0, len(allowed), size=prefix_len)].tolist()
        _, prefix = _decode_to_target_len(tokenizer, drawn, prefix_len, rng)
    requests: list[SampleRequest] = []
    for i in range(num_requests):
        n = int(input_lens[i])
        body = allowed[(int(offsets[i]) + i + np.arange(n)) % len(allowed)].tolist()
        prompt, ids = _decode_to_target_len(tokenizer, prefix + body, prefix_len + n, rng)
        requests.append(SampleRequest(prompt, len(ids), int(output_lens[i])))
    return requests


def _decode_to_target_len(
    tokenizer: Tokenizer, ids: list[int], target: int, rng: np.random.Generator, max_retry: int = 10
) -> tuple[str, list[int]]:
    """vLLM's ``gen_prompt_decode_to_target_len``: decode, re-encode, pad with random ids or truncate."""
    tries = max_retry
    while True:
        prompt = tokenizer.decode(ids)
        ids = tokenizer.encode(prompt)
        if tries <= 0 or len(ids) == target:
            return prompt, ids
        if len(ids) < target:
            ids = ids + rng.integers(0, tokenizer.vocab_size, size=target - len(ids)).tolist()
        else:
            ids = ids[:target]
        tries -= 1


def sharegpt_requests(
    tokenizer: Tokenizer,
    path: str | Path,
    *,
    num_requests: int,
    seed: int = 0,
    output_len: int | None = None,
) -> list[SampleRequest]:
    """First two turns of ShareGPT conversations, shuffled with ``seed`` and filtered as vLLM does."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        # no flag named here: the caller (pytest, or llmperf bench serve) says which of its options gave the path
        raise DatasetError(
            f"ShareGPT file {path} not found (ShareGPT_V3_unfiltered_cleaned_split.json, or a small sample such "
            "as perf_tests/data/sharegpt_sample.json)"
        ) from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"ShareGPT file {path} could not be read as JSON: {exc}") from None
    if not isinstance(data, list):
        raise DatasetError(
            f"ShareGPT file {path} holds a JSON {type(data).__name__}; a ShareGPT file is a list of conversations "
            '([{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}]}, ...])'
        )
    entries = [d for d in data if isinstance(d, dict) and len(d.get("conversations") or []) >= 2]
    if not entries:
        raise DatasetError(f"ShareGPT file {path}: no entry has a 'conversations' list of two turns or more")
    random.Random(seed).shuffle(entries)
    out: list[SampleRequest] = []
    for entry in entries:
        if len(out) >= num_requests:
            break
        prompt = str(entry["conversations"][0].get("value", ""))
        completion = str(entry["conversations"][1].get("value", ""))
        prompt_len = len(tokenizer.encode(prompt)) + tokenizer.num_special_tokens_to_add()
        completion_len = len(tokenizer.encode(completion)) + tokenizer.num_special_tokens_to_add()
        new_out = output_len if output_len is not None else completion_len
        if prompt_len < 4 or (output_len is None and new_out < 4):
            continue
        if prompt_len > 1024 or prompt_len + new_out > 2048:
            continue
        out.append(SampleRequest(prompt, prompt_len, new_out))
    if not out:
        raise DatasetError(f"ShareGPT file {path}: no conversation passes vLLM's length filters")
    rnd = random.Random(seed)
    while len(out) < num_requests:  # oversample, as vLLM does
        out.append(rnd.choice(out))
    return out


def requests_for(
    tokenizer: Tokenizer, workload: Workload, dataset_path: str | Path | None = None
) -> list[SampleRequest]:
    """The requests of a workload: its ``random`` draw, or its ShareGPT sample from ``dataset_path``."""
    if workload.dataset == "random":
        return random_requests(
            tokenizer,
            num_requests=workload.num_prompts,
            input_len=workload.random_input_len,
            output_len=workload.random_output_len,
            range_ratio=workload.random_range_ratio,
            prefix_len=workload.random_prefix_len,
            seed=workload.seed,
        )
    path = dataset_path or workload.dataset_path
    if not path:
        raise DatasetError(
            f"workload {workload.id!r} needs the ShareGPT dataset (ShareGPT_V3_unfiltered_cleaned_split.json)"
        )
    return sharegpt_requests(
        tokenizer, path, num_requests=workload.num_prompts, seed=workload.seed, output_len=workload.sharegpt_output_len
    )
