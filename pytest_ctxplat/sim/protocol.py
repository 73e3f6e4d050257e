"""OpenAI / vLLM wire shapes for the simulator: request parsing and response bodies.

Parsing raises :class:`BadRequest`, which the app turns into a 400 response with an
OpenAI-style body ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from pytest_ctxplat.errors import RequestError
from pytest_ctxplat.sim.tokenizer import Tokenizer

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "MODEL_E2E_HEADER",
    "MODEL_E2E_KEY",
    "MODEL_TTFT_HEADER",
    "MODEL_TTFT_KEY",
    "BadRequest",
    "GenParams",
    "error_body",
    "parse_body",
    "parse_chat",
    "parse_completion",
    "sse",
    "usage",
]

#: ``max_tokens`` when a request gives none (completions and chat alike: the simulator
#: has no EOS, so it cannot "generate until done").
DEFAULT_MAX_TOKENS = 16
SSE_DONE = b"data: [DONE]\n\n"


class BadRequest(RequestError):
    """Invalid client input (HTTP 400)."""


@dataclass(frozen=True, slots=True)
class GenParams:
    """What a completion or chat request asks the engine for."""

    prompt_token_ids: list[int] | npt.NDArray[np.int64]
    max_tokens: int
    stream: bool
    include_usage: bool
    request_id: str
    created: int
    model: str


def error_body(message: str, status: int = 400, kind: str = "BadRequestError") -> bytes:
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None,
                                   "code": status}})  # fmt: skip


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def sse(obj: object) -> bytes:
    """One server-sent event carrying ``obj`` as JSON."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"


#: usage fields (and ``X-Ctxplat-Model-*`` response headers) with the request's model
#: time: what the simulated server would take at speedup 1, in milliseconds from arrival
MODEL_TTFT_KEY = "ctxplat_model_ttft_ms"
MODEL_E2E_KEY = "ctxplat_model_e2e_ms"
MODEL_TTFT_HEADER = "x-ctxplat-model-ttft-ms"
MODEL_E2E_HEADER = "x-ctxplat-model-e2e-ms"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int,
          model_ms: tuple[float | None, float | None] = (None, None)) -> dict[str, Any]:
    """The ``usage`` object; ``model_ms`` (model-time TTFT and end, ms) adds
    :data:`MODEL_TTFT_KEY` / :data:`MODEL_E2E_KEY` where known."""
    out: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }
    ttft, e2e = model_ms
    if ttft is not None:
        out[MODEL_TTFT_KEY] = round(ttft, 3)
    if e2e is not None:
        out[MODEL_E2E_KEY] = round(e2e, 3)
    return out


def _token_list(value: object, what: str) -> npt.NDArray[np.int64]:
    """Validate a list of token ids in one numpy pass (a per-item Python check costs tens
    of milliseconds for a long prompt)."""
    if not isinstance(value, list) or not value:
        raise BadRequest(f"{what} must be a non-empty list of token ids")
    try:
        arr = np.array(value)
    except (ValueError, TypeError, OverflowError):
        arr = np.array(value, dtype=object)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        bad = next((t for t in value if isinstance(t, bool) or not isinstance(t, int)), None)
        raise BadRequest(f"{what} must contain only integers, got {bad!r}")
    return arr.astype(np.int64, copy=False)


def prompt_tokens(prompt: object, tokenizer: Tokenizer) -> list[int] | npt.NDArray[np.int64]:
    """Token ids of a completions ``prompt``: a string, a list of ids, or a list holding
    one string or one list of ids."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt)
        if not ids:
            raise BadRequest("the prompt must not be empty")
        return ids
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
        raise BadRequest("only one prompt per request is supported by the simulator")
    return _token_list(prompt, "prompt")


def _common(body: Mapping[str, Any], default_model: str, prefix: str) -> dict[str, Any]:
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
    n = body.get("n", 1)
    if n not in (None, 1):
        raise BadRequest("the simulator supports only n=1")
    stream = body.get("stream", False)
    if not isinstance(stream, bool | None):
        raise BadRequest("stream must be a boolean")
    options = body.get("stream_options") or {}
    if not isinstance(options, Mapping):
        raise BadRequest("stream_options must be an object")
    model = body.get("model")
    return {
        "max_tokens": max_tokens,
        "stream": bool(stream),
        "include_usage": bool(options.get("include_usage", False)),
        "request_id": f"{prefix}-{uuid.uuid4().hex}",
        "created": int(time.time()),
        "model": model if isinstance(model, str) and model else default_model,
    }


def parse_completion(body: Mapping[str, Any], tokenizer: Tokenizer, model: str) -> GenParams:
    if "prompt" not in body:
        raise BadRequest("'prompt' is required")
    ids = prompt_tokens(body["prompt"], tokenizer)
    return GenParams(prompt_token_ids=ids, **_common(body, model, "cmpl"))


def parse_chat(body: Mapping[str, Any], tokenizer: Tokenizer, model: str) -> GenParams:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list")
    add_gen = body.get("add_generation_prompt", True)
    try:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=bool(add_gen))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return GenParams(prompt_token_ids=ids, **_common(body, model, "chatcmpl"))
