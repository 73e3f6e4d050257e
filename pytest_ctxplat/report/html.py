"""One self-contained HTML report of a results directory.

For every run JSON in the directory: TTFT and decode speed over time, the three hit rates
over time, the SLO verdict table (margins in percent, as in the terminal), a summary,
and a capacity run's or a sweep's figures; across runs: output tokens/s against users,
a line only through runs of one workload and server profile, one per sweep; for every
analysis JSON (``ctxplat analyze --json``, found in the directory or passed in): TTL
curves, the LRU curve and the TTL table. Plots are PNGs embedded as base64 and also
written to ``<report stem>_files/`` next to the HTML. The page has no scripts and no
external resources.

Plots need matplotlib (the ``plots`` extra). Without it the report is written all the
same, without plots, and says so at the top of the page (:func:`plots_note`).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from ..errors import ConfigError
from .result import read_document

__all__ = ["build_report", "check_output", "load_results", "plots_note", "read_analyses",
           "write_report"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:.25em .6em;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.pass{color:#176117;font-weight:600}.fail{color:#a11;font-weight:600}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}.muted{color:#777}
.note{background:#fff6d6;border:1px solid #e0c060;padding:.5em .8em}
"""


def plots_note() -> str | None:
    """Why a report written here has no plots, with the extra to install, or None when
    it has them (matplotlib importable)."""
    from . import plots

    reason = plots.missing()
    return None if reason is None else f"no plots in this report: {reason}"


def load_results(results_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run results and analysis documents found in ``results_dir`` (not recursive)."""
    runs: list[dict[str, Any]] = []
    analyses: list[dict[str, Any]] = []
    for p in sorted(results_dir.glob("*.json")):
        try:
            doc = orjson.loads(p.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        if not isinstance(doc, dict):
            continue
        if str(doc.get("schema", "")).startswith("ctxplat-analysis/"):
            doc.setdefault("_file", p.name)
            analyses.append(doc)
        elif "schema_version" in doc and "records" in doc:
            doc.setdefault("_file", p.name)
            runs.append(doc)
    return runs, analyses


def _e(v: Any) -> str:
    return html.escape(str(v))


def _num(v: Any, fmt: str = "{:.1f}") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return fmt.format(v) if isinstance(v, (int, float)) else _e(v)


def _pct(v: Any) -> str:
    return _num(v, "{:.1%}")


def _margin(v: Any) -> str:
    """A margin as the terminal shows it: signed percent (blank when infinite)."""
    if isinstance(v, (int, float)) and math.isinf(v):
        return ""
    return _num(v, "{:+.1%}")


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    h = "".join(f"<th>{_e(x)}</th>" for x in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>'


class _Images:
    """Embeds PNGs (and writes them to ``folder``); draws nothing when plots are
    unavailable (``missing`` says why)."""

    def __init__(self, folder: Path | None, missing: str | None) -> None:
        self.folder = folder
        self.missing = missing
        self.names: set[str] = set()

    def plot(self, name: str, draw: Callable[[Any], bytes], data: Any, alt: str) -> str:
        """The ``<img>`` of the PNG ``draw(data)`` returns, or "" without matplotlib."""
        return "" if self.missing else self.img(name, draw(data), alt)

    def img(self, name: str, png: bytes, alt: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:120] or "plot"
        stem, k = base, 2
        while base in self.names:
            base = f"{stem}_{k}"
            k += 1
        self.names.add(base)
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / f"{base}.png").write_bytes(png)
        data = base64.b64encode(png).decode("ascii")
        return (f'<img class="plot" alt="{_e(alt)}" data-file="{_e(base)}.png" '
                f'src="data:image/png;base64,{data}">')


def _interval(value: Any) -> str:
    """A check's ``[low, high]`` (``null``: no bound at this sample size)."""
    if not value:
        return ""
    low, high = value
    return _e(f"[{'-inf' if low is None else f'{low:.4g}'}, "
              f"{'inf' if high is None else f'{high:.4g}'}]")


def _verdict(run: dict[str, Any]) -> str:
    v = run.get("verdict")
    if not v:
        return '<p class="muted">no SLO on this run</p>'
    rows = []
    for c in v.get("checks", []):
        ok = c.get("passed")
        text = "inconclusive" if c.get("status") == "inconclusive" else \
            "pass" if ok else "FAIL"
        rows.append([_e(c.get("key")), _e(c.get("metric")), _e(c.get("direction")),
                     _num(c.get("target"), "{:g}"), _num(c.get("observed"), "{:.4g}"),
                     _margin(c.get("margin")), _interval(c.get("interval")),
                     f'<span class="{"pass" if ok else "fail"}">{text}</span>'])
    verdict = ('<span class="fail">SLO inconclusive (passed with a warning)</span>'
               if v.get("passed") and v.get("status") == "inconclusive"
               else '<span class="pass">SLO met</span>' if v.get("passed")
               else f'<span class="fail">incomplete: {_e(v["incomplete"])}</span>'
               if v.get("incomplete")
               else f'<span class="fail">invalid measurement: {_e(v["invalid"])}</span>'
               if v.get("invalid") else '<span class="fail">SLO breached</span>')
    return f"<p>{verdict}</p>" + _table(
        ["objective", "metric", "direction", "target", "observed", "margin", "interval",
         "result"], rows,
        "verdict")


def _summary(run: dict[str, Any]) -> str:
    m = run.get("metrics") or {}
    h = run.get("hit_rates") or {}
    t = run.get("target") or {}
    w = run.get("workload") or {}

    def p(key: str, q: str) -> Any:
        return (m.get(key) or {}).get(q)

    rows = [
        ["server", _e(f"{t.get('profile')} ({t.get('launcher')}) {t.get('model') or ''}")],
        ["workload", _e(f"{w.get('kind')} users={w.get('users')}")],
        ["requests / errors", f"{_num(m.get('requests'), '{:d}')} / "
                              f"{_num(m.get('errors'), '{:d}')}"],
        ["outcomes", _e(", ".join(f"{k} {n}" for k, n in (m.get("outcomes") or {}).items()
                                  if n) or "none")],
        ["TTFT p50 / p95 / p99 ms", " / ".join(_num(p("ttft_ms", q)) for q in
                                              ("p50", "p95", "p99"))],
        ["decode tok/s p10 / p50", f"{_num(p('decode_tps', 'p10'))} / "
                                   f"{_num(p('decode_tps', 'p50'))}"],
        ["output tok/s", _num(m.get("output_tokens_per_s"))],
        ["hit rate designed / request / server",
         " / ".join(_pct(h.get(k)) for k in ("designed", "request", "server"))],
    ]
    if run.get("incomplete"):
        rows.insert(0, ["run ended early", _e(run["incomplete"])])
    rows.extend(_timing_rows(run.get("timing")))
    return _table(["figure", "value"], rows, "summary")


def _timing_rows(t: dict[str, Any] | None) -> list[list[str]]:
    """The client-minus-server TTFT rows of the summary (report.timing)."""
    if not t:
        return []
    if "ttft_skew_ms" in t:
        skew = t["ttft_skew_ms"]
        valid = "valid" if t.get("valid") else f"INVALID: {t.get('reason')}"
        return [["TTFT client - model ms p50 / p95",
                 f"{_num(skew.get('p50'), '{:.2f}')} / {_num(skew.get('p95'), '{:.2f}')}"],
                ["measurement", _e(valid)]]
    return [["TTFT client - server ms (mean)", _num(t.get("ttft_skew_ms_mean"), "{:.2f}")]]


def _capacity(run: dict[str, Any]) -> str:
    """A capacity run's sustained users (or a sweep's largest passing point), its
    interval and trajectory; a sweep's points."""
    cap = run.get("capacity")
    points = run.get("sweep")
    if not cap and not points:
        return ""
    out = []
    if cap:
        iv = cap.get("interval") or {}
        sustained = cap.get("sustained_users", cap.get("sustained_rate_per_s"))
        what = "users" if "sustained_users" in cap else "sessions/s"
        out += ["<h3>Capacity at the SLO</h3>", _table(["figure", "value"], [
            [f"sustained {what}", _num(sustained, "{:g}")],
            ["highest passed / lowest failed",
             f"{_num(iv.get('highest_passed'), '{:g}')} / "
             f"{_num(iv.get('lowest_failed'), '{:g}')}"],
            ["stopped", _e(cap.get("stop_reason"))],
            ["output tok/s there", _num(cap.get("output_tokens_per_s"))],
            ["TTFT p95 ms there", _num(cap.get("ttft_p95_ms"))],
            ["goodput there", _pct(cap.get("goodput"))]], "capacity")]
        steps = [[_num(t.get("t"), "{:.0f}"), _num(t.get("active_users"), "{}"),
                  _num(t.get("ttft_p95_ms")), _num(t.get("output_tokens_per_s")),
                  _e(t.get("decision"))] for t in cap.get("trajectory") or []]
        if steps:
            out.append(_table(["t s", "active users", "TTFT p95 ms", "output tok/s",
                               "decision"], steps, "trajectory"))
    if points:
        var = "users" if "users" in points[0] else "rate_per_s"
        out.append("<h3>Sweep</h3>")
        out.append(_table([var, "output tok/s", "TTFT p95 ms", "decode tok/s p50",
                           "hit rate request", "verdict"], [
            [_num(p.get(var), "{:g}"), _num(p.get("output_tokens_per_s")),
             _num(p.get("ttft_p95_ms")), _num(p.get("decode_tps_p50")),
             _pct(p.get("hit_rate_request")),
             f'<span class="{"pass" if p.get("verdict") == "pass" else "fail"}">'
             f'{_e(p.get("verdict"))}</span>'] for p in points], "sweep"))
    return "\n".join(out)


def _knees(run: dict[str, Any], name: str, images: _Images) -> str:
    """A knee search's points, the knee of each tier and its plot."""
    from . import plots

    knees = run.get("knees")
    if not knees:
        return ""
    tiers = list(knees.get("tiers") or {})
    rows = [[_num(p.get("working_set_tokens"), "{:,}"), _pct(p.get("hit_rate")),
             *(_pct((p.get("tier_hit_rates") or {}).get(t)) for t in tiers),
             _num(p.get("ttft_p50_ms")), _num(p.get("ttft_p95_ms"))]
            for p in knees.get("points") or []]
    found = [[_e(t), _num(k.get("knee_tokens"), "{:,}"),
              _num(k.get("first_turned_tokens"), "{:,}"), _pct(k.get("plateau")),
              _e(k.get("note", ""))] for t, k in (knees.get("tiers") or {}).items()]
    ttft = knees.get("ttft") or {}
    found.append(["TTFT p95", _num(ttft.get("knee_tokens"), "{:,}"),
                  _num(ttft.get("first_turned_tokens"), "{:,}"),
                  _num(ttft.get("plateau"), "{:.1f} ms"), _e(ttft.get("note", ""))])
    return "\n".join([
        "<h3>Where each tier runs out</h3>",
        _table(["working set tokens", "hit rate", *(f"from {_e(t)}" for t in tiers),
                "TTFT p50 ms", "TTFT p95 ms"], rows, "knee-points"),
        _table(["tier", "knee tokens", "turned at tokens", "plateau", "note"], found,
               "knees"),
        images.plot(f"{name}_knees", plots.knee_curves, run,
                    "hit rate per tier and TTFT p95 against the working set")])


def _sessions(run: dict[str, Any]) -> str:
    """Session-level figures: TTFT of turns that hit and miss, hit rate by the gap
    before a turn, session completion time and subagent fan-out latency."""
    sec = run.get("sessions")
    if not sec:
        return ""

    def dist(group: str) -> list[str]:
        d = sec.get(group) or {}
        return [_num(d.get("count"), "{:.0f}"), _num(d.get("p50")), _num(d.get("p95"))]

    rows = [["TTFT of turns that hit (ms)", *dist("ttft_hit_ms")],
            ["TTFT of turns that miss (ms)", *dist("ttft_miss_ms")],
            ["session completion (s)", *dist("session_s")],
            ["subagent fan-out (ms)", *dist("fanout_ms")]]
    gaps = [[_e(name), _num(row.get("turns"), "{:d}"), _num(row.get("hit_turns"), "{:d}"),
             _pct(row.get("hit_rate"))]
            for name, row in (sec.get("hit_rate_gap") or {}).items()]
    return "\n".join(["<h3>Sessions</h3>",
                      _table(["figure", "count", "p50", "p95"], rows, "sessions"),
                      _table(["gap before the turn", "turns", "turns that hit", "hit rate"],
                             gaps, "gaps")])


def _tiers(run: dict[str, Any]) -> str:
    """Hits per KV tier (the result's ``tiers`` section) as a small table."""
    tiers = run.get("tiers")
    if not tiers or not tiers.get("tiers"):
        return ""
    rows = [[_e(name), _num(t.get("tokens"), "{:.0f}"), _pct(t.get("hit_rate")),
             _num(t.get("bytes_loaded"), "{:.3g}"), _num(t.get("load_s"), "{:.3g}")]
            for name, t in tiers["tiers"].items()]
    return (f"<h3>Hits per KV tier ({_e(tiers.get('engine'))})</h3>"
            + _table(["tier", "prompt tokens served", "hit rate", "bytes loaded",
                      "load s"], rows, "tiers"))


def _curves(runs: Sequence[dict[str, Any]]) -> str:
    """The series of the throughput chart as a table (what each line joins)."""
    from . import plots

    rows = [[_e(c["label"]), _e(c["kind"]),
             _e(", ".join(f"{u:g} users: {t:.0f}" for u, t in c["points"]))]
            for c in plots.throughput_curves(runs)]
    return _table(["series", "from", "users: output tok/s"], rows, "curves") if rows else ""


def _analysis_section(doc: dict[str, Any], images: _Images, idx: int) -> str:
    from . import plots

    name = str(doc.get("name") or f"analysis {idx}")
    gb = doc.get("model") is not None
    rows = []
    for ttl, s in (doc.get("ttl") or {}).items():
        row = [_e(ttl), _pct(s.get("block_hit_rate")), _pct(s.get("token_hit_rate")),
               _num(s.get("peak_working_set_tokens"), "{:,}"),
               _num(s.get("mean_working_set_tokens"), "{:,.0f}")]
        if gb:
            row += [_num(s.get("peak_working_set_gb")), _num(s.get("mean_working_set_gb"))]
        row.append(_num(s.get("misses_per_block"), "{:.2f}"))
        rows.append(row)
    head = ["TTL s", "block hit", "token hit", "peak WS tokens", "mean WS tokens"]
    if gb:
        head += ["peak GB", "mean GB"]
    head.append("misses/block")
    inf = doc.get("infinite") or {}
    out = [f"<h2>Cache analysis: {_e(name)}</h2>",
           f"<p>{_num(doc.get('requests'), '{:,}')} requests, "
           f"{_num(doc.get('distinct_blocks'), '{:,}')} distinct blocks; infinite-cache "
           f"block hit rate {_pct(inf.get('block_hit_rate'))}</p>",
           _table(head, rows, "ttl")]
    if doc.get("ttl_curve"):
        out.append(images.plot(f"{name}_ttl_curves", plots.ttl_curves, doc, "TTL curves"))
    if doc.get("lru"):
        out.append(images.plot(f"{name}_lru_curve", plots.lru_curve, doc, "LRU curve"))
    return "\n".join(out)


def _designed_ttl(designed: dict[str, Any] | str | None, name: str, images: _Images) -> str:
    from . import plots

    if designed is None:
        return ""
    if isinstance(designed, str):
        return f'<p class="muted">designed TTL curves not available: {_e(designed)}</p>'
    return images.plot(f"{name}_designed_ttl", plots.ttl_curves, designed,
                       "designed TTL curves of the workload")


def build_report(
    runs: Sequence[dict[str, Any]],
    analyses: Sequence[dict[str, Any]] = (),
    *,
    title: str = "ctxplat report",
    image_dir: Path | None = None,
    designed: Sequence[dict[str, Any] | str | None] = (),
) -> str:
    """The HTML text; PNGs are also written to ``image_dir`` when given. ``designed``
    holds, per run, the analysis of its workload as designed (TTL curves), or why there
    is none, or None (no section). Without matplotlib the page has no plots and a note
    at the top saying why and what to install (:func:`plots_note`)."""
    from . import plots

    note = plots_note()
    images = _Images(image_dir, note)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"<h1>{_e(title)}</h1>",
             f'<p class="muted">{len(runs)} run(s), {len(analyses)} analysis(es); '
             f"generated {now}</p>"]
    if note:
        parts.append(f'<p class="note" id="plots-note">{_e(note)}</p>')
    if runs:
        rows = []
        for r in runs:
            v = r.get("verdict")
            status = ("n/a" if not v else '<span class="pass">pass</span>' if v.get("passed")
                      else '<span class="fail">incomplete</span>' if v.get("incomplete")
                      else '<span class="fail">FAIL</span>')
            m = r.get("metrics") or {}
            rows.append([_e(r.get("name")), _e((r.get("target") or {}).get("profile")),
                         _num((r.get("workload") or {}).get("users"), "{}"),
                         _num(m.get("requests"), "{}"),
                         _num((m.get("ttft_ms") or {}).get("p95")),
                         _num(m.get("output_tokens_per_s")), status])
        parts += ["<h2>Runs</h2>", _table(["run", "profile", "users", "requests",
                                           "TTFT p95 ms", "output tok/s", "SLO"], rows,
                                          "runs")]
        parts.append("<h2>Throughput against users</h2>")
        parts.append(images.plot("throughput_vs_users", plots.throughput_vs_users, runs,
                                 "output tokens/s against users, per workload and "
                                 "server profile"))
        parts.append(_curves(runs))
    for i, r in enumerate(runs):
        name = str(r.get("name") or f"run {i}")
        parts.append(f'<h2 id="run-{i}">Run: {_e(name)}</h2>')
        parts.append(_summary(r))
        parts.append("<h3>SLO verdict</h3>")
        parts.append(_verdict(r))
        parts.append(_capacity(r))
        parts.append(_knees(r, name, images))
        parts.append(_sessions(r))
        parts.append(_tiers(r))
        parts.append(images.plot(f"{name}_latency", plots.latency_over_time, r,
                                 "TTFT and decode speed over time"))
        parts.append(images.plot(f"{name}_hit_rates", plots.hit_rates_over_time, r,
                                 "hit rates over time"))
        parts.append(_designed_ttl(designed[i] if i < len(designed) else None, name, images))
    for i, a in enumerate(analyses):
        parts.append(_analysis_section(a, images, i))
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n"
            "</body></html>\n")


def read_analyses(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Analysis documents (``ctxplat analyze --json``) read from ``paths``."""
    return [read_document(Path(a), "ttl", "an analysis JSON (from ctxplat analyze --json)")
            for a in paths]


def write_report(
    output: str | Path,
    runs: Sequence[dict[str, Any]],
    analyses: Sequence[dict[str, Any]] = (),
    *,
    title: str = "ctxplat report",
    designed: Sequence[dict[str, Any] | str | None] = (),
) -> Path:
    """Write the report to ``output`` (atomically) and its PNGs to
    ``<output stem>_files/``; see :func:`build_report`. The file's folder is created if
    its parent exists; other bad paths are a ConfigError (:func:`check_output`)."""
    out = check_output(output)
    try:
        out.parent.mkdir(exist_ok=True)
        text = build_report(runs, analyses, title=title,
                            image_dir=out.parent / f"{out.stem}_files", designed=designed)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out)
    except OSError as exc:
        raise ConfigError(f"{out}: cannot write the report: {exc.strerror or exc} "
                          f"({exc.filename or out})") from None
    return out


def check_output(output: str | Path) -> Path:
    """``output`` as a path if the report can be written there, else a ConfigError
    saying why: it must not be a directory, and its folder must exist or be creatable
    (only the file's own folder is created, inside an existing, writable directory)."""
    out = Path(output)
    folder = out.parent
    if out.is_dir():
        raise ConfigError(f"{out}: is a directory; give the HTML file to write, such as "
                          f"{out / 'report.html'}")
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{out}: {folder} is not a directory")
    writable = folder if folder.is_dir() else folder.parent
    if not writable.is_dir():
        raise ConfigError(f"{out}: the folder {folder} does not exist and {writable} is not "
                          "a directory to create it in (only the file's own folder is "
                          "created); create it first or choose another path")
    if not os.access(writable, os.W_OK | os.X_OK):
        raise ConfigError(f"{out}: cannot write in {writable}: permission denied")
    images = folder / f"{out.stem}_files"
    if images.exists() and not images.is_dir():
        raise ConfigError(f"{out}: {images} (the folder for its PNGs) is a file")
    return out
