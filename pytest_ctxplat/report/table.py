"""Terminal tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tabulate import tabulate

__all__ = ["summary_table"]


def _pct(v: Any) -> str:
    try:
        return f"{float(v):.1%}"
    except (TypeError, ValueError):
        return "n/a"


def _num(v: Any, fmt: str = ".0f") -> str:
    try:
        return format(float(v), fmt)
    except (TypeError, ValueError):
        return "n/a"


def summary_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """One line per SLO test: outcome, load, latency, decode speed, three hit rates."""
    out = []
    for r in rows:
        out.append([
            r.get("nodeid", ""),
            r.get("outcome", ""),
            r.get("server", ""),
            f"{r.get('requests', 0)}/{r.get('errors', 0)}",
            _num(r.get("ttft_p95_ms")),
            _num(r.get("decode_tps_p50"), ".1f"),
            _num(r.get("output_tokens_per_s")),
            f"{_pct(r.get('hit_rate_designed'))} / {_pct(r.get('hit_rate_request'))} / "
            f"{_pct(r.get('hit_rate_server'))}",
            {"True": "pass", "False": "FAIL"}.get(str(r.get("slo_passed")), "-"),
        ])
    return tabulate(out, headers=["test", "outcome", "server", "req/err", "TTFT p95 ms",
                                  "decode tok/s p50", "out tok/s",
                                  "hit designed / request / server", "SLO"])
