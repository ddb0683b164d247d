"""A deterministic built-in tokenizer shared by the simulated engine and the load generator.

One token is one whitespace-separated word. The vocabulary is a fixed list of generated
syllable words, so ``decode(ids)`` followed by ``encode`` gives back exactly ``len(ids)``
tokens: prompt lengths of the ``random`` dataset are exact without any tokenizer files.
Words outside the vocabulary (real text, e.g. ShareGPT) still count one token each.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from pathlib import Path

__all__ = ["SimTokenizer"]

_ONSETS = ["b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z"]
_VOWELS = ["a", "e", "i", "o", "u"]


def _vocabulary(size: int) -> list[str]:
    syllables = [o + v for o in _ONSETS for v in _VOWELS]  # 90 syllables
    words: list[str] = []
    n = len(syllables)
    i = 0
    while len(words) < size:
        # little-endian base-n digits, at least two syllables so no word collides with another
        x, word = i, ""
        while True:
            word += syllables[x % n]
            x //= n
            if x == 0:
                break
        if len(word) >= 4:
            words.append(word)
        i += 1
    return words


class SimTokenizer:
    """Word-level tokenizer with a fixed generated vocabulary."""

    name = "llmperf-sim"

    def __init__(self, vocab_size: int = 32000) -> None:
        self.vocab_size = vocab_size
        self._words = _vocabulary(vocab_size)
        self._ids = {w: i for i, w in enumerate(self._words)}

    def num_special_tokens_to_add(self) -> int:
        return 0

    @property
    def all_special_ids(self) -> list[int]:
        return []

    def encode(self, text: str) -> list[int]:
        ids = self._ids
        vocab = self.vocab_size
        return [ids[w] if w in ids else zlib.crc32(w.encode()) % vocab for w in text.split()]

    def count(self, text: str) -> int:
        return len(text.split())

    def decode(self, ids: Sequence[int]) -> str:
        words = self._words
        return " ".join(words[i % self.vocab_size] for i in ids)

    def word(self, token_id: int) -> str:
        return self._words[token_id % self.vocab_size]

    def save_hf(self, directory: str | Path) -> Path:
        """Write this tokenizer as a Hugging Face tokenizer directory (``tokenizer.json`` and config),
        so that other clients (``vllm bench serve``, GuideLLM) count tokens exactly as the simulator does.
        Needs the ``tokenizers`` package."""
        from tokenizers import Tokenizer, models, pre_tokenizers

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        vocab = {w: i for i, w in enumerate(self._words)}
        # words outside the vocabulary still count one token each (mapped to the last word)
        hf = Tokenizer(models.WordLevel(vocab=vocab, unk_token=self._words[-1]))
        hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        hf.save(str(out / "tokenizer.json"))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": 1 << 20,
            "clean_up_tokenization_spaces": False,
        }
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        return out
