"""One workload split into parts: several processes (``workers=N``) or hosts (shards of
a Kubernetes Indexed Job) each play a share of its users, and the parts' results merge
into one result and one verdict.

Part ``i`` of ``n`` plays the closed-loop users ``u`` with ``u % n == i`` (user indices,
ramps and session ids stay those of the whole run), takes its block ids from its own
range (:data:`~pytest_ctxplat.workload.spec.PART_ID_STRIDE`) and its own token salt, so
no part is served another part's blocks; ``max_requests`` is shared out evenly (the
worker processes on one machine draw from one pool instead:
:mod:`~pytest_ctxplat.driver.budget`). Parts start together at an agreed wall-clock
time (``start_at``). A prefix that a workload
shares between all users (a system prompt) is shared within each part: every part sends
its own copy, so a split run has ``n - 1`` more first misses than the whole run.

Each part's result carries, under ``parts``, what merging needs: its records' token
gaps, designed-cache variants, metric snapshots and start time. :func:`merge_parts`
rebuilds one result from the pooled records exactly as an unsharded run builds its own
(percentiles from the pooled values, never averaged), with the server's counters from
the first part's snapshot before and the last one after, and records each part's clock
offset (its start time against the earliest part's).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import os
import time
from array import array
from collections.abc import Mapping, Sequence
from typing import Any, cast

from ..config import build
from ..driver.controller import controller_config
from ..errors import ConfigError
from ..report.records import RequestRecord
from ..report.result import RunResult
from ..servers.scrape import MetricsSnapshot
from ..slo import SLOSpec
from ..workload.spec import WorkloadSpec
from .results import build_result

__all__ = ["ENV_COUNT", "ENV_INDEX", "ENV_START", "Part", "merge_parts", "parse_part",
           "parse_start_at", "part_from_env", "part_spec", "split_refusal", "wait_for_start"]

ENV_INDEX = "JOB_COMPLETION_INDEX"  # set by Kubernetes in each pod of an Indexed Job
ENV_COUNT = "CTXPLAT_SHARDS"  # the Job's completions: Kubernetes does not pass it on
ENV_START = "CTXPLAT_START_AT"  # the agreed start (epoch seconds or ISO 8601)
SALT_STRIDE = 1_000_003  # token salt of part i: the run's salt + i * SALT_STRIDE


@dataclasses.dataclass(frozen=True)
class Part:
    """Part ``index`` of ``count``; ``start_at``: the agreed start, wall-clock epoch
    seconds (None: start when ready)."""

    index: int
    count: int
    start_at: float | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.count, int) and self.count >= 1
                and isinstance(self.index, int) and 0 <= self.index < self.count):
            raise ConfigError(f"a part is I/N with 0 <= I < N, got {self.index}/{self.count}")

    @property
    def label(self) -> str:
        return f"shard {self.index} of {self.count}"

    def result_name(self, test: str) -> str:
        """The name of this part's result of ``test`` (and so of its file)."""
        return f"{test} [{self.label}]"

    def salt(self, salt: int) -> int:
        """This part's token salt, disjoint from every other part's."""
        return salt + self.index * SALT_STRIDE


def parse_part(text: str, where: str = "--ctxplat-shard") -> Part:
    """``"I/N"`` (e.g. ``"0/2"``) as a :class:`Part`; errors name ``where``."""
    index, slash, count = str(text).partition("/")
    try:
        if not slash:
            raise ValueError
        return Part(int(index), int(count))
    except (ValueError, ConfigError):
        raise ConfigError(f"{where}: expected I/N with 0 <= I < N (shard I of N, e.g. 0/2), "
                          f"got {text!r}") from None


def part_from_env(env: Mapping[str, str] | None = None) -> Part | None:
    """The part an Indexed Job's pod plays: ``JOB_COMPLETION_INDEX`` of
    ``CTXPLAT_SHARDS`` (None: not in such a pod). An index without the count is an
    error: Kubernetes does not pass the completions on, the manifest must."""
    env = os.environ if env is None else env
    index = env.get(ENV_INDEX)
    if index is None or index == "":
        return None
    count = env.get(ENV_COUNT)
    if not count:
        raise ConfigError(f"{ENV_INDEX}={index} is set but {ENV_COUNT} is not: set it to the "
                          "Job's completions (see docs/how-to/kubernetes.md)")
    return parse_part(f"{index}/{count}", f"{ENV_INDEX}/{ENV_COUNT}")


def parse_start_at(text: str | float, where: str = "--ctxplat-start-at") -> float:
    """An agreed start time as epoch seconds: a number (epoch seconds) or an ISO 8601
    time (``2026-11-30T21:00:00Z``; without a zone: UTC)."""
    try:
        epoch = float(text)
    except (TypeError, ValueError):
        pass
    else:
        return _not_far_ahead(epoch, text, where)
    try:
        when = _dt.datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{where}: expected epoch seconds or an ISO 8601 time such as "
                          f"2026-11-30T21:00:00Z, got {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return _not_far_ahead(when.timestamp(), text, where)


MAX_AHEAD_S = 86_400.0  # a start further ahead is a mistake (a placeholder, a typo)


def _not_far_ahead(start_at: float, text: object, where: str) -> float:
    ahead = start_at - time.time()
    if ahead > MAX_AHEAD_S:
        raise ConfigError(f"{where}: {text!r} is {ahead / 3600:.0f} hours ahead (more than a "
                          "day): set the agreed start to a time shortly after the shards "
                          "are scheduled")
    return start_at


def split_refusal(spec: WorkloadSpec, slo: SLOSpec | None, count: int) -> str | None:
    """Why ``spec`` cannot be split in ``count`` parts (None: it can)."""
    if type(spec).timed_requests is not WorkloadSpec.timed_requests:
        return (f"workload kind {spec.kind!r} can replay requests at fixed times, which "
                "are not split between parts")
    if spec.load.open_loop:
        return "open-loop arrivals are one process of arrivals, not split between parts"
    if controller_config(spec, slo) is not None:
        return "the SLO-governed controller (a capacity search) decides for all users at once"
    if slo is not None and (slo.repeat > 1 or slo.on_inconclusive == "rerun"):
        return "repeat and on_inconclusive='rerun' play again from one process"
    if spec.user_count() < count:
        return f"{spec.user_count()} users cannot be split into {count} parts"
    if spec.max_requests is not None and spec.max_requests < count:
        return f"max_requests={spec.max_requests} cannot be split into {count} parts"
    return None


def part_spec(spec: WorkloadSpec, part: Part) -> WorkloadSpec:
    """The spec a part plays: ``max_requests`` shared out evenly (users are chosen by
    the runner, see :class:`~pytest_ctxplat.driver.runner.RunOptions`)."""
    if spec.max_requests is None or part.count == 1:
        return spec
    base, extra = divmod(spec.max_requests, part.count)
    return dataclasses.replace(spec, max_requests=base + (1 if part.index < extra else 0))


async def wait_for_start(start_at: float | None) -> None:
    """Sleep until the wall clock reaches ``start_at`` (at once when it has)."""
    if start_at is None:
        return
    while (left := start_at - time.time()) > 0:
        await asyncio.sleep(min(left, 1.0) if left > 0.01 else 0)


def part_payload(*, part: Part, name: str, spec: WorkloadSpec, started_wall: float,
                 time_scale: float, records: Sequence[RequestRecord],
                 designed_variants: Mapping[str, Sequence[int]],
                 before: MetricsSnapshot | None, after: MetricsSnapshot | None,
                 peaks: Mapping[str, float], notes: Mapping[str, str]) -> dict[str, Any]:
    """What a part's result carries (under ``parts``) for :func:`merge_parts`."""
    return {"index": part.index, "count": part.count, "test": name,
            "start_at": part.start_at, "started_wall": started_wall,
            "start_lag_s": None if part.start_at is None else started_wall - part.start_at,
            "host": os.uname().nodename, "time_scale": time_scale,
            "workload": spec.describe(), "bound_s": spec.bound_s,
            "chunk_gaps": [list(r.chunk_gaps_s) for r in records],
            "designed_variants": {k: list(v) for k, v in designed_variants.items()},
            "before": None if before is None else dict(before.values),
            "after": None if after is None else dict(after.values),
            "peaks": dict(peaks), "notes": dict(notes)}


class _Described:
    """The merged run's workload as its parts described it (what build_result reads)."""

    def __init__(self, described: Mapping[str, Any], bound_s: float | None) -> None:
        self._described = dict(described)
        self.bound_s = bound_s

    def describe(self) -> dict[str, Any]:
        return dict(self._described)


_FIELDS = tuple(f.name for f in dataclasses.fields(RequestRecord) if f.name != "chunk_gaps_s")
_SHIFTED = ("start_s", "scheduled_s", "end_s", "spawned_s")


def _records(doc: Mapping[str, Any], shift_s: float) -> list[RequestRecord]:
    """A part's records, with their token gaps, on the merged run's clock."""
    gaps = doc["parts"]["chunk_gaps"]
    out = []
    for raw, gap in zip(doc["records"] or (), gaps, strict=True):
        rec = RequestRecord(**{k: raw[k] for k in _FIELDS if k in raw})
        rec.chunk_gaps_s = array("d", gap)
        for key in _SHIFTED:
            value = getattr(rec, key)
            if value is not None:
                setattr(rec, key, value + shift_s)
        out.append(rec)
    return out


def check_parts(docs: Sequence[Mapping[str, Any]], where: str, *, partial: bool = False
                ) -> list[Mapping[str, Any]]:
    """The parts of one test, ordered by index: every index of ``0..N-1`` exactly once
    (``partial``: at most once), all of the same workload, seed and part count; errors
    name ``where``."""
    if not docs:
        raise ConfigError(f"{where}: no parts to merge")
    count = docs[0]["parts"]["count"]
    by_index: dict[int, Mapping[str, Any]] = {}
    for doc in docs:
        p = doc["parts"]
        if p["count"] != count:
            raise ConfigError(f"{where}: parts of {count} and of {p['count']} shards mixed")
        if p["index"] in by_index:
            raise ConfigError(f"{where}: shard {p['index']} of {count} found twice")
        if doc["seed"] != docs[0]["seed"] or p["workload"] != docs[0]["parts"]["workload"]:
            raise ConfigError(f"{where}: shard {p['index']} played another workload or seed "
                              "than shard 0 (results of different runs mixed?)")
        by_index[p["index"]] = doc
    missing = [i for i in range(count) if i not in by_index]
    if missing and not partial:
        raise ConfigError(f"{where}: shard(s) {', '.join(map(str, missing))} of {count} "
                          "missing: every shard's result is needed for one verdict")
    return [by_index[i] for i in sorted(by_index)]


def merge_parts(docs: Sequence[Mapping[str, Any]], where: str = "merge", *,
                partial: bool = False) -> RunResult:
    """One result (the schema of an unsharded run) from the result documents of every
    part of one run (:meth:`RunResult.to_dict` of each part), judged on the pooled
    records. Raises :class:`~pytest_ctxplat.errors.ConfigError` when a part is missing,
    repeated or of another run. ``partial``: some of the parts only (a shard played by
    several workers), pooled but not judged."""
    parts = check_parts(docs, where, partial=partial)
    first = parts[0]["parts"]
    t0 = min(d["parts"]["started_wall"] for d in parts)
    records: list[RequestRecord] = []
    variants: dict[str, list[int]] = {}
    order: list[tuple[float, int]] = []
    for doc in parts:
        p = doc["parts"]
        part_records = _records(doc, (p["started_wall"] - t0) * p["time_scale"])
        for label, values in p["designed_variants"].items():
            variants.setdefault(label, []).extend(values)
        order.extend((r.start_s, len(records) + i) for i, r in enumerate(part_records))
        records.extend(part_records)
    ranks = [i for _, i in sorted(order)]  # send order, as one runner records it
    records = [records[i] for i in ranks]
    variants = {k: [v[i] for i in ranks] for k, v in variants.items()}
    last = max(parts, key=lambda d: d["parts"]["started_wall"] + d["wall_s"])
    before, after = parts[0]["parts"]["before"], last["parts"]["after"]
    peaks: dict[str, float] = {}
    for doc in parts:
        for k, v in doc["parts"]["peaks"].items():
            peaks[k] = max(peaks.get(k, v), v)
    timeline = sorted(({**pt, "t": pt["t"] + (d["parts"]["started_wall"] - t0)
                        * d["parts"]["time_scale"]} for d in parts for pt in d["timeline"]),
                      key=lambda pt: pt["t"])
    slo = build(SLOSpec, parts[0]["slo"], f"{where}: slo") if parts[0]["slo"] else None
    target = dict(parts[0]["target"])
    target["alive_after_run"] = all(d["target"].get("alive_after_run", True) is not False
                                    for d in parts)
    incomplete = next((d["incomplete"] for d in parts if d["incomplete"]), None)
    result = build_result(
        name=first["test"], target=target,
        spec=cast(WorkloadSpec, _Described(first["workload"], first["bound_s"])),
        seed=parts[0]["seed"], started_at=min(d["started_at"] for d in parts),
        wall_s=max(d["parts"]["started_wall"] + d["wall_s"] for d in parts) - t0,
        records=records, before=None if before is None else MetricsSnapshot(before),
        after=None if after is None else MetricsSnapshot(after), peaks=peaks,
        timeline=timeline, slo_spec=slo,
        notes={**first["notes"], "run.parts": f"merged from {len(parts)} shards"},
        interrupted=any(d["interrupted"] for d in parts), incomplete=incomplete,
        server_block_size=int(target.get("server_block_size") or 1),
        designed_variants=variants or None)
    summary = _summary(parts, t0)
    if partial:
        return dataclasses.replace(result, verdict=None, parts=summary,
                                   name=f"{first['test']} [{len(parts)} of "
                                        f"{first['count']} parts]")
    return dataclasses.replace(result, parts=summary)


def _summary(parts: Sequence[Mapping[str, Any]], t0: float) -> dict[str, Any]:
    """The merged result's ``parts`` section: each shard's host, start, clock offset
    (its start against the earliest shard's, seconds) and lag behind the agreed start."""
    return {"count": parts[0]["parts"]["count"], "shards": [
        {"index": d["parts"]["index"], "host": d["parts"]["host"],
         "started_wall": d["parts"]["started_wall"],
         "clock_offset_s": d["parts"]["started_wall"] - t0,
         "start_lag_s": d["parts"]["start_lag_s"], "requests": len(d["records"] or ()),
         "incomplete": d["incomplete"]} for d in parts]}
