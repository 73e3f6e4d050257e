"""Capability probe of an OpenAI-compatible server, run once before its first test.

Servers differ in what they report: token-id prompts on ``/v1/completions``, ``usage``
in the stream, ``usage.prompt_tokens_details.cached_tokens``, Prometheus ``/metrics``
with vLLM's prefix-cache counters. The probe sends one short streamed request and reads
``/metrics``; the run then degrades gracefully (chat text instead of token ids) and its
result says what could not be measured and why, so an SLO on such a metric fails with
that reason rather than with a bare "not measured".
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from .scrape import parse_metrics

if TYPE_CHECKING:
    from .base import ServerHandle

__all__ = ["Capabilities", "ensure_capabilities", "probe_capabilities"]

_PROBE_IDS = list(range(1000, 1016))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Capabilities:
    """What a server showed it can do (None: could not tell)."""

    token_id_prompts: bool | None = None
    chat: bool | None = None
    stream_usage: bool | None = None
    cached_tokens: bool | None = None
    metrics: bool | None = None
    prefix_cache_metrics: bool | None = None
    problems: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def run_notes(self) -> dict[str, str]:
        """Why metrics will be missing, keyed by the observed-metric name SLOs use."""
        notes: dict[str, str] = {}
        if self.cached_tokens is False:
            notes["hit_rate.request"] = (
                "probe: the server does not report usage.prompt_tokens_details.cached_tokens"
                + ("" if self.stream_usage else " (no usage in the stream at all)")
                + "; for vLLM add --enable-prompt-tokens-details")
        if self.metrics is False:
            notes["hit_rate.server"] = "probe: the server has no Prometheus /metrics endpoint"
        elif self.prefix_cache_metrics is False:
            notes["hit_rate.server"] = ("probe: /metrics has no vllm:prefix_cache_queries "
                                        "counter (not a vLLM-compatible server?)")
        return notes


def _events(body: bytes) -> list[dict[str, Any]]:
    out = []
    for line in body.splitlines():
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            continue
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


async def _stream(client: httpx.AsyncClient, url: str, payload: dict[str, Any]
                  ) -> tuple[int, list[dict[str, Any]], str]:
    resp = await client.post(url, content=orjson.dumps(payload),
                             headers={"Content-Type": "application/json"}, timeout=60.0)
    if resp.status_code >= 400:
        return resp.status_code, [], " ".join(resp.text.split())[:200]
    return resp.status_code, _events(resp.content), ""


def _usage(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    for ev in reversed(events):
        usage = ev.get("usage")
        if isinstance(usage, dict):
            return usage
    return None


async def probe_capabilities(client: httpx.AsyncClient, url: str, model: str) -> Capabilities:
    """Probe ``url`` with ``client`` (which carries any auth headers)."""
    problems: dict[str, str] = {}
    base = {"model": model, "max_tokens": 2, "stream": True, "temperature": 0.0,
            "stream_options": {"include_usage": True}}
    token_ids: bool | None = None
    chat: bool | None = None
    usage: dict[str, Any] | None = None
    try:
        status, events, text = await _stream(client, url + "/v1/completions",
                                              {**base, "prompt": _PROBE_IDS})
        token_ids = status < 400 and bool(events)
        if token_ids:
            usage = _usage(events)
        else:
            problems["token_id_prompts"] = f"/v1/completions with token ids: HTTP {status} " \
                                           f"{text}".strip()
            status, events, text = await _stream(
                client, url + "/v1/chat/completions",
                {**base, "messages": [{"role": "user", "content": "hello"}]})
            chat = status < 400 and bool(events)
            if chat:
                usage = _usage(events)
            else:
                problems["chat"] = f"/v1/chat/completions: HTTP {status} {text}".strip()
    except httpx.HTTPError as exc:
        problems["request"] = f"probe request failed: {type(exc).__name__}"
    stream_usage = None if token_ids is None else usage is not None
    cached: bool | None = None
    if usage is not None:
        details = usage.get("prompt_tokens_details")
        cached = isinstance(details, dict) and isinstance(details.get("cached_tokens"), int)
    elif stream_usage is False:
        cached = False
    metrics: bool | None = None
    prefix: bool | None = None
    try:
        resp = await client.get(url + "/metrics", timeout=15.0)
        metrics = resp.status_code == 200
        if metrics:
            try:
                snap = parse_metrics(resp.text)
                prefix = snap.has("vllm:prefix_cache_queries_total")
            except ValueError:
                metrics = False
                problems["metrics"] = "/metrics is not Prometheus text"
        else:
            problems["metrics"] = f"/metrics: HTTP {resp.status_code}"
    except httpx.HTTPError as exc:
        metrics = False
        problems["metrics"] = f"/metrics: {type(exc).__name__}"
    return Capabilities(token_id_prompts=token_ids, chat=chat, stream_usage=stream_usage,
                        cached_tokens=cached, metrics=metrics, prefix_cache_metrics=prefix,
                        problems=problems)


async def ensure_capabilities(handle: ServerHandle, client: httpx.AsyncClient, model: str
                              ) -> Capabilities:
    """Probe ``handle`` once; later calls return the stored result."""
    if handle.capabilities is None:
        handle.capabilities = await probe_capabilities(client, handle.url, model)
    return handle.capabilities
