"""Distributions given as data: what a fitted workload definition draws its numbers from.

A distribution is a mapping with exactly one of:

* ``constant: V`` - always ``V``;
* ``quantiles: [[P, V], ...]`` - an empirical quantile table: ``P`` from 0 to 1
  (increasing, first 0, last 1), ``V`` not decreasing; a draw interpolates linearly
  between the two knots around a uniform ``P``;
* ``lognormal: {median: M, sigma: S}`` - log-normal with that median and log-sigma;
* ``mixture: [{weight: W, lognormal: {...}}, ...]`` - log-normal components drawn with
  probability proportional to their weights;

and optionally ``min`` / ``max`` (draws are clipped to them).

>>> Dist(quantiles=((0, 1), (0.5, 10), (1, 100))).quantile(0.75)
55.0
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import random
from itertools import pairwise

from ..config import FieldError, Validated, setting

__all__ = ["AgentDistributions", "Dist", "LogNormal", "MixtureItem"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class LogNormal(Validated):
    """A log-normal distribution by its median and log-sigma."""

    median: float = setting(gt=0, doc="median")
    sigma: float = setting(ge=0, doc="standard deviation of the log")

    def sample(self, rng: random.Random) -> float:
        return rng.lognormvariate(math.log(self.median), self.sigma) if self.sigma \
            else self.median

    def cdf(self, x: float) -> float:
        if x <= 0:
            return 0.0
        if not self.sigma:
            return 1.0 if x >= self.median else 0.0
        z = (math.log(x) - math.log(self.median)) / (self.sigma * math.sqrt(2.0))
        return 0.5 * (1.0 + math.erf(z))


@dataclasses.dataclass(frozen=True, kw_only=True)
class MixtureItem(Validated):
    """One log-normal component of a mixture."""

    weight: float = setting(gt=0, doc="relative weight")
    lognormal: LogNormal


@dataclasses.dataclass(frozen=True, kw_only=True)
class Dist(Validated):
    """A distribution given as data (see the module docstring)."""

    constant: float | None = setting(None, doc="always this value")
    quantiles: tuple[tuple[float, ...], ...] | None = setting(
        None, doc="empirical quantile table: [[p, value], ...], p from 0 to 1")
    lognormal: LogNormal | None = None
    mixture: tuple[MixtureItem, ...] | None = None
    min: float | None = setting(None, doc="draws are at least this")
    max: float | None = setting(None, doc="draws are at most this")

    def validate(self) -> None:
        given = [k for k in ("constant", "quantiles", "lognormal", "mixture")
                 if getattr(self, k) is not None]
        if len(given) != 1:
            raise FieldError("quantiles" if not given else given[1],
                             "give exactly one of constant, quantiles, lognormal, mixture"
                             + (f" (got {', '.join(given)})" if given else ""),
                             "constant, quantiles, lognormal, mixture")
        if self.quantiles is not None:
            _check_table(self.quantiles)
        if self.mixture is not None and not self.mixture:
            raise FieldError("mixture", "must have at least one component")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise FieldError("max", f"must be >= min ({self.min:g})")

    @classmethod
    def of(cls, value: float) -> Dist:
        """The constant ``value``."""
        return cls(constant=float(value))

    def quantile(self, p: float) -> float:
        """The quantile table's value at ``p`` (tables only)."""
        if self.quantiles is None:
            raise TypeError("quantile() needs a quantile table")
        ps = [q[0] for q in self.quantiles]
        i = bisect.bisect_right(ps, p)
        if i <= 0:
            return self.quantiles[0][1]
        if i >= len(ps):
            return self.quantiles[-1][1]
        (p0, v0), (p1, v1) = self.quantiles[i - 1][:2], self.quantiles[i][:2]
        return v0 if p1 == p0 else v0 + (v1 - v0) * (p - p0) / (p1 - p0)

    def sample(self, rng: random.Random) -> float:
        """One draw, clipped to ``min`` / ``max``."""
        if self.constant is not None:
            v = self.constant
        elif self.quantiles is not None:
            v = self.quantile(rng.random())
        elif self.lognormal is not None:
            v = self.lognormal.sample(rng)
        else:
            v = self._mixture_sample(rng)
        if self.min is not None and v < self.min:
            v = self.min
        if self.max is not None and v > self.max:
            v = self.max
        return v

    def _mixture_sample(self, rng: random.Random) -> float:
        items = self.mixture or ()
        u = rng.random() * sum(m.weight for m in items)
        for m in items:
            u -= m.weight
            if u <= 0:
                return m.lognormal.sample(rng)
        return items[-1].lognormal.sample(rng)

    def median(self) -> float:
        """The median (of the unclipped distribution, for a mixture approximately)."""
        if self.constant is not None:
            return self.constant
        if self.quantiles is not None:
            return self.quantile(0.5)
        if self.lognormal is not None:
            return self.lognormal.median
        items = self.mixture or ()
        total = sum(m.weight for m in items)
        return math.exp(sum(m.weight * math.log(m.lognormal.median) for m in items) / total)


def _check_table(table: tuple[tuple[float, ...], ...]) -> None:
    if len(table) < 2:
        raise FieldError("quantiles", "needs at least two [p, value] pairs",
                         "[[0, lowest], ..., [1, highest]]")
    for k, row in enumerate(table):
        if len(row) != 2:
            raise FieldError("quantiles", f"item {k} must be a [p, value] pair, got "
                             f"{list(row)}")
    ps = [r[0] for r in table]
    vs = [r[1] for r in table]
    if ps[0] != 0 or ps[-1] != 1:
        raise FieldError("quantiles", f"p must run from 0 to 1, got {ps[0]:g} to {ps[-1]:g}")
    if any(b <= a for a, b in pairwise(ps)):
        raise FieldError("quantiles", "p must increase from one pair to the next")
    if any(b < a for a, b in pairwise(vs)):
        raise FieldError("quantiles", "values must not decrease as p increases")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AgentDistributions(Validated):
    """Distributions of a coding agent (``distributions:`` of ``coding_agent`` and
    ``coding_swarm``). Each one given replaces the log-normal or fixed default of the
    matching number; ``ctxplat fit`` writes them from traces. ``session_requests``: the
    session ends after that many requests (of its main agent) instead of after its human
    turns. ``rewrite_keep_fraction``: where a context rewrite (see ``rewrite_probability``)
    cuts the context; everything after the cut gets new ids (the size stays)."""

    output_tokens: Dist | None = None
    initial_context_tokens: Dist | None = None
    user_tokens: Dist | None = None
    tool_result_tokens: Dist | None = None
    tool_time_s: Dist | None = None
    think_time_s: Dist | None = None
    tool_steps: Dist | None = None
    human_turns: Dist | None = None
    session_requests: Dist | None = None
    rewrite_keep_fraction: Dist | None = None
    compact_at_tokens: Dist | None = None
    summary_tokens: Dist | None = None
    subagents: Dist | None = None
    subagent_task_tokens: Dist | None = None
    subagent_tool_steps: Dist | None = None
    subagent_result_tokens: Dist | None = None
