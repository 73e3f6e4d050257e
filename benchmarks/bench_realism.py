"""Realism of a fitted workload on a full trace set: source against synthetic.

    python benchmarks/bench_realism.py --traces DIR [--workload coding-agent] [--json OUT]

Reads the kv-cache-tester sessions in DIR (for the built-in fit: the public set,
github.com/callanjfox/kv-cache-tester ``traces/``), plays the workload offline with as
many sessions as DIR has (keys per session, as ``ctxplat fit`` reports), and prints the
side-by-side TTL table, the distributions and whether the target holds: block hit rate
within 2 points and re-fills per block within 15% at 60, 300 and 3600 s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import orjson

from pytest_ctxplat.analysis.realism import format_realism, realism_report
from pytest_ctxplat.analysis.sources import load_sources
from pytest_ctxplat.workload.loader import load_workload

HIT_POINTS = 0.02
REFILL_SHARE = 0.15


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", required=True, help="folder of kv-cache-tester sessions")
    ap.add_argument("--workload", default="coding-agent", help="definition to compare")
    ap.add_argument("--sessions", type=int, default=None, help="synthetic sessions")
    ap.add_argument("--json", default=None, help="write the report here")
    args = ap.parse_args()
    if not Path(args.traces).is_dir():
        print(f"no such folder: {args.traces}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    doc = realism_report(load_sources([args.traces]), load_workload(args.workload),
                         sessions=args.sessions)
    print(format_realism(doc))
    ok = True
    for key in ("60", "300", "3600"):
        s, y = doc["source"]["ttl"][key], doc["synthetic"]["ttl"][key]
        dh = y["block_hit_rate"] - s["block_hit_rate"]
        dr = y["misses_per_block"] / s["misses_per_block"] - 1
        hold = abs(dh) <= HIT_POINTS and abs(dr) <= REFILL_SHARE
        ok &= hold
        print(f"TTL {key:>4} s: hit rate {dh * 100:+.1f} points, re-fills {dr:+.1%}"
              f" -> {'within' if hold else 'OUTSIDE'} the target")
    print(f"target {'holds' if ok else 'does not hold'}; {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
