"""The simulated inference engine: a continuous-batching scheduler like vLLM's (v1).

Each step (see :meth:`Engine._schedule`):

1. running sequences that decode get one token each (token budget
   ``max_num_batched_tokens``); a sequence that needs a new KV block and finds none
   preempts the most recently admitted running request (recompute: its blocks are
   freed into the cache and it returns to the head of the waiting queue);
2. running sequences still prefilling get the next chunk of their prompt;
3. waiting requests are admitted first-come-first-served while ``max_num_seqs`` and the
   free KV blocks allow. Prefix-cache hits are decided at admission: the leading cached
   full blocks, at most ``(len - 1) // block_size`` of them (the last token is always
   computed). A request is admitted only when blocks for its whole uncached sequence are
   free (it then grows block by block while decoding).

The step's duration comes from the :class:`~pytest_ctxplat.sim.timing.TimingModel`, and
is spent with ``await clock.sleep(duration)``; then sequences that completed their
prefill emit their first token and decoding ones emit one token. Every full block of
prompt and generated tokens is cached as soon as it is computed. A request generates
exactly ``max_tokens`` tokens; the ids depend only on (seed, prompt, position).

Public API: :meth:`Engine.submit` returns a :class:`~pytest_ctxplat.sim.request.Request`
handle (async-iterable of :class:`TokenEvent`); :meth:`Engine.generate` is an async
generator over the same events that aborts the request when the consumer stops early or
is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence

import numpy as np
import numpy.typing as npt

from pytest_ctxplat.errors import EngineStoppedError, RequestError
from pytest_ctxplat.sim.burst import BurstParts, decode_burst
from pytest_ctxplat.sim.cache import PrefixCache, block_hashes, mix64, token_array
from pytest_ctxplat.sim.config import SimConfig
from pytest_ctxplat.sim.hardware import HardwareProfile, TierSpec, load_hardware
from pytest_ctxplat.sim.request import Request, RequestState, TokenEvent
from pytest_ctxplat.sim.roofline import RooflineTimingModel
from pytest_ctxplat.sim.stats import EngineStats
from pytest_ctxplat.sim.tiers import TierChain
from pytest_ctxplat.sim.timing import (
    Clock,
    LinearTimingModel,
    Perturbed,
    RealClock,
    StepWork,
    TimingModel,
    jitter_rng,
)
from pytest_ctxplat.sim.tokenizer import NUM_SPECIAL_TOKENS

__all__ = [
    "Engine",
    "EngineStats",
    "EngineStoppedError",
    "Request",
    "RequestError",
    "TokenEvent",
]

log = logging.getLogger(__name__)


class KvLink:
    """A FIFO link (``gbs`` GB/s plus ``latency_s`` per transfer) carrying KV between
    engines, e.g. from a prefill pool to a decode engine."""

    def __init__(self, gbs: float, latency_s: float) -> None:
        self.s_per_byte = 1.0 / (gbs * 1e9)
        self.latency_s = latency_s
        self.free_at = 0.0
        self.bytes = 0

    def transfer(self, nbytes: int, now: float) -> float:
        """Queue ``nbytes``; returns when they have arrived."""
        start = max(now, self.free_at)
        self.free_at = start + nbytes * self.s_per_byte
        self.bytes += nbytes
        return self.free_at + self.latency_s


def effective_config(config: SimConfig, profile: HardwareProfile) -> SimConfig:
    """``config`` with the block size, KV capacity and limits of ``profile``."""
    model = config.model if config.model != "ctxplat-sim" else profile.model.name
    return config.replace(
        model=model, block_size=profile.block_size,
        kv_capacity_tokens=max(profile.hbm.capacity_tokens, profile.block_size),
        max_num_seqs=profile.max_num_seqs, max_num_batched_tokens=profile.max_num_batched_tokens)


def knobs(config: SimConfig, profile: HardwareProfile | None) -> tuple[float, float, int | None]:
    """``(slowdown, jitter, jitter_seed)`` of an engine: the config's slowdown times the
    profile's; the profile's jitter (and seed) where it sets one, else the config's."""
    if profile is None:
        return config.slowdown, config.jitter, config.jitter_seed
    if profile.jitter:
        return config.slowdown * profile.slowdown, profile.jitter, profile.jitter_seed
    return config.slowdown * profile.slowdown, config.jitter, config.jitter_seed


def slowed_tiers(tiers: Sequence[TierSpec], slowdown: float) -> tuple[TierSpec, ...]:
    """``tiers`` with transfers ``slowdown`` times longer (bandwidths divided by it,
    latencies multiplied)."""
    if slowdown == 1.0:
        return tuple(tiers)
    return tuple(dataclasses.replace(t, read_gbs=t.read_gbs / slowdown,
                                     write_gbs=t.write_gbs / slowdown,
                                     latency_s=t.latency_s * slowdown) for t in tiers)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class Engine:
    """A simulated vLLM engine on one GPU. Create it anywhere; it runs on the event loop
    of the first :meth:`start` (or :meth:`submit`, which starts it when needed)."""

    def __init__(
        self,
        config: SimConfig,
        clock: Clock | None = None,
        timing: TimingModel | None = None,
        profile: HardwareProfile | None = None,
        name: str = "0",
    ) -> None:
        if profile is None and config.profile is not None:
            profile = load_hardware(config.profile, config.profile_overrides)
        self.profile = profile
        self.name = name
        if profile is not None:
            config = effective_config(config, profile)
        self.config = config
        self.clock: Clock = clock if clock is not None else RealClock(config.speedup)
        # the model clock (RealClock.model_now; a virtual clock is model time), which
        # stands still when work arrives outside a step and follows real time when idle
        self.model_now: Callable[[], float] = getattr(self.clock, "model_now", self.clock.now)
        self._hold: Callable[[], None] = getattr(self.clock, "hold", lambda: None)
        self._note_idle: Callable[[], None] = getattr(self.clock, "idle", lambda: None)
        if timing is None and profile is not None:
            timing = RooflineTimingModel(profile)
        base: TimingModel = timing if timing is not None else LinearTimingModel(config)
        self.slowdown, jitter, jitter_seed = knobs(config, profile)
        if self.slowdown != 1.0 or jitter:
            base = Perturbed(base, self.slowdown, jitter, jitter_rng(jitter_seed, name))
        self.timing: TimingModel = base
        self.cache = PrefixCache(config.num_kv_blocks, config.block_size)
        block_bytes = profile.block_bytes if profile is not None else config.block_size
        self.tiers = TierChain(slowed_tiers(profile.tiers[1:], self.slowdown)
                               if profile is not None else (),
                               config.block_size, block_bytes,
                               profile.write_policy if profile is not None else "drop")
        self.block_bytes = block_bytes
        self.hbm_ttl_s = profile.hbm.ttl_s if profile is not None else None
        self.ignore_reset = config.ignore_reset or (profile is not None
                                                    and profile.ignore_reset)
        # disaggregated decode: the link prompt KV arrives on from a prefill engine
        self.kv_link: KvLink | None = None
        self.cache.evicted = []
        self.stats = EngineStats()
        self._burst = BurstParts(self.cache, self.tiers, self.stats, self.timing.step_time,
                                 config.block_size, config.max_num_batched_tokens)
        # virtual time: engines sharing a clock (replicas) and when this one can next
        # finish a request (see _next_visible); the shortest possible step
        self.peers: list[Engine] = []
        self.quiet_until = float("inf")
        inner = base.inner if isinstance(base, Perturbed) else base
        floor = base.min_factor if isinstance(base, Perturbed) else 1.0
        self.min_step_s = max(0.0, floor * min(inner.step_time(StepWork(decode_seqs=1)),
                                               inner.step_time(StepWork(prefill_tokens=1))))
        self.finish_listeners: list[Callable[[Request], None]] = []
        self._waiting: deque[Request] = deque()
        self._running: list[Request] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._seed_key = int(mix64(np.array([config.seed + 0x5EED], dtype=np.uint64))[0])

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        """Start the step loop on the running event loop (no-op if running)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop the loop; unfinished requests fail with :class:`EngineStoppedError`."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail_all(EngineStoppedError("the simulator engine stopped"))

    # -- requests --------------------------------------------------------------------
    def submit(
        self,
        prompt_token_ids: Sequence[int] | npt.NDArray[np.integer],
        max_tokens: int,
        listener: Callable[[Request, float], None] | None = None,
    ) -> Request:
        """Queue a request; raises :class:`RequestError` for invalid input. Must be called
        on the engine's event loop. With ``listener``, no events are queued: it is called
        as ``listener(request, now)`` after each token and on failure."""
        c = self.config
        try:
            prompt = token_array(prompt_token_ids)
        except (ValueError, TypeError, OverflowError) as exc:
            raise RequestError(f"invalid prompt token ids: {exc}") from None
        n = len(prompt)
        if n == 0:
            raise RequestError("the prompt must contain at least one token")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise RequestError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
        lo, hi = int(prompt.min()), int(prompt.max())
        if lo < 0 or hi >= c.vocab_size:
            bad = lo if lo < 0 else hi
            raise RequestError(f"token id {bad} is out of vocabulary (0..{c.vocab_size - 1})")
        if n + max_tokens > c.max_model_len:
            raise RequestError(
                f"This model's maximum context length is {c.max_model_len} tokens. However, "
                f"you requested {n + max_tokens} tokens ({n} in the messages, {max_tokens} "
                "in the completion). Please reduce the length of the messages or completion."
            )
        if _cdiv(n + max_tokens, c.block_size) > self.cache.num_blocks:
            raise RequestError(
                f"the request needs {n + max_tokens} tokens of KV cache but the simulated "
                f"KV capacity is {self.cache.num_blocks * c.block_size} tokens"
            )
        tokens = np.concatenate([prompt, self._output_tokens(prompt, max_tokens)])
        req = Request(
            tokens=tokens,
            prompt_len=n,
            max_tokens=max_tokens,
            hashes=block_hashes(tokens, c.block_size),
            arrival_time=self.clock.now(),
            abort_cb=self._abort,
            listener=listener,
        )
        self._enqueue(req)
        return req

    def submit_hashes(
        self,
        prompt_len: int,
        max_tokens: int,
        hashes: list[int],
        listener: Callable[[Request, float], None],
        remote_kv: bool = False,
    ) -> Request:
        """Queue a request given by its block hashes (prompt and output, one per full
        block of ``prompt_len + max_tokens`` tokens) instead of token ids: the in-process
        fast path. No events are queued; ``listener(request, now)`` is called after each
        token and when the request fails."""
        c = self.config
        if prompt_len < 1 or max_tokens < 1:
            raise RequestError("prompt_len and max_tokens must be >= 1")
        if len(hashes) != (prompt_len + max_tokens) // c.block_size:
            raise RequestError("one hash per full block of prompt and output is needed")
        if _cdiv(prompt_len + max_tokens, c.block_size) > self.cache.num_blocks:
            raise RequestError(
                f"the request needs {prompt_len + max_tokens} tokens of KV cache but the "
                f"simulated KV capacity is {self.cache.num_blocks * c.block_size} tokens")
        req = Request(None, prompt_len, max_tokens, hashes, self.clock.now(), self._abort,
                      listener)
        req.remote_kv = remote_kv
        self._enqueue(req)
        return req

    def _enqueue(self, req: Request) -> None:
        self._hold()
        req.model_arrival = self.model_now()
        self.start()
        self._waiting.append(req)
        self._wake.set()

    async def generate(
        self, prompt_token_ids: Sequence[int] | npt.NDArray[np.integer], max_tokens: int
    ) -> AsyncIterator[TokenEvent]:
        """Submit and yield the request's events; aborts it if the consumer stops or is
        cancelled before the end."""
        req = self.submit(prompt_token_ids, max_tokens)
        try:
            async for event in req:
                yield event
        finally:
            req.abort()

    def reset_prefix_cache(self) -> bool:
        """Drop every unreferenced cached block, and every lower tier's contents; False
        if running requests still hold cached blocks (those stay). With ``ignore_reset``
        (config or profile) nothing is dropped and True is returned, as a server whose
        reset does not reach every tier would answer."""
        if self.ignore_reset:
            return True
        self.tiers.clear()
        return self.cache.reset()

    @property
    def load(self) -> int:
        """Requests waiting or running (what a least-loaded router compares)."""
        return len(self._running) + len(self._waiting)

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def kv_cache_usage(self) -> float:
        return self.cache.usage

    @property
    def kv_evicted_blocks(self) -> int:
        return self.cache.counters.evicted_blocks

    # -- internals -------------------------------------------------------------------
    def _output_tokens(self, prompt: npt.NDArray[np.int64], k: int) -> npt.NDArray[np.int64]:
        pos = np.arange(len(prompt), dtype=np.uint64)
        mixed = mix64(prompt.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + pos)
        total = np.array([mixed.sum(dtype=np.uint64)], dtype=np.uint64)
        key = mix64(total ^ np.uint64(self._seed_key))
        steps = np.arange(1, k + 1, dtype=np.uint64) * np.uint64(0xD6E8FEB86659FD93)
        span = np.uint64(self.config.vocab_size - NUM_SPECIAL_TOKENS)
        out = mix64(steps + key) % span + np.uint64(NUM_SPECIAL_TOKENS)
        result: npt.NDArray[np.int64] = out.astype(np.int64)
        return result

    def _abort(self, req: Request) -> None:
        if req.state is RequestState.RUNNING:
            self._running.remove(req)
            self.cache.free(req.blocks, self.clock.now())
            req.blocks = []
        elif req.state is RequestState.WAITING:
            with contextlib.suppress(ValueError):
                self._waiting.remove(req)
        self.stats.num_aborted += 1

    def _fail_all(self, error: BaseException) -> None:
        for req in [*self._running, *self._waiting]:
            req.abort()
            req.fail(error)

    async def _loop(self) -> None:
        # a virtual clock tells how far the engine may run alone (decode bursts)
        horizon: Callable[[], float] | None = getattr(self.clock, "horizon", None)
        sleep = getattr(self.clock, "sleep_quiet", self.clock.sleep) if horizon else \
            self.clock.sleep
        try:
            while True:
                if not self._running and not self._waiting:
                    self.quiet_until = float("inf")
                    self._note_idle()
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                now = self.clock.now()
                self._expire(now)
                if horizon is not None:
                    # with requests waiting, no burst; peers get the trivial bound
                    self.quiet_until = now if self._waiting else self._next_visible(now)
                    if not self._waiting:
                        limit = min([horizon(), *(p.quiet_until for p in self.peers
                                                  if p is not self)])
                        end = decode_burst(self._running, self._burst, now, limit)
                        if end > now:
                            await sleep(end - now)
                            continue
                scheduled, work = self._schedule(now)
                if not scheduled:
                    await self._idle(now)
                    continue
                dt = self.timing.step_time(work)
                evicted = self.cache.evicted
                if evicted:
                    self.cache.evicted = []
                    end = self.tiers.demote(evicted, now, dt)
                    if end > now + dt:
                        self.stats.stall_s += end - now - dt
                        dt = end - now
                self.stats.busy_s += dt
                await sleep(dt)
                self._complete(scheduled)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: do not leave consumers hanging
            log.exception("simulator engine loop failed")
            self._fail_all(EngineStoppedError(f"simulator engine failed: {exc!r}"))
            raise

    def _next_visible(self, now: float) -> float:
        """A lower bound on when this engine next finishes a request (what other tasks
        can see): every request needs its remaining tokens, one step each, and no step
        is shorter than :attr:`min_step_s`."""
        k = min([r.max_tokens - r.num_out for r in self._running]
                + [r.max_tokens - r.num_out for r in self._waiting], default=0)
        return now + k * self.min_step_s if k else float("inf")

    def _expire(self, now: float) -> None:
        if self.hbm_ttl_s is not None:
            self.cache.expire(now - self.hbm_ttl_s)
        if self.tiers:
            self.tiers.expire(now)

    async def _idle(self, now: float) -> None:
        """Nothing to schedule: wait for a submission, or for the first pending load."""
        self._wake.clear()
        loading = [r.ready_at for r in self._running if r.ready_at > now]
        if not loading:
            self._note_idle()
            await self._wake.wait()
            return
        waiter = asyncio.ensure_future(self._wake.wait())
        sleeper = asyncio.ensure_future(self.clock.sleep(min(loading) - now))
        try:
            await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiter, sleeper):
                task.cancel()
            await asyncio.gather(waiter, sleeper, return_exceptions=True)

    def _schedule(self, now: float = 0.0) -> tuple[dict[Request, int], StepWork]:
        budget = self.config.max_num_batched_tokens
        scheduled: dict[Request, int] = {}
        # 1) decoding sequences: one token each
        bs = self.config.block_size
        running = RequestState.RUNNING
        for req in list(self._running):
            if budget <= 0:
                break
            if req.state is not running or req in scheduled:
                continue
            if req.num_out > 0 and req.prompt_len + req.num_out - req.num_computed == 1 and (
                    req.num_computed < len(req.blocks) * bs
                    or self._ensure_blocks(req, 1, scheduled)):
                scheduled[req] = 1
                budget -= 1
        # 2) running prefills (chunked), once their lower-tier loads are done
        for req in list(self._running) if len(scheduled) < len(self._running) else ():
            if budget <= 0:
                break
            if req.state is not RequestState.RUNNING or req in scheduled or req.ready_at > now:
                continue
            n = min(req.all_len - req.num_computed, budget)
            if self._ensure_blocks(req, n, scheduled):
                scheduled[req] = n
                budget -= n
        # 3) admit waiting requests, first come first served
        admitted = 0
        while self._waiting and budget > 0 and len(self._running) < self.config.max_num_seqs:
            req = self._waiting[0]
            if not self._admit(req, now):
                break
            self._waiting.popleft()
            admitted += 1
            if req.ready_at > now:
                continue  # loading from a lower tier
            n = min(req.all_len - req.num_computed, budget)
            scheduled[req] = n
            budget -= n
        return scheduled, self._work(scheduled, admitted)

    def _work(self, scheduled: dict[Request, int], admitted: int = 0) -> StepWork:
        prefill = prefill_ctx = n_dec = dec_ctx = 0
        pairs = 0.0
        for req, n in scheduled.items():
            if req.num_out > 0 and n == 1 and req.all_len - req.num_computed == 1:
                n_dec += 1
                dec_ctx += req.num_computed + 1
            else:
                prefill += n
                prefill_ctx += req.num_computed
                pairs += n * (req.num_computed + (n + 1) / 2)
        return StepWork(prefill, prefill_ctx, n_dec, dec_ctx, pairs, admitted)

    def _admit(self, req: Request, now: float = 0.0) -> bool:
        cache = self.cache
        if cache.num_free_blocks <= req.blocked_at_free:
            return False  # nothing was freed since this request last failed to fit
        bs = self.config.block_size
        candidates = req.hashes[: (req.all_len - 1) // bs]
        hit = cache.lookup(candidates)
        where = self.tiers.find(candidates, hit) if self.tiers else []
        remote = req.remote_kv and self.kv_link is not None and req.num_out == 0
        ext = len(candidates) - hit if remote else len(where)
        new_blocks = _cdiv(req.all_len, bs) - hit
        if new_blocks + cache.num_evictable_among(candidates[:hit]) > cache.num_free_blocks:
            req.blocked_at_free = cache.num_free_blocks
            return False
        req.blocked_at_free = -1
        blocks = cache.acquire(candidates[:hit])
        fresh = cache.allocate(new_blocks)
        if fresh is None:  # cannot happen after the check above
            cache.free(blocks, now)
            return False
        req.blocks = blocks + fresh
        stats = self.stats
        if remote and self.kv_link is not None:
            cache.cache_blocks(fresh, candidates[hit:], 0, ext)
            req.ready_at = self.kv_link.transfer(ext * self.block_bytes, now)
            stats.external_queries += req.all_len
            stats.external_hits += ext * bs
        elif self.tiers:
            queried = len(candidates) - hit
            stats.external_queries += req.all_len
            if ext:
                loaded = candidates[hit : hit + ext]
                cache.cache_blocks(fresh, loaded, 0, ext)
                req.ready_at = self.tiers.load(loaded, where, now, queried)
                stats.external_hits += ext * bs
            elif queried:
                self.tiers.note_miss(queried)
        req.num_registered = hit + ext
        req.num_computed = (hit + ext) * bs
        req.state = RequestState.RUNNING
        self._running.append(req)
        stats.prefix_cache_queries += req.all_len
        stats.prefix_cache_hits += hit * bs
        stats.hbm_query_blocks += len(candidates)
        if req.cached_tokens is None:
            req.cached_tokens = (hit + ext) * bs
            req.external_tokens = ext * bs
        return True

    def _ensure_blocks(self, req: Request, n_new: int, scheduled: dict[Request, int]) -> bool:
        """Make room for ``n_new`` more tokens of ``req``, preempting the most recently
        admitted running requests if needed. False if ``req`` itself was preempted."""
        need = _cdiv(req.num_computed + n_new, self.config.block_size) - len(req.blocks)
        while need > 0:
            fresh = self.cache.allocate(need)
            if fresh is not None:
                req.blocks.extend(fresh)
                return True
            victim = self._running[-1]
            self._preempt(victim)
            scheduled.pop(victim, None)
            if victim is req:
                return False
        return True

    def _preempt(self, req: Request) -> None:
        self._running.remove(req)
        self.cache.free(req.blocks, self.clock.now())
        req.blocks = []
        req.ready_at = 0.0
        req.num_computed = 0
        req.num_registered = 0
        req.state = RequestState.WAITING
        req.num_preemptions += 1
        self._waiting.appendleft(req)
        self.stats.num_preemptions += 1

    def _complete(self, scheduled: dict[Request, int]) -> None:
        now = self.clock.now()
        bs = self.config.block_size
        stats = self.stats
        stats.num_steps += 1
        register = self.cache.cache_blocks
        for req, n in scheduled.items():
            if req.state is not RequestState.RUNNING:
                continue  # aborted while the step ran
            req.num_computed += n
            full = req.num_computed // bs
            if full > req.num_registered:
                register(req.blocks, req.hashes, req.num_registered, full)
                stats.refill_blocks += self.tiers.lost.take_many(req.hashes, req.num_registered,
                                                                 full)
                stats.computed_blocks += full - req.num_registered
                req.num_registered = full
            if req.num_computed < req.all_len:
                continue  # prefill chunk; no token yet
            if req.num_out == 0:
                req.first_token_time = now
                req.model_first_token = self.model_now()
                cached = req.cached_tokens or 0
                stats.prompt_tokens += req.prompt_len
                stats.prompt_tokens_cached += cached
                stats.tokens_external += req.external_tokens
                stats.tokens_local_hit += cached - req.external_tokens
                stats.tokens_local_compute += req.prompt_len - cached
            req.push_token(now)
            stats.generation_tokens += 1
            if req.finished:
                req.model_finish = self.model_now()
                self._running.remove(req)
                self.cache.free(req.blocks, now)
                req.blocks = []
                stats.request_success += 1
                for listener in self.finish_listeners:
                    listener(req)
