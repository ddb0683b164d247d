"""The OpenAI API's request rules as vLLM applies them: a generation request's checks and its errors.

vLLM answers a bad request with ``{"error": {"message", "type", "param", "code"}}``; the simulated
engine gives the same texts for the same mistakes (unknown model, no messages, a context too long).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CHAT_TEMPLATE_TOKENS_FIXED",
    "CHAT_TEMPLATE_TOKENS_PER_MESSAGE",
    "ApiError",
    "GenerationParams",
    "message_text",
    "parse_generation",
]

CHAT_TEMPLATE_TOKENS_PER_MESSAGE = 3  # role markers and separators, as a chat template adds
CHAT_TEMPLATE_TOKENS_FIXED = 1  # the generation prompt


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": None, "code": self.status}}


def bad_request(message: str) -> ApiError:
    return ApiError(400, message, "BadRequestError")


@dataclass(frozen=True)
class GenerationParams:
    prompt_tokens: int
    max_tokens: int
    stream: bool
    include_usage: bool
    ignore_eos: bool


def message_text(message: Any) -> str:
    """A chat message's text: its ``content`` string, or its text parts joined."""
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _prompt_tokens(body: dict[str, Any], chat: bool, count: Callable[[str], int]) -> int:
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise bad_request("'messages' must be a non-empty list")
        return CHAT_TEMPLATE_TOKENS_FIXED + sum(
            CHAT_TEMPLATE_TOKENS_PER_MESSAGE + count(message_text(m)) for m in messages
        )
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        return len(prompt)
    if isinstance(prompt, str):
        return count(prompt)
    raise bad_request("'prompt' must be a string or a list of token ids")


def parse_generation(
    raw: bytes, *, chat: bool, count: Callable[[str], int], served_model_name: str, max_model_len: int
) -> GenerationParams:
    """The checks of ``/v1/chat/completions`` (``chat``) or ``/v1/completions``; raises :class:`ApiError`."""
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise bad_request("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    model = body.get("model", served_model_name)
    if model != served_model_name:
        raise ApiError(404, f"The model `{model}` does not exist.", "NotFoundError")
    prompt_tokens = max(1, _prompt_tokens(body, chat, count))
    # chat: max_completion_tokens (max_tokens is its deprecated name); completions: max_tokens, 16 by default
    max_tokens = (body.get("max_completion_tokens") or body.get("max_tokens")) if chat else body.get("max_tokens", 16)
    if max_tokens is None:
        max_tokens = max_model_len - prompt_tokens
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise bad_request(f"max_tokens must be a positive integer, got {max_tokens!r}")
    if prompt_tokens + max_tokens > max_model_len:
        raise bad_request(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
            "completion). Please reduce the length of the messages or completion."
        )
    return GenerationParams(
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        stream=bool(body.get("stream", False)),
        include_usage=bool((body.get("stream_options") or {}).get("include_usage", False)),
        ignore_eos=bool(body.get("ignore_eos", False)),
    )
