"""A ``chat`` definition from Mooncake-style JSONL (no session ids in the trace).

Conversations are found by prefix: a request continues the conversation of the earlier
request whose whole block list is a prefix of its own (the longest such), else it
starts one. Then: ``turns`` is the median number of requests per conversation,
``think_time_s`` the median gap between a conversation's requests, ``user_tokens`` the
median growth of a turn less the previous answer, ``output_tokens`` the median output,
and ``system_prompt_tokens`` the longest prefix (in whole blocks) that at least a tenth
of the conversations start with.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..workload.traces import read_traces

__all__ = ["fit_chat_trace"]

SHARED_SHARE = 0.1


def med(v: Sequence[float] | np.ndarray[Any, Any], default: int) -> int:
    return int(np.median(v)) if len(v) else default


def fit_chat_trace(paths: Sequence[str | Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The definition and what it was fitted from (counts)."""
    tr = read_traces(paths, fmt="mooncake")
    if not len(tr):
        raise ConfigError("the Mooncake trace has no requests")
    ends: dict[tuple[int, ...], int] = {}  # a request's block list -> its conversation
    conv = np.empty(len(tr), np.int64)
    n_conv = 0
    for i in range(len(tr)):
        ids = tuple(int(x) for x in tr.blocks(i))
        c = -1
        for k in range(len(ids) - 1, 0, -1):
            c = ends.get(ids[:k], -1)
            if c >= 0:
                break
        if c < 0:
            c, n_conv = n_conv, n_conv + 1
        conv[i] = c
        ends[ids] = c
    turns, gaps, growth = [], [], []
    firsts = []
    for c in range(n_conv):
        rows = np.flatnonzero(conv == c)
        turns.append(len(rows))
        firsts.append(tuple(int(x) for x in tr.blocks(int(rows[0]))))
        gaps.extend(np.diff(tr.arrival_s[rows]).tolist())
        for a, b in pairwise(rows):
            growth.append(max(0, int(tr.input_tokens[b] - tr.input_tokens[a]
                                     - tr.output_tokens[a])))
    shared = 0
    for k in range(1, 64):
        top = Counter(f[:k] for f in firsts if len(f) > k).most_common(1)
        if not top or top[0][1] < SHARED_SHARE * n_conv:
            break
        shared = k
    definition = {
        "kind": "chat",
        "block_size": tr.block_size,
        "turns": max(1, med(turns, 1)),
        "think_time_s": float(np.median(gaps)) if gaps else 0.0,
        "system_prompt_tokens": shared * tr.block_size,
        "user_tokens": med(growth, 128),
        "output_tokens": max(1, med(tr.output_tokens, 64)),
    }
    return definition, {"conversations": n_conv, "requests": len(tr)}
