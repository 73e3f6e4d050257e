"""Honest timing over HTTP: the simulator's model time per request, the client-minus-model
discrepancy, the "invalid measurement" verdict, vLLM's TTFT histogram, and an HTTP run
agreeing with a virtual-time run of the same workload and seed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import pytest

from pytest_ctxplat.api import run_workload, simulate
from pytest_ctxplat.driver.sse import interpret_payload
from pytest_ctxplat.orchestrator.results import measurement_timing
from pytest_ctxplat.report.records import RequestRecord
from pytest_ctxplat.report.timing import histogram_quantile, timing_section
from pytest_ctxplat.servers.scrape import parse_metrics
from pytest_ctxplat.sim.config import SimConfig
from pytest_ctxplat.sim.server import serve_in_thread
from pytest_ctxplat.slo import Check, SLOSpec, Verdict
from pytest_ctxplat.workload.chat import ChatSessions

pytest_plugins = ["pytester"]


def _record(ttft_ms: float, model_ttft_ms: float, e2e_ms: float = 100.0,
            model_e2e_ms: float = 100.0) -> RequestRecord:
    r = RequestRecord(session_id="s", user=0, index=0, prompt_tokens=10, max_tokens=4)
    r.start_s, r.ttft_s, r.end_s, r.outcome = 1.0, ttft_ms / 1000, 1.0 + e2e_ms / 1000, "ok"
    r.set_model_ms(model_ttft_ms, model_e2e_ms)
    return r


def test_discrepancy_beyond_both_bounds_is_an_invalid_measurement() -> None:
    # 8 ms over a 10 ms model TTFT: 80%, within 100% -> valid
    close = timing_section([_record(18.0, 10.0)] * 20)
    assert close is not None and close["valid"] and close["reason"] is None
    assert close["ttft_skew_ms"]["p50"] == pytest.approx(8.0)
    # 120 ms over 10 ms: beyond 100 ms and 100% -> invalid, and it says by how much
    far = timing_section([_record(130.0, 10.0)] * 20)
    assert far is not None and not far["valid"]
    assert "120.0 ms at p95 (1200% of the model TTFT)" in far["reason"]
    # 120 ms over a 1 s model TTFT: 12%, so the absolute excess alone does not invalidate
    long = timing_section([_record(1120.0, 1000.0, 1100.0, 1060.0)] * 20)
    assert long is not None and long["valid"]
    assert long["e2e_skew_ms"]["p50"] == pytest.approx(40.0)
    # the bounds are options: a tighter one flags the same run
    assert not timing_section([_record(1120.0, 1000.0)] * 20, 10.0, 0.01)["valid"]
    # no record carries a model time (a real server): nothing to judge
    plain = RequestRecord(session_id="s", user=0, index=0, prompt_tokens=1, max_tokens=1)
    assert timing_section([plain]) is None


def test_invalid_measurement_is_its_own_verdict_that_never_passes() -> None:
    ok = Check(key="ttft_p95_ms", metric="ttft_ms.p95", direction="max", target=100.0,
               observed=50.0, status="pass")
    v = Verdict((ok,), invalid="client TTFT differs ...")
    assert not v.passed and v.status == "invalid"
    assert v.to_dict()["invalid"] == "client TTFT differs ..."
    assert Verdict((ok,)).passed
    # only objectives on measured time are affected by a timing error
    assert SLOSpec(ttft_p95_ms=100).judges_timing()
    assert SLOSpec(goodput_min=0.9, good_ttft_ms=100).judges_timing()
    assert not SLOSpec(cache_hit_rate_min=0.5, error_rate_max=0).judges_timing()


def test_stream_usage_carries_the_servers_model_time() -> None:
    payload = (b'{"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":4,'
               b'"prompt_tokens_details":{"cached_tokens":0},'
               b'"ctxplat_model_ttft_ms":12.5,"ctxplat_model_e2e_ms":40.0}}')
    usage = interpret_payload(payload).usage
    assert usage is not None and usage.model_ms == (12.5, 40.0)
    plain = interpret_payload(b'{"choices":[],"usage":{"prompt_tokens":10,'
                              b'"completion_tokens":4}}').usage
    assert plain is not None and plain.model_ms is None


def _ask(url: str, stream: bool) -> tuple[float, float]:
    body = {"prompt": list(range(100, 1300)), "max_tokens": 8, "stream": stream,
            "stream_options": {"include_usage": True}}
    with httpx.Client(base_url=url) as client:
        client.post("/reset_prefix_cache")
        if not stream:
            resp = client.post("/v1/completions", json=body)
            usage = resp.json()["usage"]
            assert float(resp.headers["x-ctxplat-model-ttft-ms"]) == \
                pytest.approx(usage["ctxplat_model_ttft_ms"], abs=1e-3)
            return usage["ctxplat_model_ttft_ms"], usage["ctxplat_model_e2e_ms"]
        with client.stream("POST", "/v1/completions", json=body) as resp:
            lines = [line for line in resp.iter_lines() if '"usage"' in line]
        usage = json.loads(lines[-1][len("data: "):])["usage"]
        return usage["ctxplat_model_ttft_ms"], usage["ctxplat_model_e2e_ms"]


def test_model_time_does_not_depend_on_the_speedup() -> None:
    # one request on an idle server: its model time is the sum of its steps, whether
    # the simulator runs at real time or 20 times faster
    got = {}
    for speedup in (1.0, 20.0):
        with serve_in_thread(SimConfig(profile="h100-llama8b", speedup=speedup)) as sim:
            got[speedup] = (_ask(sim.url, True), _ask(sim.url, False))
    (ttft, e2e), (ttft_plain, e2e_plain) = got[1.0]
    assert 0 < ttft < e2e
    assert (ttft_plain, e2e_plain) == pytest.approx((ttft, e2e), rel=1e-3)
    assert got[20.0][0] == pytest.approx((ttft, e2e), rel=1e-3)
    assert got[20.0][1] == pytest.approx((ttft, e2e), rel=1e-3)


VLLM_BEFORE = """\
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.01",model_name="m"} 2.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.02",model_name="m"} 3.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.04",model_name="m"} 4.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 4.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 4.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 0.05
"""
VLLM_AFTER = """\
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.01",model_name="m"} 2.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.02",model_name="m"} 7.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.04",model_name="m"} 12.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 12.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 12.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 0.29
"""


def test_vllm_ttft_histogram_gives_client_minus_server_ttft() -> None:
    before, after = parse_metrics(VLLM_BEFORE), parse_metrics(VLLM_AFTER)
    # 8 requests in the run: 4 between 10 and 20 ms, 4 between 20 and 40 ms; 0.24 s in all
    records = [RequestRecord(session_id="s", user=0, index=i, prompt_tokens=1, max_tokens=1,
                             ttft_s=0.035, end_s=0.1, outcome="ok") for i in range(8)]
    section = measurement_timing(records, before, after, None)
    assert section is not None
    assert section["server_requests"] == 8
    assert section["server_ttft_ms"]["mean"] == pytest.approx(30.0)
    assert section["ttft_skew_ms_mean"] == pytest.approx(5.0)
    assert section["server_ttft_ms"]["p50"] == pytest.approx(20.0)
    assert section["server_ttft_ms"]["p95"] == pytest.approx(20.0 + 20.0 * 3.6 / 4)
    assert histogram_quantile([(0.1, 0.0), (math.inf, 0.0)], 0.5) is None
    # a server with neither model time nor the histogram: no section
    assert measurement_timing(records, parse_metrics(""), parse_metrics(""), None) is None


TIMED_TEST = """
import pytest

WL = dict(users=2, turns=2, think_time_s=0.1, start_spread_s=0.2, system_prompt_tokens=256,
          user_tokens=64, output_tokens=4, block_size=16)

@pytest.mark.slo(ttft_p95_ms=60000, timing_skew_max_ms=0, timing_skew_max_ratio=0)
@pytest.mark.workload("chat", **WL)
def test_strict(ctxplat_run):
    ctxplat_run()

@pytest.mark.slo(ttft_p95_ms=60000)
@pytest.mark.workload("chat", **WL)
def test_default(ctxplat_run):
    ctxplat_run()
"""


def test_invalid_measurement_fails_the_test_and_says_why(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_timed=TIMED_TEST)
    result = pytester.runpytest("-p", "no:cacheprovider", "--ctxplat-results=res")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*invalid measurement (client TTFT differs from the "
                                 "server's model time by * ms at p95*for test_timed.py::"
                                 "test_strict*", "INVALID MEASUREMENT test_timed.py::"
                                 "test_strict: *"])
    docs = {p.name: json.loads(p.read_text()) for p in Path(pytester.path, "res").glob("*.json")}
    strict = next(d for n, d in docs.items() if "strict" in n)
    default = next(d for n, d in docs.items() if "default" in n)
    assert strict["verdict"]["status"] == "invalid" and not strict["timing"]["valid"]
    assert default["verdict"]["status"] != "invalid" and default["timing"]["valid"]
    assert default["timing"]["bound"] == {"max_ms": 100.0, "max_ratio": 1.0}
    assert len(default["records"]) == 4 and all(
        r["model_ttft_s"] is not None and r["model_ttft_s"] > 0 for r in default["records"])
    # the options bound every test whose marker sets none
    again = pytester.runpytest("-p", "no:cacheprovider", "--ctxplat-timing-skew-max-ms=0",
                               "--ctxplat-timing-skew-max-ratio=0", "-k", "default")
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines(["*invalid measurement*test_default*"])


def test_http_run_agrees_with_a_virtual_run_of_the_same_workload_and_seed() -> None:
    # one workload and seed, played over HTTP at speed-up 1 and on the virtual clock; the
    # profile's HBM holds everything (an unbounded cache), so hits cannot differ
    spec = ChatSessions(users=2, turns=3, think_time_s=0.3, start_spread_s=0.2,
                        system_prompt_tokens=1024, user_tokens=256, output_tokens=16,
                        block_size=16)
    with serve_in_thread(SimConfig(profile="h100-llama8b", speedup=1.0)) as sim:
        http = run_workload(sim.url, spec, seed=3, name="http")
    virtual = simulate(spec, "h100-llama8b", seed=3, name="virtual")
    assert http.metrics["ok"] == virtual.metrics["ok"] == 6
    assert http.hit_rates.request == virtual.hit_rates.request
    assert http.hit_rates.server == virtual.hit_rates.server
    assert sorted((r.prompt_tokens, r.cached_tokens) for r in http.records) == \
        sorted((r.prompt_tokens, r.cached_tokens) for r in virtual.records)
    # timings within the validity bound: the HTTP run's own check, and its figures
    # against the virtual run's
    assert http.timing is not None and http.timing["valid"], http.timing
    bound = http.timing["bound"]
    for metric in ("ttft_ms.p50", "e2e_ms.p50"):
        a, b = http.observed[metric], virtual.observed[metric]
        assert a is not None and b is not None
        assert abs(a - b) <= max(bound["max_ms"], bound["max_ratio"] * b), metric
