"""Helpers for the workload tests: small generated traces, a fake sink, a reference
designed hit rate computed straight from a trace's hash ids.

``python tests/workload_support.py`` regenerates the traces in ``fixtures/traces/``.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_TRACES = ROOT / "fixtures" / "traces"
SHARED_TRACES = ROOT.parent / "shared" / "traces"
# The public sample traces live in ../shared beside the checkout; tests skip without them.
needs_samples = pytest.mark.skipif(
    not (SHARED_TRACES / "weka").is_dir(),
    reason=f"public sample traces not found at {SHARED_TRACES}",
)
AGENT_TRACE = FIXTURE_TRACES / "agent-session-small.json"
MOONCAKE_TRACE = FIXTURE_TRACES / "mooncake-small.jsonl"


def make_agent_trace(seed: int = 7) -> dict[str, Any]:
    """A kv-cache-tester session: 12 main requests on a growing context, two parallel
    subagents after request 4 and one after request 8 (each starting from the same
    system prefix as the main agent), block size 64, local hash ids."""
    rng = random.Random(seed)
    bs = 64
    next_id = [1]

    def fresh(n: int) -> list[int]:
        ids = list(range(next_id[0], next_id[0] + n))
        next_id[0] += n
        return ids

    system = fresh(20)

    def request(ctx: list[int], t: float) -> dict[str, Any]:
        return {"t": round(t, 3), "type": "n", "model": "m", "in": len(ctx) * bs +
                rng.randint(1, bs - 1), "out": rng.randint(20, 400), "hash_ids": list(ctx),
                "api_time": round(rng.uniform(1, 4), 3),
                "think_time": round(rng.choice([rng.uniform(1, 8), rng.uniform(30, 400)]), 3)}

    def subagent(name: str, start: float, task_tokens: int) -> dict[str, Any]:
        ctx = list(system) + fresh(task_tokens // bs)
        reqs = []
        t = 0.0
        for _ in range(4):
            r = request(ctx, t)
            reqs.append(r)
            ctx += fresh(rng.randint(2, 30))
            t += r["api_time"] + r["think_time"]
        dur = reqs[-1]["t"] + reqs[-1]["api_time"]
        return {"type": "subagent", "agent_id": name, "subagent_type": "general",
                "t": round(start + dur, 3), "duration_ms": round(dur * 1000), "requests": reqs}

    ctx = list(system) + fresh(3000 // bs)
    entries: list[dict[str, Any]] = []
    t = 0.0
    for i in range(12):
        r = request(ctx, t)
        entries.append(r)
        ctx += fresh(rng.randint(2, 30))
        t += r["api_time"] + r["think_time"]
        if i in (4, 8):
            start = r["t"] + r["api_time"]
            subs = [subagent(f"sub{i}{k}", start, 1000 + 500 * k)
                    for k in range(2 if i == 4 else 1)]
            entries.extend(subs)
            t = max(t, *(s["t"] + 0.5 for s in subs))
    return {"id": "agent-session-small", "block_size": bs, "hash_id_scope": "local",
            "tool_tokens": 900, "system_tokens": 380, "models": ["m"], "requests": entries}


def make_mooncake_trace(seed: int = 11, n: int = 300) -> list[dict[str, Any]]:
    """Mooncake-format requests: 20 conversations whose prompts extend earlier ones,
    512-token blocks, the last block usually partial, one id space for the file."""
    rng = random.Random(seed)
    bs = 512
    convs: list[list[int]] = []
    next_id = 0
    rows = []
    t = 0
    for _ in range(n):
        if not convs or (len(convs) < 20 and rng.random() < 0.2):
            convs.append([])
        c = rng.randrange(len(convs))
        blocks = convs[c]
        full = list(blocks)
        grow = rng.randint(1, 6)
        new = list(range(next_id, next_id + grow))
        next_id += grow
        tail = rng.randint(1, bs)
        ids = full + new
        inp = (len(ids) - 1) * bs + tail
        rows.append({"timestamp": t, "input_length": inp, "output_length": rng.randint(1, 300),
                     "hash_ids": ids})
        convs[c] = ids[:-1] if tail < bs else ids  # a partial block is not reused as full
        t += rng.randint(0, 900)
    return rows


def write_fixtures() -> None:
    FIXTURE_TRACES.mkdir(parents=True, exist_ok=True)
    AGENT_TRACE.write_text(json.dumps(make_agent_trace(), indent=1) + "\n")
    MOONCAKE_TRACE.write_text("".join(json.dumps(r) + "\n" for r in make_mooncake_trace()))


def own_hit_rate(path: Path, first: int | None = None) -> float:
    """The trace's own designed hit rate, straight from its files (independent of the
    trace reader): per request, leading hash ids seen before, times the block size,
    capped at the last full block before the final token (vLLM recomputes it). A
    partial last block (Mooncake) never counts as a full block."""
    rows: list[tuple[float, int, int, list[int], bool, str]] = []  # t, order, in, ids
    bs = 64
    if path.is_dir() or path.suffix == ".json":
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        for f in files:
            data = json.loads(f.read_text())
            bs = data.get("block_size", 64)

            def walk(entries: list[dict[str, Any]], base: float, f: Path = f) -> None:
                for e in entries:
                    if e.get("type") == "subagent":
                        walk(e["requests"], base + e["t"] - e["duration_ms"] / 1000)
                        continue
                    rows.append((base + e["t"], len(rows), e["in"], e["hash_ids"], False,
                                 str(f)))

            walk(data["requests"], 0.0)
    else:
        bs = 512
        for line in path.read_text().splitlines():
            r = json.loads(line)
            ids = r["hash_ids"]
            partial = len(ids) * bs > r["input_length"]
            rows.append((r["timestamp"] / 1000, len(rows), r["input_length"], ids, partial, ""))
    rows.sort(key=lambda r: (r[0], r[1]))
    if first is not None:
        rows = rows[:first]
    seen: set[tuple[str, int]] = set()
    hit = total = 0
    for _, _, inp, ids, partial, scope in rows:
        keys = [(scope, b) for b in ids]
        full = keys[:-1] if partial else keys
        k = 0
        while k < len(full) and full[k] in seen:
            k += 1
        hit += min(k * bs, ((inp - 1) // bs) * bs)
        total += inp
        seen.update(full)
    return hit / total


class FakeSink:
    """An in-process sink: each request takes ``ttft_s + output_tokens * tpot_s`` model
    seconds (divided by ``scale`` in loop time) and reports no cached tokens."""

    def __init__(self, scale: float, ttft_s: float = 0.2, tpot_s: float = 0.01) -> None:
        self.scale = scale
        self.ttft_s = ttft_s
        self.tpot_s = tpot_s
        self.bodies: list[bytes] = []

    async def submit(self, request: Any, record: Any, now: Callable[[], float]) -> None:
        record.start_s = now()
        if len(self.bodies) < 50:
            self.bodies.append(request.body())
        await asyncio.sleep(self.ttft_s / self.scale)
        record.ttft_s = now() - record.start_s
        await asyncio.sleep(request.plan.output_tokens * self.tpot_s / self.scale)
        record.output_tokens = request.plan.output_tokens
        record.end_s = now()
        record.status = 200
        record.finish_reason = "length"
        record.outcome = "ok"


if __name__ == "__main__":
    write_fixtures()
