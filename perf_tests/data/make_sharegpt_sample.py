"""Write ``sharegpt_sample.json``: a small synthetic dataset in the ShareGPT V3 format.

No real conversation is in it: prompts and answers are seeded runs of the simulated engine's words
with lengths drawn like ShareGPT's (long-tailed; most prompts under 1024 tokens). It lets the
``sharegpt`` workloads run anywhere (tests, ``--llmperf-simulate`` dry runs); real runs pass the real
file with ``--llmperf-sharegpt``.

    python perf_tests/data/make_sharegpt_sample.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from pytest_llmperf.tokenizer import SimTokenizer

N = 400
SEED = 1234


def main() -> None:
    rng = random.Random(SEED)
    tok = SimTokenizer()
    entries = []
    for i in range(N):
        prompt_len = min(1500, max(2, int(rng.lognormvariate(4.3, 1.0))))
        answer_len = min(1800, max(2, int(rng.lognormvariate(5.2, 0.8))))
        turns = []
        for role, n in (("human", prompt_len), ("gpt", answer_len)):
            start = rng.randrange(tok.vocab_size)
            turns.append({"from": role, "value": tok.decode([(start + k) % tok.vocab_size for k in range(n)])})
        entries.append({"id": f"synthetic-{i:04d}", "conversations": turns})
    out = Path(__file__).with_name("sharegpt_sample.json")
    out.write_text(json.dumps(entries, separators=(",", ":")) + "\n")
    print(f"wrote {out} ({N} conversations, {out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
