"""Terminal tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tabulate import tabulate

__all__ = ["inconclusive_lines", "summary_table", "timing_lines"]


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


_SHORT = {"http_status": "http", "connect_error": "connect", "protocol_error": "protocol",
          "timeout": "timeout", "incomplete": "short", "throttled": "429/503",
          "cancelled": "cancelled"}
_VERDICT = {"pass": "pass", "fail": "FAIL", "incomplete": "INCOMPLETE",
            "inconclusive": "inconclusive", "invalid": "INVALID"}


def _errors(r: Mapping[str, Any]) -> str:
    """The error classes that occurred, e.g. ``3 timeout, 1 protocol``."""
    parts = [f"{r[f'outcome.{k}']} {short}" for k, short in _SHORT.items()
             if r.get(f"outcome.{k}")]
    return ", ".join(parts) or "-"


_BASELINE = {"pass": "ok", "regression": "REGRESSION", "missing": "missing"}


def summary_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """One line per SLO test: outcome, load, errors by class, latency, decode speed,
    three hit rates, verdict; and the baseline comparison's verdict when a test was
    compared with one."""
    compared = any(r.get("comparison") for r in rows)
    skewed = any(r.get("ttft_skew_p95_ms") is not None for r in rows)
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
            _VERDICT.get(str(r.get("verdict")), "-"),
        ])
        out[-1].insert(4, _errors(r))
        if skewed:  # client minus the server's model time (report.timing)
            out[-1].insert(6, f"{_num(r.get('ttft_skew_p50_ms'), '.1f')} / "
                              f"{_num(r.get('ttft_skew_p95_ms'), '.1f')}")
        if compared:
            out[-1].append(_BASELINE.get(str(r.get("comparison")), "-"))
    headers = ["test", "outcome", "server", "req/err", "errors by class", "TTFT p95 ms",
               "decode tok/s p50", "out tok/s", "hit designed / request / server", "SLO"]
    if skewed:
        headers.insert(6, "TTFT skew p50 / p95 ms")
    return tabulate(out, headers=[*headers, "baseline"] if compared else headers)


def timing_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per test whose timings were not a valid measurement, and why."""
    return [f"INVALID MEASUREMENT {r.get('nodeid', '')}: {r['timing_invalid']}"
            for r in rows if r.get("timing_invalid")]


def inconclusive_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """One warning line per SLO test whose verdict was inconclusive, naming the
    objectives its interval could not decide and what the policy made of it."""
    out = []
    for r in rows:
        if r.get("verdict") != "inconclusive":
            continue
        keys = [k[len("slo."):-len(".verdict")] for k, v in r.items()
                if k.startswith("slo.") and k.endswith(".verdict") and v == "inconclusive"]
        spans = [f"{k} {r.get(f'slo.{k}.interval', '[?]')} vs {r.get(f'slo.{k}.target')}"
                 for k in keys]
        how = "passed with this warning" if r.get("slo_passed") else "failed"
        out.append(f"WARNING {r.get('nodeid', '')}: SLO inconclusive ({how}, "
                   f"on_inconclusive={r.get('on_inconclusive')!r}): " + "; ".join(spans)
                   + " - run longer or with repeat=N for a clear verdict")
    return out
