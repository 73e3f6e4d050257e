"""Property tests of the streaming client (Hypothesis): any byte chunking of a valid
stream gives the same record; a broken stream gives an outcome class, never an
exception. ``CTXPLAT_FUZZ_EXAMPLES=10000`` runs a long fuzz (docs/concepts/reliability.md)."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterator

import orjson
import pytest
from fault_server import FaultServer, sse_body
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_ctxplat.api import run_sync
from pytest_ctxplat.driver.http import StreamClient
from pytest_ctxplat.driver.limits import ClientLimits
from pytest_ctxplat.report.records import OUTCOMES, RequestRecord

EXAMPLES = int(os.environ.get("CTXPLAT_FUZZ_EXAMPLES", "40"))
LIMITS = ClientLimits(first_byte_timeout_s=5.0, token_timeout_s=5.0)
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    with FaultServer() as s:
        yield s


def _send(server: FaultServer, chunks: list[bytes], min_tokens: int = 0) -> RequestRecord:
    body = orjson.dumps({"model": "m", "prompt": [1, 2], "max_tokens": 16, "stream": True,
                         "chunks": [c.decode("latin-1") for c in chunks]})
    record = RequestRecord(session_id="s", user=0, index=0, prompt_tokens=2, max_tokens=16,
                           min_tokens=min_tokens)

    async def go() -> None:
        async with StreamClient(server.base("chunks"), limits=LIMITS) as client:
            await client.request("/v1/completions", body, record,
                                 asyncio.get_running_loop().time)

    run_sync(go())
    return record


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def _shape(r: RequestRecord) -> tuple[object, ...]:
    return (r.outcome, r.output_tokens, r.cached_tokens, r.usage_prompt_tokens,
            r.finish_reason, r.ttft_s is not None, len(r.chunk_gaps_s), r.status)


@st.composite
def valid_streams(draw: st.DrawFn) -> bytes:
    n = draw(st.integers(1, 12))
    data = sse_body(n, usage=draw(st.booleans()), cached=draw(st.integers(0, 9)),
                    finish=draw(st.sampled_from(["length", "stop", None])))
    if draw(st.booleans()):
        data = b": a comment line\n\n" + data
    if draw(st.booleans()):
        data = data.replace(b"\n", b"\r\n")
    return data


@FUZZ
@given(data=valid_streams(), cuts=st.lists(st.integers(0, 10_000), max_size=40))
def test_any_chunking_of_a_valid_stream_gives_the_same_record(
        server: FaultServer, data: bytes, cuts: list[int]) -> None:
    whole = _send(server, [data])
    pieces = _send(server, _split(data, cuts))
    assert whole.outcome == "ok"
    assert _shape(pieces) == _shape(whole)


@FUZZ
@given(events=st.lists(st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"data: [DONE]\n\n", b"data: {not json\n\n", b"data: \n\n",
                     b'data: {"error": {"message": "x"}}\n\n', b"data: 42\n\n",
                     b'data: {"choices": "nope"}\n\n', b'data: {"usage": []}\n\n',
                     b'data: {"choices":[{"text":"a"}]}\n\n', b"\r\r\n", b"event: x\n"]),
), max_size=12), cuts=st.lists(st.integers(0, 10_000), max_size=12))
def test_a_broken_stream_gives_an_outcome_never_an_exception(
        server: FaultServer, events: list[bytes], cuts: list[int]) -> None:
    data = b"".join(events)
    rec = _send(server, _split(data, cuts) if data else [], min_tokens=1)
    assert rec.outcome in OUTCOMES and rec.outcome != "cancelled"
    assert rec.end_s is not None
    if rec.outcome != "ok":
        assert rec.error
