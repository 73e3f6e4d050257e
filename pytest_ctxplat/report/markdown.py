"""A Markdown summary of SLO tests, for CI job pages (``$GITHUB_STEP_SUMMARY``).

:func:`markdown_summary` renders one table row per test: outcome, verdict, requests and
errors, TTFT p95, decode speed, output throughput, hit rate, the objectives that did not
pass (observed against target, with the confidence interval where the verdict has one)
and the changes against a baseline where the result carries a comparison.

A row is either a :class:`~pytest_ctxplat.report.result.RunResult` or the flat mapping of
a test's ``ctxplat.*`` JUnit properties without the prefix, plus ``nodeid`` and
``outcome`` (what the pytest plugin collects, also under xdist).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..slo import SLO_METRICS, Check
from .result import RunResult

__all__ = ["changes_line", "markdown_summary", "objective_fields", "result_row",
           "write_markdown"]

_PASSING = ("pass", "ok", "same", "unchanged", "within")
_MAX_CHANGES = 4


def objective_fields(check: Check) -> dict[str, Any]:
    """The recorded fields of one judged objective: ``target``, ``observed``,
    ``interval`` (``[low, high]``, when the check has one), ``verdict`` (the check's
    ``status``: ``pass``, ``fail`` or ``inconclusive``) and ``result`` (``pass`` /
    ``fail``: how it counted under ``on_inconclusive``). A value that is None is left out."""
    fields: dict[str, Any] = {
        "target": check.target,
        "observed": check.observed,
        "interval": _interval(check.interval),
        "verdict": check.status,
        "result": "pass" if check.passed else "fail",
    }
    return {k: v for k, v in fields.items() if v is not None}


def _interval(value: Any) -> str | None:
    """``(low, high)`` as ``[low, high]`` (4 significant digits); None when absent."""
    try:
        low, high = value
        return f"[{float(low):.4g}, {float(high):.4g}]"
    except (TypeError, ValueError):
        return None


def changes_line(comparison: Mapping[str, Any] | None) -> str | None:
    """The rows of a baseline comparison that did not pass, one phrase each
    (``ttft_p95_ms 410 → 520 (+26.8%, fail)``); ``within tolerance of BASELINE`` when
    all passed; None without a comparison."""
    if not comparison:
        return None
    name = _baseline_name(comparison.get("baseline"))
    changed = [r for r in comparison.get("rows") or () if isinstance(r, Mapping)
               and str(r.get("verdict", "")).lower() not in _PASSING]
    if not changed:
        return f"within tolerance of {name}"
    parts = []
    for r in changed[:_MAX_CHANGES]:
        before, now = r.get("baseline"), r.get("now")
        b, n = _number(before), _number(now)
        rel = f"{(n - b) / abs(b):+.1%}, " if b and n is not None else ""
        parts.append(f"{r.get('metric')} {_fmt(before)} → {_fmt(now)} "
                     f"({rel}{r.get('verdict')})")
    if len(changed) > _MAX_CHANGES:
        parts.append(f"+{len(changed) - _MAX_CHANGES} more")
    return f"vs {name}: " + "; ".join(parts)


def _baseline_name(value: Any) -> str:
    if isinstance(value, Mapping):
        value = value.get("name") or value.get("path")
    return Path(str(value)).name if value else "the baseline"


def result_row(result: RunResult, outcome: str = "") -> dict[str, Any]:
    """The row of one result (the keys of the plugin's JUnit properties)."""
    o, m, v = result.observed, result.metrics, result.verdict
    row: dict[str, Any] = {
        "nodeid": result.name, "outcome": outcome, "requests": m.get("requests"),
        "errors": m.get("errors"), "ttft_p95_ms": o.get("ttft_ms.p95"),
        "decode_tps_p50": o.get("decode_tps.p50"),
        "output_tokens_per_s": m.get("output_tokens_per_s"),
        "hit_rate_request": result.hit_rates.request,
        "hit_rate_designed": result.hit_rates.designed,
        "hit_rate_server": result.hit_rates.server,
        "verdict": None if v is None else v.status,
        "baseline_changes": changes_line(result.comparison),
    }
    for c in v.checks if v is not None else ():
        row.update({f"slo.{c.key}.{k}": x for k, x in objective_fields(c).items()})
    return row


def markdown_summary(rows: Iterable[Mapping[str, Any] | RunResult],
                     title: str = "ctxplat SLO summary") -> str:
    """A Markdown section: a heading, one line of counts, and the table of ``rows``."""
    table = [r if isinstance(r, Mapping) else result_row(r) for r in rows]
    counts: dict[str, int] = {}
    for r in table:
        key = str(r.get("verdict") or "no SLO")
        counts[key] = counts.get(key, 0) + 1
    head = ["test", "outcome", "verdict", "req/err", "TTFT p95 ms", "decode tok/s p50",
            "out tok/s", "hit rate", "objectives not passed", "baseline"]
    lines = [f"### {title}", "",
             f"{len(table)} tests: " + ", ".join(f"{n} {k}" for k, n in counts.items()), "",
             _line(head), "|" + "---|" * len(head)]
    for r in table:
        lines.append(_line([
            f"`{r.get('nodeid', '')}`", r.get("outcome") or "", _verdict(r.get("verdict")),
            f"{r.get('requests', 0)}/{r.get('errors', 0)}", _fmt(r.get("ttft_p95_ms"), ".0f"),
            _fmt(r.get("decode_tps_p50"), ".1f"), _fmt(r.get("output_tokens_per_s"), ".0f"),
            _hit(r), _objectives(r) or "-", r.get("baseline_changes") or "-"]))
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, text: str, *, append: bool = False) -> Path:
    """Write (or append, separated by a blank line) ``text`` to ``path``, creating its
    folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if append and path.exists() and path.stat().st_size:
        text = "\n" + text
    with path.open("a" if append else "w", encoding="utf-8") as f:
        f.write(text)
    return path


def _objectives(r: Mapping[str, Any]) -> str:
    """``key observed (target <= T, verdict, [low, high])`` for each objective whose
    verdict is not ``pass``."""
    out = []
    for key in _objective_keys(r):
        verdict = r.get(f"slo.{key}.verdict") or r.get(f"slo.{key}.result")
        if verdict == "pass":
            continue
        op = "≥" if SLO_METRICS.get(key.partition(".")[0], ("", "max", ""))[1] == "min" else "≤"
        interval = r.get(f"slo.{key}.interval")
        out.append(f"{key} {_fmt(r.get(f'slo.{key}.observed'))} (target {op} "
                   f"{_fmt(r.get(f'slo.{key}.target'))}, {verdict}"
                   + (f", {interval}" if interval else "") + ")")
    return "; ".join(out)


def _objective_keys(r: Mapping[str, Any]) -> list[str]:
    keys = [k[len("slo."):-len(".target")] for k in r
            if k.startswith("slo.") and k.endswith(".target")]
    return list(dict.fromkeys(keys))


def _hit(r: Mapping[str, Any]) -> str:
    """The request-side hit rate, else the server's (so labelled), else the designed."""
    for key, label in (("hit_rate_request", ""), ("hit_rate_server", " (server)"),
                       ("hit_rate_designed", " (designed)")):
        v = _number(r.get(key))
        if v is not None:
            return f"{v:.1%}{label}"
    return "n/a"


_VERDICTS = {"pass": "✅ pass", "fail": "❌ fail", "inconclusive": "⚠️ inconclusive",
             "incomplete": "⚠️ incomplete", "invalid": "❌ invalid measurement"}


def _verdict(value: Any) -> str:
    return "-" if value in (None, "") else _VERDICTS.get(str(value), str(value))


def _number(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _fmt(v: Any, spec: str = ".4g") -> str:
    f = _number(v)
    if f is None:
        return "n/a" if v is None else str(v)
    if spec == ".4g" and f == int(f) and abs(f) < 1e15:
        return str(int(f))
    return format(f, spec)


def _cell(value: Any) -> str:
    """A table cell: ``|`` escaped, line breaks as ``<br>``."""
    text = str(value).replace("|", "\\|")
    return "<br>".join(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))


def _line(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"
