"""Fit a workload definition to traces: what ``ctxplat fit`` writes.

kv-cache-tester sessions (Claude Code) give a ``coding_agent`` (or ``coding_swarm``)
definition; Mooncake-style JSONL gives a ``chat`` definition. The definition holds
numbers and distributions only, never prompt text.

How a kv-cache-tester session is read (main agent, in order; see
``docs/reference/workloads.md``):

* the first request starts a human turn; its input minus the file's ``system_tokens`` and
  ``tool_tokens`` is the initial context;
* a later request whose ``input_types`` has ``text`` and no ``tool_result`` starts a human
  turn: its wait (its ``t`` less the previous request's ``t`` and ``api_time``) is a
  think time, its growth (input minus the previous input
  and output) the user's message; any other request is a tool step: its wait is the
  tool time, the growth the tool result;
* an input below 0.6 of the previous one (which was above 20k tokens) is a compaction:
  the previous input is where it happened, the new input minus the shared prefix the
  summary size;
* subagent entries that start within a second of each other are one spawn (fan-out =
  their number); the parent's next growth, divided among them, is their result size.

Each distribution is a fitted log-normal, a mixture of two log-normals or an empirical
quantile table, chosen by the Kolmogorov-Smirnov distance to the sample
(:func:`choose`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..errors import ConfigError

__all__ = ["AgentSamples", "ChoiceInfo", "choose", "fit_agent", "fit_chat", "ks_distance",
           "read_agent_samples"]

QUANTILE_PS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5,
               0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.965, 0.975, 0.985,
               0.99, 0.995, 0.998, 0.999, 1.0)
PARAMETRIC_SLACK = 0.02  # a log-normal is kept when its KS is within this of the table's
COMPACT_RATIO = 0.6
COMPACT_MIN_TOKENS = 20_000
SPAWN_WINDOW_S = 1.0
REWRITE_MIN_BLOCKS = 2


@dataclasses.dataclass
class AgentSamples:
    """Samples of every quantity a coding agent draws, read from sessions."""

    system_tokens: list[float] = dataclasses.field(default_factory=list)
    tool_tokens: list[float] = dataclasses.field(default_factory=list)
    initial_context_tokens: list[float] = dataclasses.field(default_factory=list)
    output_tokens: list[float] = dataclasses.field(default_factory=list)
    user_tokens: list[float] = dataclasses.field(default_factory=list)
    tool_result_tokens: list[float] = dataclasses.field(default_factory=list)
    tool_time_s: list[float] = dataclasses.field(default_factory=list)
    think_time_s: list[float] = dataclasses.field(default_factory=list)
    tool_steps: list[float] = dataclasses.field(default_factory=list)
    human_turns: list[float] = dataclasses.field(default_factory=list)
    session_requests: list[float] = dataclasses.field(default_factory=list)
    rewrite_keep_fraction: list[float] = dataclasses.field(default_factory=list)
    compact_at_tokens: list[float] = dataclasses.field(default_factory=list)
    summary_tokens: list[float] = dataclasses.field(default_factory=list)
    subagents: list[float] = dataclasses.field(default_factory=list)
    subagent_task_tokens: list[float] = dataclasses.field(default_factory=list)
    subagent_tool_steps: list[float] = dataclasses.field(default_factory=list)
    subagent_result_tokens: list[float] = dataclasses.field(default_factory=list)
    subagent_lifetime_s: list[float] = dataclasses.field(default_factory=list)
    sessions: int = 0
    rewrites: int = 0
    tool_calls: int = 0  # tool steps and spawns: the chances to spawn

    @property
    def spawn_probability(self) -> float:
        return len(self.subagents) / self.tool_calls if self.tool_calls else 0.0


def _files(paths: Iterable[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.glob("*.json") if q.is_file()))
        elif p.is_file():
            out.append(p)
        else:
            raise ConfigError(f"file not found: {p}")
    return out


def read_agent_samples(paths: Iterable[str | Path]) -> AgentSamples:
    """Samples from kv-cache-tester session files and folders (see the module
    docstring). Unreadable files are refused naming the file."""
    s = AgentSamples()
    for f in _files(paths):
        try:
            data = orjson.loads(f.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ConfigError(f"{f}: not a kv-cache-tester session: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("requests"), list):
            raise ConfigError(f"{f}: not a kv-cache-tester session (a JSON object "
                              "with a 'requests' list)")
        _read_session(data, s)
    if not s.sessions:
        raise ConfigError("no kv-cache-tester sessions with requests found")
    return s


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0.0


def _read_session(data: dict[str, Any], s: AgentSamples) -> None:
    shared = _num(data.get("system_tokens")) + _num(data.get("tool_tokens"))
    entries = [e for e in data["requests"] if isinstance(e, dict)]
    main = [e for e in entries if e.get("type") != "subagent"]
    if not main:
        return
    s.sessions += 1
    s.system_tokens.append(_num(data.get("system_tokens")))
    s.tool_tokens.append(_num(data.get("tool_tokens")))
    s.initial_context_tokens.append(max(0.0, _num(main[0].get("in")) - shared))
    prev: dict[str, Any] | None = None
    steps, turns = 0, 1
    spawned: list[dict[str, Any]] = []
    for e in entries:
        if e.get("type") == "subagent":
            spawned.append(e)
            continue
        s.output_tokens.append(_num(e.get("out")))
        if prev is not None:
            steps, turns = _step(s, prev, e, shared, spawned, steps, turns)
        spawned = []
        prev = e
    s.tool_steps.append(steps)
    s.human_turns.append(turns)
    s.session_requests.append(len(main))


def _step(s: AgentSamples, prev: dict[str, Any], e: dict[str, Any], shared: float,
          spawned: list[dict[str, Any]], steps: int, turns: int) -> tuple[int, int]:
    """Read request ``e`` after ``prev``; return the turn's steps and the turn count."""
    p_in, e_in = _num(prev.get("in")), _num(e.get("in"))
    growth = max(0.0, e_in - p_in - _num(prev.get("out")))
    types = e.get("input_types") or ()
    human = "text" in types and "tool_result" not in types
    # the wait that shapes the cache's timeline: start to start, less the previous
    # request's own time (a trace's think_time is not always that)
    think = max(0.0, _num(e.get("t")) - _num(prev.get("t")) - _num(prev.get("api_time")))
    if p_in > COMPACT_MIN_TOKENS and e_in < COMPACT_RATIO * p_in:
        s.compact_at_tokens.append(p_in)
        s.summary_tokens.append(max(0.0, e_in - shared))
    else:
        _rewrite(s, prev, e)
    if spawned:
        _spawns(s, spawned, growth)
    if human:
        s.user_tokens.append(growth)
    elif not spawned:
        s.tool_result_tokens.append(growth)
    if human:
        s.think_time_s.append(think)
        s.tool_steps.append(steps)
        return 0, turns + 1
    s.tool_time_s.append(think)
    s.tool_calls += 1
    return steps + 1, turns


def _rewrite(s: AgentSamples, prev: dict[str, Any], e: dict[str, Any]) -> None:
    """A step that keeps less of the previous context than all but its last blocks."""
    a, b = prev.get("hash_ids") or [], e.get("hash_ids") or []
    common = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        common += 1
    if len(a) - common > REWRITE_MIN_BLOCKS:
        s.rewrites += 1
        s.rewrite_keep_fraction.append(common / len(a))


def _spawns(s: AgentSamples, subs: list[dict[str, Any]], growth: float) -> None:
    starts = []
    for e in subs:
        reqs = [r for r in e.get("requests") or () if isinstance(r, dict)]
        dur = _num(e.get("duration_ms")) / 1000.0
        starts.append(_num(e.get("t")) - dur)
        s.subagent_lifetime_s.append(dur)
        if reqs:
            own = _num(e.get("system_tokens")) + _num(e.get("tool_tokens"))
            s.subagent_task_tokens.append(max(0.0, _num(reqs[0].get("in")) - own))
            s.subagent_tool_steps.append(len(reqs) - 1)
    starts.sort()
    group = 1
    for a, b in pairwise(starts):
        if b - a <= SPAWN_WINDOW_S:
            group += 1
        else:
            s.subagents.append(group)
            group = 1
    s.subagents.append(group)
    s.subagent_result_tokens.extend([growth / len(subs)] * len(subs))


# -- choosing a distribution --------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ChoiceInfo:
    """How a distribution was chosen: the sample size and both KS distances."""

    n: int
    chosen: str
    ks_quantiles: float
    ks_lognormal: float | None
    ks_mixture: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _round(v: float) -> float:
    if v == 0 or not math.isfinite(v):
        return 0.0
    digits = max(0, 2 - math.floor(math.log10(abs(v))))
    r = round(v, digits)
    return float(int(r)) if r == int(r) and abs(r) >= 1 else r


def ks_distance(a: Sequence[float] | np.ndarray[Any, Any],
                b: Sequence[float] | np.ndarray[Any, Any]) -> float:
    """Two-sample Kolmogorov-Smirnov distance (0: same distribution, 1: disjoint); NaN
    when either sample is empty. Only the statistic is used, so the p-value is left to
    the asymptotic method (the exact one costs seconds on large samples)."""
    from scipy.stats import ks_2samp  # (imported on use: the CLI starts without scipy)

    if not len(a) or not len(b):
        return math.nan
    return float(ks_2samp(np.asarray(a, np.float64), np.asarray(b, np.float64),
                          method="asymp").statistic)


def _draws(d: dict[str, Any], n: int, integer: bool) -> np.ndarray[Any, Any]:
    """``n`` draws from definition data ``d`` as the generator makes them."""
    rng = np.random.default_rng(12345)
    if "quantiles" in d:
        ps, vs = zip(*d["quantiles"], strict=True)
        out = np.interp(rng.random(n), ps, vs)
    else:
        parts = d["mixture"] if "mixture" in d else [{"weight": 1, "lognormal":
                                                      d["lognormal"]}]
        w = np.array([m["weight"] for m in parts], np.float64)
        pick = rng.choice(len(parts), size=n, p=w / w.sum())
        mu = np.log([m["lognormal"]["median"] for m in parts])[pick]
        sd = np.array([m["lognormal"]["sigma"] for m in parts])[pick]
        out = np.clip(np.exp(rng.normal(mu, sd)), d["min"], d["max"])
    res: np.ndarray[Any, Any] = np.round(out) if integer else out
    return res


def choose(values: Sequence[float], *, integer: bool = False
           ) -> tuple[dict[str, Any], ChoiceInfo] | None:
    """The distribution (as definition data) that fits ``values``, and how it was
    chosen: a log-normal when its KS distance to the sample (measured on draws, as the
    generator makes them) is within ``PARAMETRIC_SLACK`` of the quantile table's, else a
    mixture of two log-normals on the same terms, else the table. None for no values."""
    x = np.sort(np.asarray(values, np.float64))
    if not len(x):
        return None
    if x[0] == x[-1]:
        return {"constant": _round(float(x[0]))}, ChoiceInfo(len(x), "constant", 0.0, None)
    n = max(2000, len(x))
    qs = np.quantile(x, QUANTILE_PS)
    vals = np.maximum.accumulate(np.array([_round(float(v)) for v in qs]))
    table: dict[str, Any] = {"quantiles": [[p, float(v)] for p, v in
                                           zip(QUANTILE_PS, vals, strict=True)]}
    ks_table = ks_distance(x, _draws(table, n, integer))
    ks_ln = ks_mix = None
    logs = np.log(x) if x[0] > 0 and len(x) >= 20 else np.zeros(0)
    if len(logs) and logs.std() > 0:
        bounds = {"min": _round(float(x[0])), "max": _round(float(x[-1]))}
        ln = {"lognormal": _lognormal(float(logs.mean()), float(logs.std())), **bounds}
        ks_ln = ks_distance(x, _draws(ln, n, integer))
        if ks_ln <= ks_table + PARAMETRIC_SLACK:
            return ln, ChoiceInfo(len(x), "lognormal", ks_table, ks_ln)
        mix = {"mixture": _mixture(logs), **bounds}
        ks_mix = ks_distance(x, _draws(mix, n, integer))
        if ks_mix <= ks_table + PARAMETRIC_SLACK:
            return mix, ChoiceInfo(len(x), "mixture", ks_table, ks_ln, ks_mix)
    return table, ChoiceInfo(len(x), "quantiles", ks_table, ks_ln, ks_mix)


def _lognormal(mu: float, sigma: float) -> dict[str, float]:
    return {"median": _round(math.exp(mu)), "sigma": round(max(sigma, 1e-3), 3)}


def _mixture(logs: np.ndarray[Any, Any], rounds: int = 60) -> list[dict[str, Any]]:
    """Two log-normal components fitted to ``logs`` (the sample's logarithms) by EM."""
    mu = np.quantile(logs, [0.25, 0.75])
    sd = np.full(2, max(float(logs.std()) / 2, 1e-3))
    w = np.array([0.5, 0.5])
    for _ in range(rounds):
        dens = w * np.exp(-0.5 * ((logs[:, None] - mu) / sd) ** 2) / sd
        resp = dens / np.maximum(dens.sum(axis=1, keepdims=True), 1e-300)
        nk = np.maximum(resp.sum(axis=0), 1e-9)
        w = nk / len(logs)
        mu = (resp * logs[:, None]).sum(axis=0) / nk
        sd = np.sqrt(np.maximum((resp * (logs[:, None] - mu) ** 2).sum(axis=0) / nk, 1e-6))
    return [{"weight": round(float(wk), 4), "lognormal": _lognormal(float(m), float(s))}
            for wk, m, s in zip(w, mu, sd, strict=True) if round(float(wk), 4) > 0]


# -- definitions -----------------------------------------------------------------------
INTEGER_FIELDS = ("tool_steps", "human_turns", "session_requests", "subagents",
                  "subagent_tool_steps")
SWARM_FIELDS = ("subagents", "subagent_task_tokens", "subagent_tool_steps",
                "subagent_result_tokens")


def fit_agent(s: AgentSamples, kind: str | None = None
              ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A ``coding_agent`` / ``coding_swarm`` definition (``kind`` None: a swarm where
    the sessions have subagents) and, per distribution, how it was chosen."""
    kind = kind or ("coding_swarm" if s.subagents else "coding_agent")
    if kind not in ("coding_agent", "coding_swarm"):
        raise ConfigError(f"--kind {kind!r} does not fit agent traces; valid: "
                          "coding_agent, coding_swarm")
    dists: dict[str, Any] = {}
    info: dict[str, dict[str, Any]] = {}
    for f in dataclasses.fields(AgentSamples):
        name = f.name
        if not isinstance(getattr(s, name), list) or name in (
                "system_tokens", "tool_tokens", "subagent_lifetime_s", "human_turns"):
            continue
        if name in SWARM_FIELDS and kind != "coding_swarm":
            continue
        got = choose(getattr(s, name), integer=name in INTEGER_FIELDS)
        if got is not None:
            dists[name], ci = got
            info[name] = ci.to_dict()
    median = _median_int
    d: dict[str, Any] = {
        "kind": kind,
        "system_prompt_tokens": median(s.system_tokens),
        "tool_tokens": median(s.tool_tokens),
        "output_tokens": max(1, median(s.output_tokens)),
        "compaction_request": False,
        "rewrite_probability": round(s.rewrites / max(1, s.tool_calls + len(s.user_tokens)),
                                     5),
    }
    if s.compact_at_tokens:
        d["context_limit_tokens"] = median(s.compact_at_tokens)
        d["summary_tokens"] = median(s.summary_tokens)
    if kind == "coding_swarm":
        d["spawn_probability"] = round(s.spawn_probability, 4)
        d["subagents_max"] = int(max(s.subagents, default=1))
    d["distributions"] = dists
    return d, info


def _median_int(v: Sequence[float]) -> int:
    return int(np.median(v)) if len(v) else 0


def fit_chat(paths: Sequence[str | Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A ``chat`` definition from Mooncake-style JSONL (see :mod:`.fit_chat`)."""
    from .fit_chat import fit_chat_trace

    return fit_chat_trace(paths)


class _Flow(list):  # type: ignore[type-arg]
    """A list written on one line in the YAML."""


def definition_yaml(definition: dict[str, Any], command: str) -> str:
    """The definition as YAML, headed by a comment naming the command that made it."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(_Flow, lambda d, v: d.represent_sequence(
        "tag:yaml.org,2002:seq", v, flow_style=True))

    def flow(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: (_Flow(_Flow(p) for p in x) if k == "quantiles" else flow(x))
                    for k, x in v.items()}
        return v

    head = ("# Fitted by ctxplat fit: distributions only, no prompt text.\n"
            f"# Made with: {command}\n")
    body: str = yaml.dump(flow(definition), Dumper=Dumper, sort_keys=False, width=10_000)
    return head + body
