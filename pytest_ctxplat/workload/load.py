"""Load shapes: how many users are active when, how new sessions arrive, and per-user
token budgets. One :class:`LoadShape` is the ``load:`` mapping of every workload.

- **closed loop** (``arrival: closed``, the default): ``users`` users, each with one
  request in flight at a time. ``ramp_s`` starts them one after another over that many
  seconds; ``stages`` change the number of active users over time (each stage ramps
  linearly from the previous count over its own ``ramp_s``); a user beyond the active
  count finishes its request and waits.
- **open loop** (``arrival: poisson`` or ``gamma``): sessions start at random times,
  ``rate_per_s`` on average, whatever the server's speed; ``gamma_shape`` below 1 makes
  arrivals burstier (coefficient of variation ``1/sqrt(gamma_shape)``; 1 is Poisson).
  ``max_concurrency`` caps the sessions alive at once (arrivals beyond it wait).
- **token budgets**: ``input_tpm`` / ``output_tpm`` limit each user's prompt and output
  tokens per minute like a provider's rate limit (a token bucket holding one minute of
  budget); a user over budget backs off, ``backoff_s`` doubling up to ``backoff_max_s``.
- **capacity at the SLO** (``controller:``): closed-loop users governed by the test's
  SLO instead of a fixed count (see :class:`ControllerConfig`).
"""

from __future__ import annotations

import dataclasses
import math
import random

from ..config import FieldError, Validated, setting

__all__ = ["ARRIVALS", "ControllerConfig", "LoadShape", "Stage", "TokenBudget"]

ARRIVALS = ("closed", "poisson", "gamma")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Stage(Validated):
    """``users`` active users for ``duration_s`` seconds, reached over ``ramp_s``."""

    users: int = setting(ge=0, doc="active users at the end of the stage's ramp")
    duration_s: float = setting(gt=0, doc="length of the stage")
    ramp_s: float = setting(0.0, ge=0, doc="linear ramp from the previous stage's users")

    def validate(self) -> None:
        if self.ramp_s > self.duration_s:
            raise FieldError("ramp_s", f"must be <= duration_s ({self.duration_s:g}), "
                                       f"got {self.ramp_s:g}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ControllerConfig(Validated):
    """The SLO-governed controller (``load: {controller: {...}}``): it starts with
    ``start_users`` active users and, after each change, waits ``cooldown_s``, then
    judges every ``window_s`` of completed requests against the test's objectives. A
    passing window grows the users in proportion to the headroom (at most ``step_max``
    at once); a breach backs off, and so does a throughput plateau (output tokens/s up
    by less than ``plateau_gain`` times the share of users a growth step added). A level that passes
    ``hold_windows`` windows in a row with no room to grow is the sustained capacity."""

    start_users: int = setting(1, ge=1, doc="active users at the start")
    max_users: int = setting(64, ge=1, doc="never more active users than this")
    step_max: int = setting(8, ge=1, doc="most users added in one step")
    cooldown_s: float = setting(10.0, ge=0, doc="wait after each change before judging")
    window_s: float = setting(20.0, gt=0, doc="length of one judged window")
    min_requests: int = setting(10, ge=1, doc="completed requests a window needs; a "
                                "window is extended until it has them")
    plateau_gain: float = setting(0.2, ge=0, doc="a growth step must raise output "
                                  "tokens/s by this share of the users it added (0.2: "
                                  "+10% users, at least +2% tokens/s), else it is a "
                                  "plateau (0: never back off on a plateau)")
    hold_windows: int = setting(3, ge=1, doc="passing windows in a row that confirm the "
                                "sustained level")

    def validate(self) -> None:
        if self.start_users > self.max_users:
            raise FieldError("start_users", f"must be <= max_users ({self.max_users}), "
                                            f"got {self.start_users}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoadShape(Validated):
    """The ``load:`` mapping of a workload (see the module docstring)."""

    arrival: str = setting("closed", choices=ARRIVALS, doc="closed loop, or open-loop "
                           "session arrivals")
    ramp_s: float = setting(0.0, ge=0, doc="start the closed-loop users over this long")
    stages: tuple[Stage, ...] = ()
    rate_per_s: float | None = setting(None, gt=0, doc="open loop: mean session arrivals "
                                       "per second")
    gamma_shape: float = setting(1.0, gt=0, doc="gamma arrivals: below 1 is burstier")
    max_concurrency: int | None = setting(None, gt=0, doc="open loop: most sessions alive")
    input_tpm: int | None = setting(None, gt=0, doc="per-user input tokens per minute")
    output_tpm: int | None = setting(None, gt=0, doc="per-user output tokens per minute")
    backoff_s: float = setting(1.0, gt=0, doc="first backoff when over budget")
    backoff_max_s: float = setting(60.0, gt=0, doc="longest backoff")
    controller: ControllerConfig | None = setting(None, doc="closed loop: find and hold "
                                                  "the most users meeting the SLO")

    def validate(self) -> None:
        if self.controller is not None and (self.arrival != "closed" or self.stages
                                            or self.ramp_s):
            raise FieldError("controller", "the controller governs closed-loop users: "
                                           "it cannot be combined with open-loop "
                                           "arrivals, stages or ramp_s")
        if self.arrival == "closed":
            if self.rate_per_s is not None:
                raise FieldError("rate_per_s", "needs arrival: poisson or gamma")
        else:
            if self.rate_per_s is None:
                raise FieldError("rate_per_s", f"arrival {self.arrival!r} needs "
                                               "rate_per_s > 0")
            if self.stages:
                raise FieldError("stages", "stages apply to closed-loop users "
                                           "(arrival: closed)")
        if self.backoff_max_s < self.backoff_s:
            raise FieldError("backoff_max_s", f"must be >= backoff_s ({self.backoff_s:g})")

    @property
    def open_loop(self) -> bool:
        return self.arrival != "closed"

    @property
    def stages_duration_s(self) -> float | None:
        return sum(s.duration_s for s in self.stages) if self.stages else None

    def max_users(self, users: int) -> int:
        """Users the runner needs tasks for."""
        if self.controller is not None:
            return self.controller.max_users
        return max(s.users for s in self.stages) if self.stages else users

    def active_users(self, t: float, users: int) -> float:
        """How many users may be active at time ``t`` (fractional during ramps)."""
        if not self.stages:
            if self.ramp_s > 0 and t < self.ramp_s:
                return users * t / self.ramp_s
            return float(users)
        start = 0.0
        prev = 0
        for stage in self.stages:
            end = start + stage.duration_s
            if t < end:
                if stage.ramp_s > 0 and t < start + stage.ramp_s:
                    return prev + (stage.users - prev) * (t - start) / stage.ramp_s
                return float(stage.users)
            prev = stage.users
            start = end
        return float(self.stages[-1].users)

    def start_time(self, user: int, users: int) -> float:
        """When closed-loop ``user`` first becomes active (0 for the first user)."""
        if not self.stages:
            return user * self.ramp_s / users if self.ramp_s > 0 else 0.0
        start = 0.0
        prev = 0
        for stage in self.stages:
            if user < stage.users:
                if user < prev:
                    return start
                if stage.ramp_s <= 0:
                    return start
                return start + stage.ramp_s * (user - prev + 1) / (stage.users - prev)
            prev = stage.users
            start += stage.duration_s
        return math.inf

    def next_active(self, user: int, t: float) -> float:
        """The earliest time >= ``t`` at which ``user`` is active (inf: never again)."""
        if not self.stages:
            return t
        start = 0.0
        prev = 0
        for stage in self.stages:
            end = start + stage.duration_s
            if t < end:
                if user < min(prev, stage.users):
                    return t
                if user < stage.users:
                    at = start if stage.ramp_s <= 0 else (
                        start + stage.ramp_s * (user - prev + 1) / (stage.users - prev))
                    if at < end:
                        return max(t, at)
            prev = stage.users
            start = end
        return math.inf

    def interarrival(self, rng: random.Random) -> float:
        """Seconds to the next open-loop arrival."""
        assert self.rate_per_s is not None
        if self.arrival == "poisson":
            return rng.expovariate(self.rate_per_s)
        k = self.gamma_shape
        return rng.gammavariate(k, 1.0 / (k * self.rate_per_s))


class TokenBudget:
    """A provider-style rate limit for one user: token buckets for input and output
    tokens per minute, each holding at most one minute of budget."""

    __slots__ = ("_in", "_out", "_t", "input_tpm", "output_tpm")

    def __init__(self, input_tpm: int | None, output_tpm: int | None) -> None:
        self.input_tpm = input_tpm
        self.output_tpm = output_tpm
        self._in = float(input_tpm or 0)
        self._out = float(output_tpm or 0)
        self._t = 0.0

    def _refill(self, now: float) -> None:
        dt = max(0.0, now - self._t)
        self._t = now
        if self.input_tpm:
            self._in = min(float(self.input_tpm), self._in + dt * self.input_tpm / 60.0)
        if self.output_tpm:
            self._out = min(float(self.output_tpm), self._out + dt * self.output_tpm / 60.0)

    def admit(self, prompt_tokens: int, now: float) -> bool:
        """Charge ``prompt_tokens`` if the budget allows it now (a request larger than a
        whole minute's budget passes when the bucket is full)."""
        self._refill(now)
        if self.output_tpm and self._out <= 0:
            return False
        if self.input_tpm:
            need = min(float(prompt_tokens), float(self.input_tpm))
            if self._in < need:
                return False
            self._in -= prompt_tokens
        return True

    def charge_output(self, output_tokens: int, now: float) -> None:
        self._refill(now)
        if self.output_tpm:
            self._out -= output_tokens
