"""Write the synthetic ShareGPT-format datasets of this folder.

No real conversation is in them: prompts and answers are seeded runs of the simulated engine's words.

* ``sharegpt_sample.json``: lengths drawn like ShareGPT's (long-tailed; most prompts under 1024 tokens).
  It lets the ``sharegpt`` workloads run anywhere (tests, the CPU tier); real runs pass the real file
  with ``--llmperf-sharegpt``.
* ``sharegpt_study_shape.json``: the lengths of the DeepSeek-V3.2 study's ShareGPT runs (1000 requests,
  219.1 prompt and 196.6 output tokens on average, vllm bench serve's filter), the shape the simulator is
  calibrated on (``pytest_llmperf.sim.virtual.sharegpt_shape``): the study's dry run uses it, so that its
  simulated numbers compare with the published ones.

    python perf_tests/data/make_sharegpt_sample.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from pytest_llmperf.sim.openai_api import CHAT_TEMPLATE_TOKENS_PER_MESSAGE
from pytest_llmperf.sim.virtual import sharegpt_shape
from pytest_llmperf.tokenizer import SimTokenizer

N = 400
SEED = 1234


def _conversation(tok: SimTokenizer, rng: random.Random, i: int, prompt_len: int, answer_len: int) -> dict[str, object]:
    turns = []
    for role, n in (("human", prompt_len), ("gpt", answer_len)):
        start = rng.randrange(tok.vocab_size)
        turns.append({"from": role, "value": tok.decode([(start + k) % tok.vocab_size for k in range(n)])})
    return {"id": f"synthetic-{i:04d}", "conversations": turns}


def _write(name: str, entries: list[dict[str, object]]) -> None:
    out = Path(__file__).with_name(name)
    out.write_text(json.dumps(entries, separators=(",", ":")) + "\n")
    print(f"wrote {out} ({len(entries)} conversations, {out.stat().st_size // 1024} KiB)")


def main() -> None:
    rng = random.Random(SEED)
    tok = SimTokenizer()
    entries = []
    for i in range(N):
        prompt_len = min(1500, max(2, int(rng.lognormvariate(4.3, 1.0))))
        answer_len = min(1800, max(2, int(rng.lognormvariate(5.2, 0.8))))
        entries.append(_conversation(tok, rng, i, prompt_len, answer_len))
    _write("sharegpt_sample.json", entries)
    # the study's shape: the server counts the chat template's tokens in the prompt, so the text has fewer
    shape = sharegpt_shape(1000, 219.111 - CHAT_TEMPLATE_TOKENS_PER_MESSAGE, 196.6, seed=SEED)
    rng = random.Random(SEED + 1)
    study = [_conversation(tok, rng, i, p, o) for i, (p, o) in enumerate(shape.requests)]
    _write("sharegpt_study_shape.json", study)


if __name__ == "__main__":
    main()
