"""Request bodies joined from cached per-block pieces (driver.body, workload.render
BlockText) are the bytes of encoding the whole payload, as the runner always sent."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import numpy as np
import orjson
import pytest
from workload_support import FakeSink

from pytest_ctxplat.driver.http import _split
from pytest_ctxplat.driver.runner import Runner, RunOptions
from pytest_ctxplat.driver.sse import SSEDecoder, TokenTemplate, interpret_payload
from pytest_ctxplat.workload import load_workload
from pytest_ctxplat.workload.model import BlockIdAllocator, RequestPlan, SessionStream
from pytest_ctxplat.workload.render import BlockText, render_messages, word_bytes, words
from pytest_ctxplat.workload.tokens import TokenSpace


def previous_body(runner: Runner, plan: RequestPlan) -> bytes:
    """The construction the runner used before bodies were joined from pieces."""
    opts = runner.options
    tokens = runner.token_space.tokens(plan.blocks, plan.tail_id, plan.tail_len)
    payload: dict[str, Any] = {"model": opts.model, "max_tokens": plan.output_tokens,
                               "stream": True, "stream_options": {"include_usage": True},
                               "temperature": 0.0}
    if opts.ignore_eos:
        payload["ignore_eos"] = True
    if runner.workload.api == "chat":
        payload["messages"] = render_messages(plan, tokens, opts.chat_overhead_tokens)
    else:
        payload["prompt"] = tokens
    payload.update(opts.extra_body)
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def session_plans(seed: int, block_size: int = 16, turns: int = 12) -> list[RequestPlan]:
    """The requests of an agent session growing turn by turn: a shared system prefix,
    user, tool calls and tool results of random lengths (partial tails included), some
    shorter than a chat template's overhead."""
    rng = random.Random(seed)
    ids = BlockIdAllocator()
    stream = SessionStream.start(block_size, ids, ids.take(3))
    stream.extend(rng.randint(0, block_size - 1), role="system")
    stream.extend(rng.randint(1, 80), role="user")
    plans = [stream.request(rng.randint(1, 300))]
    for _ in range(turns):
        stream.extend(rng.randint(1, 40), role="tool_call")
        stream.extend(rng.choice([1, 2, rng.randint(3, 200)]), role="tool")
        if rng.random() < 0.3:
            stream.extend(rng.randint(1, 30), role="assistant")
            stream.extend(rng.randint(1, 30), role="user")
        plans.append(stream.request(rng.randint(1, 300)))
    stream.extend(rng.randint(1, 50))  # content after the last message: a user message
    plans.append(stream.request(7))
    return plans


def make_runner(api: str, block_size: int = 16, **opts: Any) -> Runner:
    wl = load_workload("chat", {"api": api, "block_size": block_size, "users": 1})
    return Runner(wl, FakeSink(1.0), RunOptions(**{"model": "m", **opts}))


OPTIONS = [
    {},
    {"chat_overhead_tokens": 1},
    {"chat_overhead_tokens": 5, "ignore_eos": False, "seed": 3, "token_salt": 9},
    {"model": "modèle-ünïcode ✓", "extra_body": {"user": "ユーザー \"q\" \\ \n", "top_k": 5}},
    {"extra_body": {"max_tokens": 9, "stream": False, "ignore_eos": False}},
    {"token_max": 200_000, "token_min": 5, "chat_overhead_tokens": 2},
]


@pytest.mark.parametrize("api", ["completions", "chat"])
@pytest.mark.parametrize("opts", OPTIONS)
def test_bodies_are_the_bytes_of_the_whole_payload(api: str, opts: dict[str, Any]) -> None:
    for seed in range(3):
        runner = make_runner(api, **opts)
        for plan in session_plans(seed):
            fast = runner.bodies.body(plan)
            assert fast == previous_body(runner, plan)
            assert json.loads(fast) == json.loads(previous_body(runner, plan))


def test_plans_without_structure_and_empty_prompts() -> None:
    for api in ("completions", "chat"):
        for overhead in (0, 3, 40):
            runner = make_runner(api, chat_overhead_tokens=overhead)
            for blocks, tail_id, tail_len in (([], 0, 0), ([], 7, 2), ([4, 5], 0, 0),
                                              ([4, 5, 6], 9, 15), ([1], 2, 1)):
                plan = RequestPlan(np.array(blocks, np.int64), tail_id, tail_len, 16, 5)
                assert runner.bodies.body(plan) == previous_body(runner, plan)


def test_extra_body_replacing_the_prompt_is_sent_as_given() -> None:
    for api, key in (("completions", "prompt"), ("chat", "messages")):
        runner = make_runner(api, extra_body={key: "mine"})
        for plan in session_plans(1)[:3]:
            body = runner.bodies.body(plan)
            assert body == previous_body(runner, plan)
            assert json.loads(body)[key] == "mine"


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_a_long_session_with_a_small_cache_and_a_large_first_request(api: str) -> None:
    """Evictions (a cache of a few blocks), the one-pass path of a large request with
    every block new, then the same session's next turns from pieces."""
    runner = make_runner(api, block_size=8, chat_overhead_tokens=1)
    blocks = runner.bodies._blocks
    blocks._budget = 300  # a few blocks' worth: the cache is cut again and again
    ids = BlockIdAllocator()
    stream = SessionStream.start(8, ids, ids.take(2))
    stream.extend(9000, role="user")  # far more new blocks than one batch
    for turn in range(30):
        plan = stream.request(10 + turn)
        assert runner.bodies.body(plan) == previous_body(runner, plan)
        stream.extend(turn * 7 + 1, role="tool_call" if turn % 2 else "tool")
    assert len(blocks._cache) < 100


@pytest.mark.parametrize("token_range", [(0, 300_000), (10**7, 10**7 + 100)])
def test_block_text_is_the_text_of_the_whole_token_array(token_range: tuple[int, int]) -> None:
    """Also with ids past 10**7, whose words wrap around."""
    space = TokenSpace(4, seed=5, token_min=token_range[0], token_max=token_range[1])
    json_text = BlockText(space, "json", readahead_tokens=0)
    word_text = BlockText(space, "words", readahead_tokens=64)
    rng = random.Random(2)
    for _ in range(200):
        n = rng.randint(0, 12)
        block_ids = np.array(rng.sample(range(1, 60), n), np.int64)
        tail_id, tail_len = rng.randint(1, 60), rng.randint(0, 3)
        tokens = space.tokens(block_ids, tail_id, tail_len)
        assert bytes(json_text.text(block_ids, tail_id, tail_len)) == \
            orjson.dumps(tokens, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]
        assert bytes(word_text.text(block_ids, tail_id, tail_len)).decode() == words(tokens)
        assert word_bytes(tokens).decode() == (words(tokens) + " " if n or tail_len else "")


def test_runner_sends_the_same_bodies_records_and_designed_hits() -> None:
    """A chat coding-agent run (tool calls and results, subagents) through the runner:
    every body sent is the whole payload's encoding, and the designed hits are those of
    the plans."""
    wl = load_workload("coding_swarm", {
        "users": 3, "human_turns": 2, "tool_steps_mean": 3.0, "initial_context_tokens": 900,
        "tool_result_tokens": 300, "think_time_median_s": 2.0, "think_time_sigma": 0.5,
        "tool_latency_s": 0.5, "spawn_probability": 0.6, "subagents_max": 2,
        "subagent_tool_steps_mean": 2.0, "output_tokens": 20, "start_spread_s": 1.0,
        "api": "chat"})
    sent: list[tuple[bytes, RequestPlan]] = []

    class Capture(FakeSink):
        async def submit(self, request: Any, record: Any, now: Any) -> None:
            sent.append((request.body(), request.plan))
            await super().submit(request, record, now)

    runner = Runner(wl, Capture(200.0), RunOptions(model="m", time_scale=200.0,
                                                   chat_overhead_tokens=1))
    records = asyncio.run(runner.run())
    assert len(sent) == len(records) > 20
    assert any(p.tail_len for _, p in sent)
    for body, plan in sent:
        assert body == previous_body(runner, plan)
    assert [r.prompt_tokens for r in records] == [p.prompt_tokens for _, p in sent]
    assert sum(r.designed_cached_tokens for r in records) > 0


def test_a_chat_streams_token_chunks_are_counted_in_bulk_after_its_role_chunk() -> None:
    """The role chunk that opens a chat stream is read on its own; the token chunks of
    the buffer after it are recognised from their bytes, not parsed one by one."""
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
            "model": "m"}
    events = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                          "content": ""}}]}]
    events += [{**head, "choices": [{"index": 0, "delta": {"content": f" t{i}"},
                                     "finish_reason": None}]} for i in range(20)]
    events.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    body = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + \
        b"data: [DONE]\n\n"
    region = SSEDecoder().feed_region(body)
    k, payloads = _split(TokenTemplate(), region)
    assert k == 20
    assert [interpret_payload(p) for p in payloads] == [
        interpret_payload(b""), interpret_payload(orjson.dumps(events[-1])),
        interpret_payload(b"[DONE]")]
