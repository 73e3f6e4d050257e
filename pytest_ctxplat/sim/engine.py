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
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pytest_ctxplat.errors import CtxplatError
from pytest_ctxplat.sim.cache import PrefixCache, block_hashes, mix64, token_array
from pytest_ctxplat.sim.config import SimConfig
from pytest_ctxplat.sim.request import EngineStoppedError, Request, RequestState, TokenEvent
from pytest_ctxplat.sim.timing import Clock, LinearTimingModel, RealClock, StepWork, TimingModel
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


class RequestError(CtxplatError, ValueError):
    """A request the engine cannot serve (bad tokens, too long, ...)."""


@dataclass
class EngineStats:
    """Cumulative counters (tokens unless noted), as vLLM's metrics count them."""

    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    prompt_tokens: int = 0
    prompt_tokens_cached: int = 0
    generation_tokens: int = 0
    request_success: int = 0
    num_preemptions: int = 0
    num_aborted: int = 0
    num_steps: int = 0


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
    ) -> None:
        self.config = config
        self.clock: Clock = clock if clock is not None else RealClock(config.speedup)
        self.timing: TimingModel = timing if timing is not None else LinearTimingModel(config)
        self.cache = PrefixCache(config.num_kv_blocks, config.block_size)
        self.stats = EngineStats()
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
        self, prompt_token_ids: Sequence[int] | npt.NDArray[np.integer], max_tokens: int
    ) -> Request:
        """Queue a request; raises :class:`RequestError` for invalid input. Must be called
        on the engine's event loop."""
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
        )
        self.start()
        self._waiting.append(req)
        self._wake.set()
        return req

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
        """Drop every unreferenced cached block; False if running requests still hold
        cached blocks (those stay)."""
        return self.cache.reset()

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
            self.cache.free(req.blocks)
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
        try:
            while True:
                if not self._running and not self._waiting:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                scheduled, work = self._schedule()
                if not scheduled:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                await self.clock.sleep(self.timing.step_time(work))
                self._complete(scheduled)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: do not leave consumers hanging
            log.exception("simulator engine loop failed")
            self._fail_all(EngineStoppedError(f"simulator engine failed: {exc!r}"))
            raise

    def _schedule(self) -> tuple[dict[Request, int], StepWork]:
        budget = self.config.max_num_batched_tokens
        scheduled: dict[Request, int] = {}
        # 1) decoding sequences: one token each
        for req in list(self._running):
            if budget <= 0:
                break
            if req.state is not RequestState.RUNNING or req in scheduled:
                continue
            decoding = req.num_out > 0 and req.all_len - req.num_computed == 1
            if decoding and self._ensure_blocks(req, 1, scheduled):
                scheduled[req] = 1
                budget -= 1
        # 2) running prefills (chunked)
        for req in list(self._running):
            if budget <= 0:
                break
            if req.state is not RequestState.RUNNING or req in scheduled:
                continue
            n = min(req.all_len - req.num_computed, budget)
            if self._ensure_blocks(req, n, scheduled):
                scheduled[req] = n
                budget -= n
        # 3) admit waiting requests, first come first served
        while self._waiting and budget > 0 and len(self._running) < self.config.max_num_seqs:
            req = self._waiting[0]
            if not self._admit(req):
                break
            self._waiting.popleft()
            n = min(req.all_len - req.num_computed, budget)
            scheduled[req] = n
            budget -= n
        return scheduled, self._work(scheduled)

    def _work(self, scheduled: dict[Request, int]) -> StepWork:
        prefill = prefill_ctx = n_dec = dec_ctx = 0
        for req, n in scheduled.items():
            if req.num_out > 0 and n == 1 and req.all_len - req.num_computed == 1:
                n_dec += 1
                dec_ctx += req.num_computed + 1
            else:
                prefill += n
                prefill_ctx += req.num_computed
        return StepWork(prefill, prefill_ctx, n_dec, dec_ctx)

    def _admit(self, req: Request) -> bool:
        cache = self.cache
        bs = self.config.block_size
        candidates = req.hashes[: (req.all_len - 1) // bs]
        hit = cache.lookup(candidates)
        new_blocks = _cdiv(req.all_len, bs) - hit
        if new_blocks + cache.num_evictable_among(candidates[:hit]) > cache.num_free_blocks:
            return False
        blocks = cache.acquire(candidates[:hit])
        fresh = cache.allocate(new_blocks)
        if fresh is None:  # cannot happen after the check above
            cache.free(blocks)
            return False
        req.blocks = blocks + fresh
        req.num_registered = hit
        req.num_computed = hit * bs
        req.state = RequestState.RUNNING
        self._running.append(req)
        self.stats.prefix_cache_queries += req.all_len
        self.stats.prefix_cache_hits += hit * bs
        if req.cached_tokens is None:
            req.cached_tokens = hit * bs
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
        self.cache.free(req.blocks)
        req.blocks = []
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
        for req, n in scheduled.items():
            if req.state is not RequestState.RUNNING:
                continue  # aborted while the step ran
            req.num_computed += n
            full = req.num_computed // bs
            for i in range(req.num_registered, full):
                self.cache.cache_block(req.blocks[i], req.hashes[i])
            req.num_registered = max(req.num_registered, full)
            if req.num_computed < req.all_len:
                continue  # prefill chunk; no token yet
            if req.num_out == 0:
                req.first_token_time = now
                stats.prompt_tokens += req.prompt_len
                stats.prompt_tokens_cached += req.cached_tokens or 0
            req.push_token(now)
            stats.generation_tokens += 1
            if req.finished:
                self._running.remove(req)
                self.cache.free(req.blocks)
                req.blocks = []
                stats.request_success += 1
                for listener in self.finish_listeners:
                    listener(req)
