"""Cache states a test can trust: cold (every tier reset, and shown to be empty) and
warm (a workload's prefixes loaded, and for a lower tier pushed out of HBM).

:func:`reset_all` resets every tier a server has: ``POST /reset_prefix_cache`` with
vLLM's ``reset_external=true`` (the KV connector's store too), reading the answer's body
(a refused reset is HTTP 200 with ``{"success": false}``), then whatever stores the
launcher set up that the server cannot reset itself (the handle's ``reset_stores()``).
:func:`make_cold` plants a canary prompt, resets, and sends the canary again: it must
come back with no cached tokens and no hit counter may move; otherwise the state is not
cold and :class:`InvalidSetup` says why (a reset that reports success while a tier keeps
serving the same blocks is caught here). :func:`make_warm` plays a workload's first
requests and, for a lower tier, fills HBM with other prompts (sized from the server's
``vllm:cache_config_info`` ``num_gpu_blocks``) or restarts the server, so the next hits
come from that tier.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from ..errors import ServerError
from ..servers.base import ServerHandle
from ..servers.scrape import MetricsSnapshot, label, scrape
from ..workload.spec import WorkloadSpec
from .core import PlayOptions, play
from .http import HttpTarget, _first_model

__all__ = ["TIERS", "ColdReport", "InvalidSetup", "WarmReport", "make_cold", "make_warm",
           "reset_all", "server_capacity"]

INVALID = "invalid setup: "
TIERS = ("hbm", "dram", "nvme", "disk", "external")
# hit counters that must not move for a probe of a cold cache
HIT_COUNTERS = ("vllm:prefix_cache_hits_total", "vllm:external_prefix_cache_hits_total")
CANARY_TOKENS = 512
FILL_PROMPT_TOKENS = 2048
_TIMEOUT = httpx.Timeout(connect=5.0, read=120.0, write=30.0, pool=5.0)


class InvalidSetup(ServerError):
    """The cache state a test asked for could not be made or verified. The message
    starts with ``invalid setup: ``; raised from fixture setup, the test errors (it is
    not a failure, so it is never taken for a regression)."""

    def __init__(self, problem: str) -> None:
        super().__init__(INVALID + problem)


@dataclasses.dataclass(frozen=True)
class ColdReport:
    """How the cold state was made and verified."""

    resets: tuple[str, ...]
    probe_tokens: int
    cached_tokens: int | None
    hit_deltas: Mapping[str, float]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class WarmReport:
    """How the warm state was made: requests played, how HBM was emptied, and the
    probe's hits per tier (``tier_hits``: blocks for the simulator, tokens for
    ``external``). ``verified`` is False where no probe could run without undoing the
    state (after a restart); then the run's own counters show it."""

    tier: str
    requests: int
    evicted_by: str
    fill_tokens: int
    tier_hits: Mapping[str, float]
    verified: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _hit_counters(snap: MetricsSnapshot) -> dict[str, float]:
    out = {k: snap.get(k) for k in HIT_COUNTERS if snap.has(k)}
    out.update({k: v for k, v in snap.with_prefix("ctxplat_sim:tier_hit_blocks").items()
                if "_total" in k})
    return out


def _tier_of(key: str) -> str:
    if key.startswith("vllm:external_"):
        return "external"
    if key.startswith("vllm:prefix_cache_hits"):
        return "hbm"
    tier = label(key, "tier")
    return key if tier is None else tier


async def _model(handle: ServerHandle, client: httpx.AsyncClient) -> str:
    return (getattr(handle, "served_model", None) or handle.info.model
            or await _first_model(client, handle.url) or "default")


async def _complete(client: httpx.AsyncClient, url: str, model: str,
                    tokens: Sequence[int]) -> int | None:
    """One token-id completion (1 output token); its ``cached_tokens`` (None: not
    reported)."""
    body = {"model": model, "prompt": list(tokens), "max_tokens": 1, "temperature": 0.0}
    try:
        resp = await client.post(url + "/v1/completions", json=body, timeout=_TIMEOUT)
    except httpx.HTTPError as exc:
        raise InvalidSetup(f"probe request to {url} failed: {type(exc).__name__}: "
                           f"{exc}") from None
    if resp.status_code >= 400:
        raise InvalidSetup(f"probe request to {url}: HTTP {resp.status_code} "
                           f"{' '.join(resp.text.split())[:200]}")
    details = (resp.json().get("usage") or {}).get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens")
    return cached if isinstance(cached, int) else None


async def reset_all(handle: ServerHandle, client: httpx.AsyncClient, *,
                    attempts: int = 10) -> tuple[str, ...]:
    """Reset every tier of ``handle``'s server; what was reset. A refused reset
    (``{"success": false}``, e.g. while requests still hold blocks) is retried, then
    raises :class:`InvalidSetup`, as does an HTTP error."""
    url = handle.url + "/reset_prefix_cache"
    done: list[str] = []
    for attempt in range(attempts):
        try:
            resp = await client.post(url, params={"reset_external": "true"},
                                     timeout=_TIMEOUT)
        except httpx.HTTPError as exc:
            raise InvalidSetup(f"POST {url} failed: {type(exc).__name__}: {exc}") from None
        if resp.status_code >= 400:
            raise InvalidSetup(f"POST {url}: HTTP {resp.status_code} "
                               f"{' '.join(resp.text.split())[:200]}")
        try:
            success = resp.json().get("success") if resp.content else None
        except ValueError:
            success = None
        if success is not False:
            done.append("prefix cache and external (reset_external=true)"
                        + ("" if success else ": no success field in the answer"))
            break
        if attempt == attempts - 1:
            raise InvalidSetup(f"POST {url}?reset_external=true answered "
                               f"HTTP {resp.status_code} {{'success': false}} "
                               f"{attempts} times (blocks still held by requests?)")
        await asyncio.sleep(0.5)
    reset_stores = getattr(handle, "reset_stores", None)
    if callable(reset_stores):
        done.extend(reset_stores())
    return tuple(done)


async def make_cold(handle: ServerHandle, *, seed: int | None = None) -> ColdReport:
    """Reset every tier and verify the cache is cold: a canary prompt sent before the
    reset must, sent again after it, have no cached tokens and move no hit counter.
    Then reset again (the probe's own blocks). Raises :class:`InvalidSetup`."""
    rng = random.Random(seed)
    canary = [rng.randrange(100, 1000) for _ in range(CANARY_TOKENS)]
    async with httpx.AsyncClient(headers=handle.headers()) as client:
        model = await _model(handle, client)
        await _complete(client, handle.url, model, canary)
        resets = await reset_all(handle, client)
        before = await scrape(client, handle.url)
        cached = await _complete(client, handle.url, model, canary)
        after = await scrape(client, handle.url)
        deltas: dict[str, float] = {}
        if before is not None and after is not None:
            b = _hit_counters(before)
            deltas = {k: v - b.get(k, 0.0) for k, v in _hit_counters(after).items()}
        moved = {k.replace("_total", ""): v for k, v in deltas.items() if v > 0}
        if cached or moved:
            raise InvalidSetup(
                f"the cache of {handle.info.profile} ({handle.url}) is not cold after "
                f"reset ({'; '.join(resets)}): a probe of {len(canary)} tokens sent "
                f"before the reset came back with cached_tokens={cached}"
                + (f" and moved {', '.join(f'{t} by {v:g}' for t, v in moved.items())}"
                   if moved else "")
                + "; the server's reset does not reach every tier")
        if cached is None and before is None:
            raise InvalidSetup(f"cannot verify that {handle.info.profile} is cold: it "
                               "reports neither cached_tokens nor /metrics")
        await reset_all(handle, client)
    return ColdReport(resets=resets, probe_tokens=len(canary), cached_tokens=cached,
                      hit_deltas=deltas)


def server_capacity(text: str) -> int | None:
    """HBM KV capacity in tokens from ``vllm:cache_config_info`` (``num_gpu_blocks`` x
    ``block_size``) in Prometheus text; None when absent."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("vllm:cache_config_info"):
                try:
                    return (int(sample.labels["num_gpu_blocks"])
                            * int(sample.labels["block_size"]))
                except (KeyError, ValueError):
                    return None
    return None


async def _fill(handle: ServerHandle, client: httpx.AsyncClient, model: str,
                rng: random.Random) -> int:
    """Send unrelated prompts totalling 1.5x the HBM capacity; tokens sent."""
    try:
        text = (await client.get(handle.url + "/metrics", timeout=_TIMEOUT)).text
        capacity = server_capacity(text)
    except (httpx.HTTPError, ValueError):
        capacity = None
    if capacity is None:
        raise InvalidSetup(f"cannot push prefixes out of HBM on {handle.info.profile}: "
                           "its /metrics has no vllm:cache_config_info num_gpu_blocks")
    total = capacity * 3 // 2
    sent = 0
    while sent < total:
        n = min(FILL_PROMPT_TOKENS, total - sent)
        await _complete(client, handle.url, model,
                        [rng.randrange(100, 4000) for _ in range(n)])
        sent += n
    return sent


async def make_warm(handle: ServerHandle, spec: WorkloadSpec, tier: str = "hbm", *,
                    name: str = "run", seed: int = 0, evict: str = "auto") -> WarmReport:
    """Play ``spec``'s first requests (one per user) under the run ``name`` and ``seed``
    (so the tokens are the ones that run will send), and for a tier below HBM push
    them out of HBM: ``evict="fill"`` sends other prompts sized from the server's
    capacity, then replays the requests to check the hits come from ``tier`` and fills
    again; ``"restart"`` restarts the server (a disk store survives it); ``"auto"``
    restarts for ``disk``/``external`` where the handle can, else fills. Leaves
    ``handle.reset_cache`` False, so the next run plays on the warm cache."""
    if tier not in TIERS:
        raise InvalidSetup(f"ctxplat_warm: tier={tier!r} is not a tier; valid: "
                           + ", ".join(TIERS))
    if evict not in ("auto", "fill", "restart"):
        raise InvalidSetup(f"ctxplat_warm: evict={evict!r}; valid: auto, fill, restart")
    restart = getattr(handle, "restart", None)
    if evict == "auto":
        evict = "restart" if tier in ("disk", "external") and callable(restart) else "fill"
    if evict == "restart" and not callable(restart):
        raise InvalidSetup(f"ctxplat_warm: {handle.info.profile} cannot be restarted")
    handle.reset_cache = False  # neither these plays nor the next run may reset it
    first = dataclasses.replace(spec, max_requests=spec.users, duration_s=None)
    options = PlayOptions(name=name, seed=seed)
    await play(first, HttpTarget(handle, reset_cache=False), options)
    if tier == "hbm":
        return WarmReport(tier=tier, requests=first.users, evicted_by="none", fill_tokens=0,
                          tier_hits={}, verified=True)
    if evict == "restart":
        assert callable(restart)
        await asyncio.to_thread(restart)
        return WarmReport(tier=tier, requests=first.users, evicted_by="restart",
                          fill_tokens=0, tier_hits={}, verified=False)
    rng = random.Random(seed * 7919 + 17)
    async with httpx.AsyncClient(headers=handle.headers()) as client:
        model = await _model(handle, client)
        filled = await _fill(handle, client, model, rng)
        before = await scrape(client, handle.url)
        await play(first, HttpTarget(handle, reset_cache=False), options)
        after = await scrape(client, handle.url)
        hits: dict[str, float] = {}
        if before is not None and after is not None:
            b = _hit_counters(before)
            for key, value in _hit_counters(after).items():
                t = _tier_of(key)
                hits[t] = hits.get(t, 0.0) + value - b.get(key, 0.0)
        want = "external" if tier in ("disk", "external") and tier not in hits else tier
        if hits.get(want, 0.0) <= 0:
            raise InvalidSetup(f"ctxplat_warm(tier={tier!r}): after filling HBM with "
                               f"{filled} tokens, replaying the workload's first requests "
                               f"hit no blocks in {want} (hits per tier: "
                               f"{ {k: round(v) for k, v in hits.items()} })")
        filled += await _fill(handle, client, model, rng)
    return WarmReport(tier=tier, requests=first.users, evicted_by="fill", fill_tokens=filled,
                      tier_hits=hits, verified=True)
