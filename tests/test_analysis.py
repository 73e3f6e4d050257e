"""Cache analysis: exact agreement with a brute-force reference on random traces and with
independent computations on real public traces; JSON shape, tiers, cost, CLI."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from analysis_support import close, lru_reference, random_trace, requests_of, ttl_reference
from workload_support import FIXTURE_TRACES, SHARED_TRACES, needs_samples

from pytest_ctxplat.analysis import analyze, load_price_tables, price_table, replay_cache
from pytest_ctxplat.catalog import model_for_sizing
from pytest_ctxplat.cli import main
from pytest_ctxplat.errors import ConfigError
from pytest_ctxplat.workload.traces import build_trace, read_trace

FIXTURES = FIXTURE_TRACES
SHARED = SHARED_TRACES


def _rates(st, i: int, bs: int) -> dict[str, float]:
    return {
        "block_hit_rate": st.ttl_hit_blocks[i] / st.block_refs if st.block_refs else 0.0,
        "token_hit_rate": st.ttl_hit_tokens[i] / st.token_refs if st.token_refs else 0.0,
        "peak_working_set_tokens": int(st.ttl_peak_blocks[i]) * bs,
        "mean_working_set_tokens": float(st.ttl_mean_blocks[i]) * bs,
        "misses_per_block": ((st.block_refs - st.ttl_hit_blocks[i]) / st.distinct_blocks
                             if st.distinct_blocks else 0.0),
    }


@pytest.mark.parametrize("chunk", range(4))
def test_engine_matches_brute_force_on_random_traces(chunk: int) -> None:
    ttls = [0.5, 1.0, 2.5, 7.5, 30.0, math.inf]
    caps = [1, 2, 3, 5, 8, 13, 21, 60, 500]
    for seed in range(chunk * 150, (chunk + 1) * 150):
        tr = random_trace(seed)
        reqs = requests_of(tr)
        st = replay_cache(tr, ttls, lru_capacities=caps)
        for i, ttl in enumerate(st.ttls):
            want = ttl_reference(reqs, float(ttl), tr.block_size)
            got = _rates(st, i, tr.block_size)
            for key, value in want.items():
                assert close(got[key], value), (seed, ttl, key, got[key], value)
        for j, cap in enumerate(st.lru_capacity_blocks):
            hb, ht = lru_reference(reqs, int(cap))
            assert (st.lru_hit_blocks[j], st.lru_hit_tokens[j]) == (hb, ht), (seed, cap)
        inf = ttl_reference(reqs, math.inf, tr.block_size)
        assert close(st.infinite_hit_blocks / max(1, st.block_refs), inf["block_hit_rate"])


def test_semantics_on_a_hand_made_trace() -> None:
    # blocks 1,2,3 at t=0; 1,2,4 at t=50 (hits 1,2); 1,9,2 at t=200: with TTL 100 block 1
    # (last used at 50) expired, so nothing hits; with TTL 150 it is live (<=), 9 misses.
    tr = build_trace("h", 4, [0.0, 50.0, 200.0, 200.0], [12, 12, 12, 10],
                     [[1, 2, 3], [1, 2, 4], [1, 9, 2], [1, 9, 2]],
                     last_block_partial=[False, False, False, True])
    st = replay_cache(tr, [100.0, 150.0], lru_capacities=[2, 3, 4, 100])
    # TTL 100: hits = 2 (request 2) + 3 (request 4: all cached at t=200, same time)
    assert st.ttl_hit_blocks.tolist() == [5, 6]  # TTL 150: request 3 hits 1 then 9 misses
    # token-weighted: the last request's last block covers 10 - 8 = 2 tokens
    assert st.token_refs == 12 * 3 + 10
    assert st.ttl_hit_tokens[0] == 8 + 10
    # LRU tail-first: with 3 blocks, after request 2 the cache is 1,2,4 -> request 3
    # hits 1 only (9 is new); request 4 hits everything just inserted
    assert st.lru_hit_blocks.tolist()[1] == 2 + 1 + 3
    # working set, TTL 100: at t=200, 1,2,9 live (just touched); 3, 4 expired
    assert st.ttl_peak_blocks[0] == 4  # at t=50: 1,2,3,4
    assert st.distinct_blocks == 5


@needs_samples
@pytest.mark.parametrize("ttl", [60.0, 300.0, 3600.0])
def test_weka_sessions_agree_with_a_plain_python_loop(ttl: float) -> None:
    tr = read_trace(SHARED / "weka")
    st = replay_cache(tr, [ttl], lru_capacities=[5_000, 20_000])
    # independent: walk requests with a dict of last-use times and a set of live blocks
    last: dict[int, float] = {}
    hits = refs = misses = 0
    peak = 0
    expiry: list[tuple[float, int]] = []
    for i in range(len(tr)):
        t = float(tr.arrival_s[i])
        ok = True
        for b in tr.blocks(i).tolist():
            ok = ok and b in last and t - last[b] <= ttl
            refs += 1
            hits += ok
            misses += not ok
        for b in tr.blocks(i).tolist():
            last[b] = t
        expiry.append((t, i))
        peak = max(peak, sum(1 for a in last.values() if t - a <= ttl))
    assert st.block_refs == refs == len(tr.block_ids)
    assert st.ttl_hit_blocks[0] == hits
    assert st.ttl_peak_blocks[0] == peak
    assert (st.block_refs - st.ttl_hit_blocks[0]) / st.distinct_blocks == misses / len(last)
    # LRU with an OrderedDict (most recent last); a request's head is refreshed last
    for j, cap in enumerate([5_000, 20_000]):
        cache: OrderedDict[int, None] = OrderedDict()
        lru_hits = 0
        for i in range(len(tr)):
            blocks = tr.blocks(i).tolist()
            ok = True
            for b in blocks:
                ok = ok and b in cache
                lru_hits += ok
            for b in reversed(blocks):
                cache[b] = None
                cache.move_to_end(b)
            while len(cache) > cap:
                cache.popitem(last=False)
        assert st.lru_hit_blocks[j] == lru_hits


@needs_samples
def test_mooncake_token_hit_rate_agrees_with_a_plain_python_loop() -> None:
    tr = read_trace(SHARED / "mooncake" / "conversation_trace.jsonl")
    st = replay_cache(tr, [60.0], lru_capacities=[10_000])
    lines = (SHARED / "mooncake" / "conversation_trace.jsonl").read_text().splitlines()
    last: dict[int, float] = {}
    hit_tok = tok = 0
    for line in lines:
        e = json.loads(line)
        t = e["timestamp"] / 1000
        ids = e["hash_ids"]
        ok = True
        for k, b in enumerate(ids):
            size = 512 if k < len(ids) - 1 else e["input_length"] - 512 * (len(ids) - 1)
            ok = ok and b in last and t - last[b] <= 60.0
            tok += size
            hit_tok += size if ok else 0
        for b in ids:
            last[b] = t
    assert st.token_refs == tok
    assert st.ttl_hit_tokens[0] == hit_tok
    assert st.distinct_blocks == len(last)


def test_analysis_json_has_the_documented_shape(tmp_path: Path) -> None:
    out = tmp_path / "a.json"
    rc = main(["analyze", str(FIXTURES / "kvcache"), "--ttl", "60,300,3600", "--json", str(out),
               "--plots", str(tmp_path / "plots")])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert isinstance(doc["requests"], int) and doc["requests"] == 31
    assert isinstance(doc["distinct_blocks"], int)
    assert set(doc["infinite"]) >= {"block_hit_rate", "token_hit_rate"}
    assert list(doc["ttl"]) == ["60", "300", "3600"]
    for row in doc["ttl"].values():
        assert isinstance(row["peak_working_set_tokens"], int)
        for key in ("block_hit_rate", "token_hit_rate", "mean_working_set_tokens",
                    "misses_per_block"):
            assert isinstance(row[key], float)
    rates = [doc["ttl"][k]["block_hit_rate"] for k in ("60", "300", "3600")]
    assert rates == sorted(rates) and rates[-1] <= doc["infinite"]["block_hit_rate"]
    assert 2 <= len(doc["lru"]) <= 10
    caps = [p["capacity_tokens"] for p in doc["lru"]]
    lru_rates = [p["block_hit_rate"] for p in doc["lru"]]
    assert caps == sorted(caps) and lru_rates == sorted(lru_rates)
    assert all(isinstance(c, int) for c in caps)
    assert lru_rates[-1] == pytest.approx(doc["infinite"]["block_hit_rate"])
    assert (tmp_path / "plots" / "ttl_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "plots" / "lru_curve.png").stat().st_size > 5000


def test_analyze_plots_without_matplotlib_say_so_first_and_still_write_json(
        tmp_path: Path) -> None:
    import subprocess
    import sys

    out, plots = tmp_path / "a.json", tmp_path / "plots"
    hide = ("import sys\n"
            "sys.modules['matplotlib'] = sys.modules['matplotlib.pyplot'] = None\n"
            "from pytest_ctxplat.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.run(
        [sys.executable, "-u", "-c", hide, "analyze", str(FIXTURES / "kvcache"), "--json",
         str(out), "--plots", str(plots)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout
    note = ("ctxplat analyze: --plots needs the plots extra: "
            "pip install 'pytest-ctxplat[plots]'; skipping the plots")
    assert note in proc.stdout
    # said at the start, before the analysis (unbuffered, one stream: the real order)
    assert proc.stdout.index(note) < proc.stdout.index("31 requests")
    assert json.loads(out.read_text())["requests"] == 31
    assert not plots.exists()


def test_model_for_sizing_gb_and_custom_shapes() -> None:
    p = model_for_sizing("llama-3.1-8b")
    assert p.kv_bytes_per_token == 128 * 1024
    assert model_for_sizing("32x8x128x2").kv_bytes_per_token == 128 * 1024
    assert model_for_sizing("80x8x128").kv_bytes_per_token == 320 * 1024
    with pytest.raises(ConfigError, match=r"valid: llama-3\.1-8b"):
        model_for_sizing("gpt-9")
    tr = read_trace(FIXTURES / "kvcache")
    a = analyze(tr, [300], model=p)
    row = a.ttl["300"]
    assert row["peak_working_set_gb"] == pytest.approx(
        row["peak_working_set_tokens"] * 131072 / 1e9)


def test_tier_sizing_scales_with_users_and_respects_the_target() -> None:
    tr = read_trace(FIXTURES / "kvcache")
    m = model_for_sizing("llama-3.1-8b")
    a10 = analyze(tr, model=m, users=10, target_hit_rate=0.5).tiers
    a20 = analyze(tr, model=m, users=20, target_hit_rate=0.5).tiers
    assert a10 is not None and a20 is not None and a10.reachable
    for tier in ("hbm", "dram", "nvme", "total"):
        assert a20.tokens[tier] == pytest.approx(2 * a10.tokens[tier])
        assert a10.tokens[tier] >= 0
    assert a10.gb is not None
    assert a10.gb["total"] == pytest.approx(a10.tokens["total"] * 131072 / 1e9)
    # the hierarchy reaches the target; HBM alone serves a smaller share
    assert a10.hit_rate_by_tier["hbm+dram+nvme"] >= 0.5
    assert a10.hit_rate_by_tier["hbm"] <= a10.hit_rate_by_tier["hbm+dram+nvme"]
    # a higher target never needs less memory
    hi = analyze(tr, model=m, users=10, target_hit_rate=0.8).tiers
    assert hi is not None and hi.tokens["total"] >= a10.tokens["total"]
    # more than an infinite cache can do: not reachable
    inf = analyze(tr, users=10).infinite["block_hit_rate"]
    never = analyze(tr, users=10, target_hit_rate=min(1.0, inf + 0.01)).tiers
    assert never is not None and not never.reachable


def test_cost_of_caching_policy_from_price_tables(tmp_path: Path) -> None:
    # two identical requests of 4 full blocks (bs 4) + 2 tail tokens, 10 s apart
    tr = build_trace("c", 4, [0.0, 10.0], [18, 18], [[1, 2, 3, 4], [1, 2, 3, 4]],
                     output_tokens=[5, 5])
    prices = tmp_path / "p.yaml"
    prices.write_text("tables:\n  mine:\n    input: 10\n    output: 20\n    cache_read: 1\n"
                      "    cache_write: {300: 12.5, 3600: 20}\n")
    table = price_table(None, prices)
    assert table.name == "mine"
    a = analyze(tr, [5, 60, 7200], prices=table)
    assert a.cost is not None
    c = a.cost["ttl"]
    base = (36 * 10 + 10 * 20) / 1e6
    # TTL 5: both requests miss -> 32 block tokens written at 12.5, tails at input
    assert c["5"]["cost_usd"] == pytest.approx((32 * 12.5 + 4 * 10 + 10 * 20) / 1e6)
    # TTL 60: the second request reads 16 tokens
    assert c["60"]["cost_usd"] == pytest.approx((16 * 12.5 + 16 * 1 + 4 * 10 + 200) / 1e6)
    assert c["60"]["baseline_usd"] == pytest.approx(base)
    assert c["60"]["saving_usd"] == pytest.approx(base - c["60"]["cost_usd"])
    assert c["7200"]["cost_usd"] is None  # longer than any priced TTL
    tables, default = load_price_tables()
    assert default in tables and tables["anthropic-sonnet"].write_price(60) == 3.75
    assert tables["anthropic-sonnet"].write_price(3600) == 6.0
    bad = tmp_path / "bad.yaml"
    bad.write_text("tables:\n  x:\n    input: 1\n    output: 1\n    cache_read: -1\n"
                   "    cache_write: {300: 1}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:5: tables.x.cache_read: must be >= 0, "
                                          r"got -1"):
        price_table(None, bad)
    bad.write_text("tables:\n  x:\n    input: 1\n    output: 1\n    cache_write: {300: 1}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:2: tables.x.cache_read: required key is "
                                          r"missing"):
        price_table(None, bad)
    with pytest.raises(ConfigError, match="unknown price table 'nope'"):
        price_table("nope")


def test_analyze_a_workload_spec(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "w.json"
    rc = main(["analyze", "chat", "--set", "users=3", "--duration", "120", "--json", str(out)])
    assert rc == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    from pytest_ctxplat.workload import load_workload
    from pytest_ctxplat.workload.plan import plan_workload

    plan = plan_workload(load_workload("chat", {"users": 3}), duration_s=120)
    assert doc["requests"] == len(plan)
    assert doc["sessions"] == 3
    assert 0 < doc["infinite"]["token_hit_rate"] < 1
    assert "tier sizing for 100 users" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--ttl", "60,abc"], "--ttl takes seconds"),
        (["--ttl", "0"], "must be > 0"),
        (["--model", "nope"], "unknown model 'nope'"),
        (["--target-hit-rate", "1.5"], "--target-hit-rate must be in (0, 1]"),
        (["--price-table", "nope"], "unknown price table"),
    ],
)
def test_analyze_usage_errors(argv: list[str], needle: str,
                              capsys: pytest.CaptureFixture[str]) -> None:
    try:
        rc = main(["analyze", str(FIXTURES / "kvcache"), *argv])
    except SystemExit as exc:
        rc = exc.code
    assert rc == 2
    assert needle in capsys.readouterr().err


def test_analyze_refuses_mixed_sources_and_unknown_workloads(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(FIXTURES / "kvcache"), "nope-workload"]) == 2
    assert "not a trace file or folder" in capsys.readouterr().err
    assert main(["analyze", "nope-workload"]) == 2
    assert "unknown workload 'nope-workload'" in capsys.readouterr().err


def test_engine_handles_empty_requests_and_single_instant() -> None:
    tr = build_trace("e", 4, [0.0, 0.0, 0.0], [0, 8, 8], [[], [1, 2], [1, 2]])
    st = replay_cache(tr, [10.0])
    assert st.block_refs == 4 and st.ttl_hit_blocks[0] == 2
    assert st.span_s == 0.0 and st.ttl_mean_blocks[0] == 2  # live set at the instant
    # capacity 1 keeps the head block (the tail is evicted first), so block 1 hits
    assert np.array_equal(st.lru_hit_blocks, np.array([1, 2]))  # capacities 1 and 2


def test_analyze_document_matches_brute_force() -> None:
    for seed in (3, 17, 41, 99, 123):
        tr = random_trace(seed)
        reqs = requests_of(tr)
        doc = analyze(tr, [1.0, 7.5, 30.0]).to_dict()
        for key, row in doc["ttl"].items():
            want = ttl_reference(reqs, float(key), tr.block_size)
            for k, v in want.items():
                assert close(row[k], v), (seed, key, k)
        inf = ttl_reference(reqs, math.inf, tr.block_size)
        assert close(doc["infinite"]["token_hit_rate"], inf["token_hit_rate"])
        refs = sum(len(q.blocks) for q in reqs)
        for p in doc["lru"]:
            hb, _ = lru_reference(reqs, p["capacity_tokens"] // tr.block_size)
            assert close(p["block_hit_rate"], hb / refs if refs else 0.0)
