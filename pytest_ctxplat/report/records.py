"""What the driver records about each request.

One :class:`RequestRecord` per request sent. It is mutable while the request is in
flight (the streaming client fills it in) and is then only read. Times are seconds on
the run's clock (``loop.time()`` minus the run start), so the same record works in real
and virtual time.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RequestRecord"]


@dataclass(slots=True)
class RequestRecord:
    """Measurements of one request.

    ``designed_cached_tokens`` is what the workload plan says a perfect (infinite) cache
    would serve for this prompt, counted at the workload's block granularity in send order.
    ``cached_tokens`` is what the server reported in ``usage.prompt_tokens_details``;
    ``None`` when the server did not report it.
    """

    session_id: str
    user: int
    index: int
    prompt_tokens: int
    max_tokens: int
    designed_cached_tokens: int = 0
    start_s: float = 0.0
    ttft_s: float | None = None
    end_s: float | None = None
    output_tokens: int = 0
    cached_tokens: int | None = None
    usage_prompt_tokens: int | None = None
    chunk_gaps_s: array[float] = field(default_factory=lambda: array("d"))
    status: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.end_s is not None

    @property
    def e2e_s(self) -> float | None:
        if self.end_s is None:
            return None
        return self.end_s - self.start_s

    @property
    def decode_tps(self) -> float | None:
        """Output tokens per second of this request after its first token."""
        if self.ttft_s is None or self.end_s is None or self.output_tokens < 2:
            return None
        span = self.end_s - (self.start_s + self.ttft_s)
        if span <= 0:
            return None
        return (self.output_tokens - 1) / span

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "user": self.user,
            "index": self.index,
            "prompt_tokens": self.prompt_tokens,
            "max_tokens": self.max_tokens,
            "designed_cached_tokens": self.designed_cached_tokens,
            "start_s": self.start_s,
            "ttft_s": self.ttft_s,
            "end_s": self.end_s,
            "output_tokens": self.output_tokens,
            "cached_tokens": self.cached_tokens,
            "usage_prompt_tokens": self.usage_prompt_tokens,
            "status": self.status,
            "error": self.error,
        }
