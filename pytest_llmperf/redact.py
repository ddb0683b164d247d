"""Secrets never reach a file: credentials in URLs, secret environment variables and secret flags are
replaced by ``***`` in everything pytest-llmperf writes (logs, baselines, result JSON, summaries)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

__all__ = ["MASK", "is_secret_name", "redact_argv", "redact_env", "redact_text", "secret_values"]

MASK = "***"
# a secret is a whole word of the name: HF_TOKEN, OPENAI_API_KEY, AWS_SECRET_ACCESS_KEY; not TOKENIZERS_PARALLELISM
_SECRET_NAME = re.compile(r"(?i)(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_?KEY|CREDENTIALS?|AUTH)($|_)")
# --api-key, --hf-token, --token, --password; not --speculative-num-draft-tokens or --max-num-batched-tokens
_SECRET_FLAG = re.compile(
    r"(?i)^--?([a-z0-9]+[-_])*(token|secret|password|passwd|api[-_]?key|access[-_]?key|credentials?)$"
)
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")
_ASSIGN = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)=(\S+)")
_FLAG_VALUE = re.compile(r"(?<!\S)(--?[A-Za-z0-9][A-Za-z0-9_-]*)([= ])(\S+)")


def is_secret_name(name: str) -> bool:
    """An environment variable name that holds a secret (``HF_TOKEN``, ``OPENAI_API_KEY``, ...)."""
    return bool(_SECRET_NAME.search(name))


def redact_text(text: str) -> str:
    """Credentials in URLs (``http://user:TOKEN@host``), ``NAME=value`` of secret names, ``--api-key X``."""
    text = _URL_USERINFO.sub(rf"\1{MASK}@", text)
    text = _ASSIGN.sub(lambda m: f"{m.group(1)}={MASK}" if is_secret_name(m.group(1)) else m.group(0), text)
    return _FLAG_VALUE.sub(
        lambda m: f"{m.group(1)}{m.group(2)}{MASK}" if _SECRET_FLAG.match(m.group(1)) else m.group(0), text
    )


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    return {k: (MASK if is_secret_name(k) else redact_text(v)) for k, v in env.items()}


def redact_argv(argv: Sequence[str]) -> list[str]:
    """Each word with URL credentials masked; the value after (or in) a secret flag masked."""
    out: list[str] = []
    mask_next = False
    for word in argv:
        if mask_next:
            out.append(MASK)
            mask_next = False
            continue
        flag, eq, _value = word.partition("=")
        if _SECRET_FLAG.match(flag):
            if eq:
                out.append(f"{flag}={MASK}")
            else:
                out.append(word)
                mask_next = True
            continue
        out.append(_URL_USERINFO.sub(rf"\1{MASK}@", word))
    return out


def secret_values(argv: Sequence[str], env: Mapping[str, str]) -> set[str]:
    """The literal secrets a launch carries (secret variables' values, secret flags' values), so that an
    engine that prints its own arguments or environment can be masked in the copies of its log."""
    values = {v for k, v in env.items() if is_secret_name(k) and v}
    for word, after in zip(argv, [*argv[1:], ""], strict=True):
        flag, eq, value = word.partition("=")
        if _SECRET_FLAG.match(flag):
            values.add(value if eq else after)
    return {v for v in values if len(v) >= 4}  # a 1-3 character "secret" would mask unrelated text
