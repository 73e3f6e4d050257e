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

from ..errors import ServerError
from ..secrets import redact, secret_values
from .scrape import parse_metrics

if TYPE_CHECKING:
    from .base import ServerHandle

__all__ = ["Capabilities", "ProbeLimits", "ensure_capabilities", "probe_capabilities"]

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
    reachable: bool = True
    problems: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def usable(self) -> bool:
        """Whether a workload can be played: token-id completions or chat streamed."""
        return self.reachable and bool(self.token_id_prompts or self.chat)

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


# The probe's own limits: bounded, so a silent server fails fast (docs/concepts/
# reliability.md): a few seconds to connect, at most PROBE_ANSWER_S for an answer.
PROBE_ANSWER_S = 20.0
QUICK_TIMEOUT = httpx.Timeout(5.0)


@dataclasses.dataclass(frozen=True)
class ProbeLimits:
    """How long the probe waits to connect and for an answer."""

    connect_s: float = 5.0
    answer_s: float = PROBE_ANSWER_S

    @property
    def timeout(self) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect_s, read=self.answer_s, write=10.0,
                             pool=self.connect_s)


async def _stream(client: httpx.AsyncClient, url: str, payload: dict[str, Any],
                  limits: ProbeLimits) -> tuple[int, list[dict[str, Any]], str]:
    resp = await client.post(url, content=orjson.dumps(payload),
                             headers={"Content-Type": "application/json"},
                             timeout=limits.timeout)
    if resp.status_code >= 400:
        # redacted before it is cut, so no part of a key the server echoes is left
        text = redact(" ".join(resp.text.split()), secret_values(client.headers))
        return resp.status_code, [], text[:200]
    return resp.status_code, _events(resp.content), ""


def _usage(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    for ev in reversed(events):
        usage = ev.get("usage")
        if isinstance(usage, dict):
            return usage
    return None


def _failure(exc: httpx.HTTPError, limits: ProbeLimits | None = None) -> str:
    if isinstance(exc, httpx.ConnectError):
        return f"connection failed ({exc or type(exc).__name__})"
    if isinstance(exc, httpx.TimeoutException):
        wait = (limits or ProbeLimits()).answer_s
        return f"no answer within {wait:g} s ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}"


async def _try(client: httpx.AsyncClient, url: str, payload: dict[str, Any], what: str,
               problems: dict[str, str], key: str, limits: ProbeLimits
               ) -> tuple[bool, dict[str, Any] | None, bool]:
    """One probe request: (it streamed, its usage, no connection could be made); why it
    did not stream goes into ``problems``."""
    try:
        status, events, text = await _stream(client, url, payload, limits)
    except httpx.HTTPError as exc:
        problems[key] = f"{what}: {_failure(exc, limits)}"
        return False, None, isinstance(exc, httpx.ConnectError)
    if status < 400 and events:
        return True, _usage(events), False
    problems[key] = (f"{what}: HTTP {status} {text}".strip() if status >= 400
                     else f"{what}: HTTP {status}, no server-sent events in the answer")
    return False, None, False


async def _metrics(client: httpx.AsyncClient, url: str, problems: dict[str, str]
                   ) -> tuple[bool, bool | None]:
    """(a Prometheus /metrics answered, it has vLLM's prefix-cache counters)."""
    try:
        resp = await client.get(url + "/metrics", timeout=QUICK_TIMEOUT)
    except httpx.HTTPError as exc:
        problems["metrics"] = f"/metrics: {_failure(exc)}"
        return False, None
    if resp.status_code != 200:
        problems["metrics"] = f"/metrics: HTTP {resp.status_code}"
        return False, None
    try:
        return True, parse_metrics(resp.text).has("vllm:prefix_cache_queries_total")
    except ValueError:
        problems["metrics"] = "/metrics is not Prometheus text"
        return False, None


async def probe_capabilities(client: httpx.AsyncClient, url: str, model: str,
                             limits: ProbeLimits | None = None) -> Capabilities:
    """Probe ``url`` with ``client`` (which carries any auth headers): one short streamed
    completion with token ids (and, when refused, one chat completion) and ``/metrics``,
    each bounded by the probe's timeouts."""
    lim = limits or ProbeLimits()
    problems: dict[str, str] = {}
    base = {"model": model, "max_tokens": 2, "stream": True, "temperature": 0.0,
            "stream_options": {"include_usage": True}}
    token_ids, usage, unreachable = await _try(
        client, url + "/v1/completions", {**base, "prompt": _PROBE_IDS},
        "/v1/completions with token ids", problems, "token_id_prompts", lim)
    chat: bool | None = None
    if not token_ids and not unreachable:
        chat, usage, _ = await _try(
            client, url + "/v1/chat/completions",
            {**base, "messages": [{"role": "user", "content": "hello"}]},
            "/v1/chat/completions", problems, "chat", lim)
    stream_usage = (token_ids or bool(chat)) and usage is not None
    cached: bool | None = None
    if usage is not None:
        details = usage.get("prompt_tokens_details")
        cached = isinstance(details, dict) and isinstance(details.get("cached_tokens"), int)
    elif token_ids or chat:
        cached = False
    metrics, prefix = (False, None) if unreachable else await _metrics(client, url, problems)
    return Capabilities(token_id_prompts=token_ids, chat=chat,
                        stream_usage=stream_usage if (token_ids or chat) else None,
                        cached_tokens=cached, metrics=metrics, prefix_cache_metrics=prefix,
                        reachable=not unreachable, problems=problems)


async def ensure_capabilities(handle: ServerHandle, client: httpx.AsyncClient, model: str,
                              limits: ProbeLimits | None = None) -> Capabilities:
    """Probe ``handle`` once; later calls return the stored result. Raises
    :class:`~pytest_ctxplat.errors.ServerError` with the probe's findings when the
    server is unreachable or has no usable endpoint, so no workload is played against
    it."""
    if handle.capabilities is None:
        caps = await probe_capabilities(client, handle.url, model, limits)
        secrets = secret_values(handle.headers())  # a server may echo the key back
        handle.capabilities = dataclasses.replace(caps, problems={
            k: redact(v, secrets) for k, v in caps.problems.items()})
    caps = handle.capabilities
    if not caps.usable:
        handle.capabilities = None  # probe again next time: it may come up
        findings = "; ".join(f"{v}" for v in caps.problems.values())
        what = "is unreachable" if not caps.reachable else "has no usable endpoint"
        raise ServerError(f"the server at {handle.url} {what} (capability probe: "
                          f"{findings})")
    return caps
