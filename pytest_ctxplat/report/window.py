"""The measurement window: which requests of a run are judged, and its periods.

A run's first requests meet a cold server (empty caches, compilation, connection set-up)
and its last ones a draining one; neither is the steady state an objective is about.

* Warm-up: requests *started* before ``warmup_s`` (default for a run bounded by time:
  10% of its duration, at most :data:`WARMUP_CAP_S`; 0 for a run bounded by requests or
  sessions), and the first ``warmup_requests`` requests (default 0).
* Cool-down: requests still in flight when the run's time bound was reached (default;
  they ran against a draining server; none for a run without a time bound), or, with an
  explicit ``cooldown_s``, requests started in the last ``cooldown_s`` before the bound
  (before the last request's start for a run without a time bound).

Cancelled requests are never judged. Hit rates stay whole-run figures: the server's
counters cannot be split by request.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from .records import RequestRecord

__all__ = ["WARMUP_CAP_S", "Window", "measurement_window", "periods"]

WARMUP_CAP_S = 60.0
WARMUP_SHARE = 0.1


@dataclasses.dataclass(frozen=True, kw_only=True)
class Window:
    """What a run's window kept and why it left the rest out."""

    start_s: float
    end_s: float | None
    warmup_s: float
    warmup_requests: int
    cooldown: str
    requests: int
    judged: int
    excluded_warmup: int
    excluded_cooldown: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def measurement_window(
    records: Sequence[RequestRecord], *, bound_s: float | None, warmup_s: float | None,
    warmup_requests: int, cooldown_s: float | None,
) -> tuple[list[RequestRecord], Window]:
    """The records of ``records`` (one run) inside its measurement window, and what was
    excluded. ``None`` for ``warmup_s`` / ``cooldown_s`` means the documented default."""
    if warmup_s is None:
        warmup_s = 0.0 if bound_s is None else min(WARMUP_SHARE * bound_s, WARMUP_CAP_S)
    order = sorted(range(len(records)), key=lambda i: records[i].start_s)
    first = set(order[:warmup_requests])
    last_start = max((r.start_s for r in records), default=0.0)
    if cooldown_s is None:
        cut = math.inf
        how = ("requests in flight at the time bound" if bound_s is not None else "none")
    else:
        ref = bound_s if bound_s is not None else last_start
        cut = ref - cooldown_s if cooldown_s > 0 else math.inf
        how = f"requests started in the last {cooldown_s:g} s" if cooldown_s > 0 else "none"
    kept: list[RequestRecord] = []
    n_warm = n_cool = 0
    for i, r in enumerate(records):
        if r.outcome == "cancelled":
            continue
        if i in first or r.start_s < warmup_s:
            n_warm += 1
        elif r.start_s >= cut or (cooldown_s is None and bound_s is not None
                                  and (r.end_s is None or r.end_s > bound_s)):
            n_cool += 1
        else:
            kept.append(r)
    end = bound_s if bound_s is not None else None
    return kept, Window(start_s=warmup_s, end_s=end, warmup_s=warmup_s,
                        warmup_requests=warmup_requests, cooldown=how,
                        requests=len(records), judged=len(kept), excluded_warmup=n_warm,
                        excluded_cooldown=n_cool)


def periods(records: Sequence[RequestRecord], start_s: float, period_s: float
            ) -> list[tuple[float, list[RequestRecord]]]:
    """``records`` split by start time into consecutive ``period_s`` periods from
    ``start_s``: ``(period start, records)`` for each period that holds a request."""
    buckets: dict[int, list[RequestRecord]] = {}
    for r in records:
        k = max(0, int((r.start_s - start_s) // period_s))
        buckets.setdefault(k, []).append(r)
    return [(start_s + k * period_s, buckets[k]) for k in sorted(buckets)]
