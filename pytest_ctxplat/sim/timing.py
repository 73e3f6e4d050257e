"""Clocks and the step-time model of the simulator.

Both are the single place where time enters the simulation, so that a roofline GPU
model, memory tiers or a virtual clock can replace them later:

* a :class:`Clock` gives ``now()`` and ``await sleep(dt)`` in *model* seconds;
* a :class:`TimingModel` turns the work of one engine step (:class:`StepWork`) into a
  duration in model seconds; :class:`Perturbed` wraps one to make every step
  ``slowdown`` times longer and, with ``jitter``, noisy (to prove a release gate works).
"""

from __future__ import annotations

import asyncio
import math
import zlib
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pytest_ctxplat.errors import SimulatorError
from pytest_ctxplat.sim.config import SimConfig

__all__ = ["Clock", "LinearTimingModel", "Perturbed", "RealClock", "StepWork", "TimingModel",
           "jitter_rng"]


class Clock(Protocol):
    """Where the engine reads and spends time."""

    def now(self) -> float: ...

    async def sleep(self, dt: float) -> None: ...


class RealClock:
    """Real time of the running event loop; sleeps are divided by ``speedup``.

    Back-to-back sleeps are
    chained to deadlines (the next one starts where the previous one was due to end,
    when that was less than ``catch_up_s`` ago), so the engine's own bookkeeping between
    steps is absorbed into the step times instead of being added to them.

    ``now()`` is the engine's *model* clock (:meth:`model_now`): what the model takes at
    speedup 1. A step advances it by exactly its duration, however late the event loop
    woke the engine; between steps of a busy engine it stands still (bookkeeping is not
    model time); while the engine is idle (:meth:`idle`) it follows real time times
    ``speedup``. A request's model TTFT and end come from it, so the HTTP client's
    figures can be held against what the model says.
    """

    def __init__(self, speedup: float = 1.0, catch_up_s: float = 0.05) -> None:
        if speedup <= 0:
            raise SimulatorError("speedup must be > 0")
        self.speedup = speedup
        self.catch_up_s = catch_up_s
        self._due = float("-inf")
        # model clock: model time at the anchor, the anchor's loop time (None: frozen)
        # and the model time the current step ends at (inf: no step)
        self._model = 0.0
        self._anchor: float | None = None
        self._cap = math.inf

    def now(self) -> float:
        """The engine's clock: model time (:meth:`model_now`), so TTLs, tier loads and
        request times mean model seconds at any speed-up."""
        return self.model_now()

    def model_now(self) -> float:
        """Model seconds since the clock's start (see the class docstring)."""
        if self._anchor is None:
            return self._model
        t = self._model + (asyncio.get_running_loop().time() - self._anchor) * self.speedup
        return min(t, self._cap)

    def idle(self) -> None:
        """The engine waits for work: model time follows real time until :meth:`hold`,
        and the next step starts when it is called, not where the last one was due
        (chaining across an idle gap would shorten the first steps after it)."""
        self._due = float("-inf")
        self._model = self.model_now()
        self._anchor = asyncio.get_running_loop().time()
        self._cap = math.inf

    def hold(self) -> None:
        """Work arrived: outside a step, model time stops at this instant until the
        next step starts."""
        if math.isinf(self._cap):
            self._model = self.model_now()
            self._anchor = None

    async def sleep(self, dt: float) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        dt = max(0.0, dt)
        start_model = self.model_now()
        self._model, self._anchor, self._cap = start_model, now, start_model + dt
        start = self._due if now - self._due < self.catch_up_s else now
        self._due = start + dt / self.speedup
        try:
            await asyncio.sleep(max(0.0, self._due - now))
        except BaseException:  # a wait cut short ends where model time had got
            self._model = self.model_now()
            raise
        else:  # a step takes its whole duration, however early or late the loop woke
            self._model = self._cap
        finally:
            self._anchor = None
            self._cap = math.inf


@dataclass(frozen=True, slots=True)
class StepWork:
    """What one engine step computes.

    ``prefill_tokens``: prompt (or recompute) tokens computed in this step.
    ``prefill_context_tokens``: tokens already in KV (cache hits and earlier chunks) of
    the requests prefilling in this step, which their new tokens attend to.
    ``decode_seqs``: sequences producing one token from one new token.
    ``decode_context_tokens``: total context length (KV read) of those sequences.
    ``prefill_attention_pairs``: query-key pairs of the prefill attention, summed over
    prefilling requests: ``n * (context + (n + 1) / 2)`` for ``n`` new tokens.
    ``admitted``: requests the scheduler admitted in this step (each costs the engine
    some CPU time: input processing, block tables, lookups).
    """

    prefill_tokens: int = 0
    prefill_context_tokens: int = 0
    decode_seqs: int = 0
    decode_context_tokens: int = 0
    prefill_attention_pairs: float = 0.0
    admitted: int = 0


class TimingModel(Protocol):
    def step_time(self, work: StepWork) -> float: ...


class LinearTimingModel:
    """Duration of a step as a linear function of its work (coefficients from
    :class:`SimConfig`)::

        prefill_tokens * prefill_s_per_token
        + prefill_context_tokens * prefill_s_per_cached_token
        + (decode_step_base_s + decode_seqs * decode_s_per_seq
           + decode_context_tokens * decode_s_per_context_token)   if decode_seqs else 0
    """

    def __init__(self, config: SimConfig) -> None:
        self.config = config

    def step_time(self, work: StepWork) -> float:
        c = self.config
        t = (
            work.prefill_tokens * c.prefill_s_per_token
            + work.prefill_context_tokens * c.prefill_s_per_cached_token
        )
        if work.decode_seqs:
            t += (
                c.decode_step_base_s
                + work.decode_seqs * c.decode_s_per_seq
                + work.decode_context_tokens * c.decode_s_per_context_token
            )
        return t


# Lognormal noise is clipped to this many sigmas, so a step is never shorter than
# ``Perturbed.min_factor`` times its modelled time (virtual time relies on a floor).
_JITTER_CLIP_SIGMAS = 3.0


def jitter_rng(seed: int | None, stream: str) -> np.random.Generator:
    """The noise generator of one engine: seeded by ``seed`` and the engine's name (so
    replicas differ), or from OS entropy when ``seed`` is None."""
    if seed is None:
        return np.random.default_rng()
    return np.random.default_rng([seed, zlib.crc32(stream.encode())])


class Perturbed:
    """``inner``'s step times times ``slowdown``, each multiplied by lognormal noise of
    sigma ``jitter`` (clipped to +-3 sigma; 0: none) drawn from ``rng``."""

    def __init__(self, inner: TimingModel, slowdown: float = 1.0, jitter: float = 0.0,
                 rng: np.random.Generator | None = None) -> None:
        if not (math.isfinite(slowdown) and slowdown > 0):
            raise SimulatorError(f"slowdown must be a finite number > 0, got {slowdown!r}")
        if not (math.isfinite(jitter) and jitter >= 0):
            raise SimulatorError(f"jitter must be a finite number >= 0, got {jitter!r}")
        self.inner = inner
        self.slowdown = slowdown
        self.jitter = jitter
        self.rng = rng if rng is not None else np.random.default_rng()
        self.min_factor = slowdown * math.exp(-_JITTER_CLIP_SIGMAS * jitter)

    def step_time(self, work: StepWork) -> float:
        t = self.inner.step_time(work) * self.slowdown
        if self.jitter and t > 0:
            z = min(max(float(self.rng.standard_normal()), -_JITTER_CLIP_SIGMAS),
                    _JITTER_CLIP_SIGMAS)
            t *= math.exp(self.jitter * z)
        return t
