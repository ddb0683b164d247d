"""A tiny Llama-architecture model for running a real vLLM on a CPU, with no model hub at any point.

``write_tiny_model(DIR)`` (or ``llmperf tiny-model DIR``) writes:

* ``config.json``: a ``LlamaForCausalLM``, by default 2 layers of 2 heads of 64 (hidden 128); heads and
  layers are parameters (the CPU perf tier uses 4 layers of 8 heads so that an engine step, not the
  shared cores' HTTP work, sets the pace), and so is ``head_dim``: vLLM's CPU attention rejects a head
  size of 16 at the first request, the suite's real "unsupported configuration";
* ``tokenizer.json``: a byte-level BPE tokenizer trained locally with the ``tokenizers`` package on
  text the project ships (its own module documentation);
* ``tokenizer_config.json`` with a chat template.

The weights are never written: vLLM fills them with random values (``--load-format dummy``).
"""

from __future__ import annotations

import inspect
import json
import pkgutil
from pathlib import Path

__all__ = ["CHAT_TEMPLATE", "corpus", "write_tiny_model"]

CHAT_TEMPLATE = (
    "{% for message in messages %}<s>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{{ part['text'] }}{% endfor %}{% endif %}</s>\n"
    "{% endfor %}{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]


def corpus() -> list[str]:
    """Text the project ships: the documentation of its own modules."""
    import pytest_llmperf

    texts = [inspect.getdoc(pytest_llmperf) or ""]
    for info in pkgutil.walk_packages(pytest_llmperf.__path__, "pytest_llmperf."):
        if info.name.endswith(".__main__"):  # an entry point runs when imported
            continue
        try:
            module = __import__(info.name, fromlist=["_"])
        except Exception:  # a module with optional dependencies: its text is not needed
            continue
        texts.append(inspect.getdoc(module) or "")
        for _, obj in inspect.getmembers(module):
            doc = inspect.getdoc(obj) if (inspect.isfunction(obj) or inspect.isclass(obj)) else None
            if doc:
                texts.append(doc)
    return [t for t in texts if t.strip()]


def write_tiny_model(
    directory: str | Path,
    *,
    vocab_size: int = 2048,
    head_dim: int = 64,
    num_heads: int = 2,
    num_layers: int = 2,
    max_len: int = 1024,
) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    tok.save(str(out / "tokenizer.json"))
    vocab = tok.get_vocab_size()
    heads = num_heads
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": heads * head_dim,
        "intermediate_size": 4 * heads * head_dim,
        "num_hidden_layers": num_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "head_dim": head_dim,
        "max_position_embeddings": max_len,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": tok.token_to_id("<s>"),
        "eos_token_id": tok.token_to_id("</s>"),
        "torch_dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "model_max_length": max_len,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    return out
