"""The terminal table that compares server profiles, test by test."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from tabulate import tabulate

__all__ = ["profile_comparison"]


def _f(v: Any, fmt: str) -> str:
    try:
        return format(float(v), fmt)
    except (TypeError, ValueError):
        return "n/a"


def _base(nodeid: str, profile: str) -> str:
    """The test id without the profile's part of the parameter id."""
    m = re.match(r"^(.*?)\[(.*)\]$", nodeid)
    if not m:
        return nodeid
    rest = m.group(2)
    if profile and profile in rest:
        rest = rest.replace(profile, "", 1).strip("-").replace("--", "-")
    return f"{m.group(1)}[{rest}]" if rest else m.group(1)


def profile_comparison(rows: Sequence[Mapping[str, Any]]) -> str:
    """One line per (test, profile), grouped by test, with TTFT relative to the first
    profile of each test: latency, decode speed, the three hit rates and the external
    (second-tier) hit rate side by side."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        profile = str(r.get("profile") or "")
        groups.setdefault(_base(str(r.get("nodeid", "")), profile), []).append(r)
    out = []
    for test, members in groups.items():
        first = members[0].get("ttft_p95_ms")
        for i, r in enumerate(members):
            ttft = r.get("ttft_p95_ms")
            rel = "1.00x" if i == 0 else (
                f"{float(ttft) / float(first):.2f}x" if ttft and first else "n/a")
            out.append([
                test if i == 0 else "",
                r.get("profile", ""),
                f"{r.get('requests', 0)}/{r.get('errors', 0)}",
                _f(r.get("ttft_p50_ms"), ".0f"),
                _f(ttft, ".0f"),
                rel,
                _f(r.get("decode_tps_p50"), ".1f"),
                " / ".join(_f(r.get(k), ".1%") for k in
                           ("hit_rate_designed", "hit_rate_request", "hit_rate_server")),
                _f(r.get("hit_rate_external"), ".1%"),
                {"True": "pass", "False": "FAIL"}.get(str(r.get("slo_passed")), "-"),
            ])
    return tabulate(out, headers=["test", "profile", "req/err", "TTFT p50 ms",
                                  "TTFT p95 ms", "vs first", "decode tok/s p50",
                                  "hit designed / request / server", "external hit", "SLO"])
