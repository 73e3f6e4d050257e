"""The SSE splitter and the reading of OpenAI stream payloads."""

from __future__ import annotations

import orjson
import pytest

from pytest_ctxplat.driver.sse import (
    DONE_EVENT,
    EMPTY_EVENT,
    TOKEN_EVENT,
    SSEDecoder,
    StreamUsage,
    TokenTemplate,
    interpret_payload,
    split_region,
)


def _completion_chunk(i: int) -> bytes:
    return orjson.dumps(
        {
            "id": "cmpl-1",
            "object": "text_completion",
            "choices": [{"index": 0, "text": f" tok{i}", "finish_reason": None}],
        }
    )


USAGE_CHUNK = orjson.dumps(
    {
        "id": "cmpl-1",
        "choices": [],
        "usage": {
            "prompt_tokens": 100,
            "completion_tokens": 6,
            "total_tokens": 106,
            "prompt_tokens_details": {"cached_tokens": 64},
        },
    }
)

PAYLOADS = [_completion_chunk(i) for i in range(6)] + [USAGE_CHUNK, b"[DONE]"]


def _realistic_stream() -> bytes:
    """A stream mixing the forms a server may use, with known payloads."""
    parts = [
        b": keep-alive comment\n\n",
        b"data: " + PAYLOADS[0] + b"\n\n",
        b"event: message\nid: 7\nretry: 1000\ndata: " + PAYLOADS[1] + b"\n\n",
        b"data:" + PAYLOADS[2] + b"\n\n",  # no space after the colon
        b"data: " + PAYLOADS[3] + b"\n\n",
        b": another comment\ndata: " + PAYLOADS[4] + b"\n\n",
        b"data: " + PAYLOADS[5] + b"\n\n\n",  # an extra blank line
        b"data: " + PAYLOADS[6] + b"\n\n",
        b"data: [DONE]\n\n",
    ]
    return b"".join(parts)


def _decode_in_pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    dec = SSEDecoder()
    out: list[bytes] = []
    prev = 0
    for cut in [*cuts, len(data)]:
        out.extend(dec.feed(data[prev:cut]))
        prev = cut
    out.extend(dec.flush())
    return out


def test_whole_stream_in_one_chunk() -> None:
    assert _decode_in_pieces(_realistic_stream(), []) == PAYLOADS


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_every_single_split_point_gives_the_same_payloads(newline: bytes) -> None:
    data = _realistic_stream().replace(b"\n", newline)
    for cut in range(len(data) + 1):
        assert _decode_in_pieces(data, [cut]) == PAYLOADS, cut


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_every_pair_of_split_points_near_event_ends(newline: bytes) -> None:
    # Two cuts around every separator: covers a separator split over three buffers.
    data = _realistic_stream().replace(b"\n", newline)
    sep = newline + newline
    ends = [i for i in range(len(data)) if data.startswith(sep, i)]
    for end in ends:
        span = range(max(0, end - 3), min(len(data), end + len(sep) + 3) + 1)
        for a in span:
            for b in span:
                if a <= b:
                    assert _decode_in_pieces(data, [a, b]) == PAYLOADS, (a, b)


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_one_byte_at_a_time(newline: bytes) -> None:
    data = _realistic_stream().replace(b"\n", newline)
    assert _decode_in_pieces(data, list(range(1, len(data)))) == PAYLOADS


def test_irregular_piece_sizes() -> None:
    data = _realistic_stream()
    for step in (2, 3, 5, 7, 11, 64, 200):
        assert _decode_in_pieces(data, list(range(step, len(data), step))) == PAYLOADS, step


def test_several_events_in_one_chunk_and_the_rest_held_back() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data: a\n\ndata: b\n\ndata: c") == [b"a", b"b"]
    assert dec.pending == len(b"data: c")
    assert dec.feed(b"\n") == []
    assert dec.feed(b"\ndata: d\n\n") == [b"c", b"d"]
    assert dec.pending == 0


def test_crlf_separators() -> None:
    dec = SSEDecoder()
    # A CR at the end of a buffer already ends the line: no waiting for a possible LF.
    assert dec.feed(b"data: a\r\n\r\ndata: b\r\n\r") == [b"a", b"b"]
    assert dec.feed(b"\n") == []
    assert dec.feed(b"data: c\r\r") == [b"c"]
    assert dec.feed(b"\ndata: d\r") == []
    assert dec.feed(b"\n\r\n") == [b"d"]
    assert dec.pending == 0


def test_comments_and_other_fields_are_ignored() -> None:
    dec = SSEDecoder()
    stream = b": ping\n\nevent: x\nid: 1\nretry: 5\n\ndatafoo: no\ndata: yes\n\n"
    assert dec.feed(stream) == [b"yes"]


def test_multi_line_data_is_joined_with_newline() -> None:
    dec = SSEDecoder()
    assert dec.feed(b'data: {"a":\ndata:  1}\n\n') == [b'{"a":\n 1}']
    assert dec.feed(b"data\ndata: x\n\n") == [b"\nx"]


def test_only_one_leading_space_is_stripped() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data:  two\n\ndata:none\n\n") == [b" two", b"none"]


def test_final_event_without_blank_line_comes_from_flush() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data: a\n\ndata: last\n") == [b"a"]
    assert dec.flush() == [b"last"]
    assert dec.flush() == []
    dec2 = SSEDecoder()
    assert dec2.feed(b"data: x\r") == []
    assert dec2.flush() == [b"x"]


# -- interpreting payloads ------------------------------------------------------------


def test_done() -> None:
    assert interpret_payload(b"[DONE]") is DONE_EVENT
    assert interpret_payload(b"[DONE]").done


def test_completion_token_chunk() -> None:
    ev = interpret_payload(_completion_chunk(1))
    assert ev is TOKEN_EVENT
    assert ev.has_token and not ev.done and ev.usage is None and ev.error is None


def test_usage_only_chunk() -> None:
    ev = interpret_payload(USAGE_CHUNK)
    assert not ev.has_token
    assert ev.usage == StreamUsage(completion_tokens=6, prompt_tokens=100, cached_tokens=64)


def test_usage_sharing_a_chunk_with_choices_is_honoured() -> None:
    payload = orjson.dumps(
        {
            "choices": [{"index": 0, "text": "end", "finish_reason": "length"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3},
        }
    )
    ev = interpret_payload(payload)
    assert ev.has_token
    assert ev.finish_reason == "length"
    assert ev.usage == StreamUsage(completion_tokens=3, prompt_tokens=10, cached_tokens=None)


@pytest.mark.parametrize(
    "details", [None, {}, {"cached_tokens": None}], ids=["null", "empty", "null-cached"]
)
def test_cached_tokens_absent_or_null_is_none(details: object) -> None:
    usage: dict[str, object] = {"prompt_tokens": 5, "completion_tokens": 2}
    if details is not None:
        usage["prompt_tokens_details"] = details
    ev = interpret_payload(orjson.dumps({"choices": [], "usage": usage}))
    assert ev.usage is not None
    assert ev.usage.cached_tokens is None


def test_chat_role_only_chunk_is_not_a_token() -> None:
    role_only = {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}
    role_empty = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    assert not interpret_payload(orjson.dumps(role_only)).has_token
    assert not interpret_payload(orjson.dumps(role_empty)).has_token


def test_chat_content_and_reasoning_are_tokens() -> None:
    for delta in (
        {"content": "Hi"},
        {"reasoning_content": "hmm"},
        {"content": None, "reasoning_content": "hmm"},
        {"reasoning": "hmm"},
        {"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]},
        {"role": "assistant", "content": "Hello"},  # role with a real token
    ):
        payload = orjson.dumps({"choices": [{"index": 0, "delta": delta}]})
        assert interpret_payload(payload).has_token, delta


def test_chat_final_chunk_without_content_is_not_a_token() -> None:
    for delta in ({}, {"content": None}, {"content": ""}):
        payload = orjson.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": "stop"}]})
        ev = interpret_payload(payload)
        assert not ev.has_token, delta
        assert ev.finish_reason == "stop"


def test_completion_finish_only_chunk_is_not_a_token() -> None:
    payload = orjson.dumps({"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})
    assert not interpret_payload(payload).has_token
    empty_text = orjson.dumps({"choices": [{"index": 0, "text": "", "finish_reason": None}]})
    assert interpret_payload(empty_text).has_token  # a token that decodes to no text yet


def test_error_payloads() -> None:
    ev = interpret_payload(
        orjson.dumps({"error": {"message": "boom", "type": "InternalError", "code": 500}})
    )
    assert ev.error is not None and "boom" in ev.error and "InternalError" in ev.error
    ev2 = interpret_payload(orjson.dumps({"object": "error", "message": "bad", "code": 400}))
    assert ev2.error is not None and "bad" in ev2.error
    assert interpret_payload(orjson.dumps({"error": "plain"})).error == "plain"
    assert interpret_payload(b"{not json").error is not None
    assert interpret_payload(b"[1, 2]").error is not None


def test_empty_payload_is_ignored() -> None:
    assert interpret_payload(b"") is EMPTY_EVENT


def test_decoder_and_interpreter_together_count_tokens() -> None:
    data = _realistic_stream()
    events = [interpret_payload(p) for p in _decode_in_pieces(data, list(range(3, len(data), 3)))]
    assert sum(ev.has_token for ev in events) == 6
    assert events[-1].done
    usages = [ev.usage for ev in events if ev.usage is not None]
    assert usages == [StreamUsage(6, 100, 64)]


# -- recognising token chunks by their bytes (TokenTemplate) ------------------------------


def _vllm_chunk(i: int, finish: str | None = None, created: int = 1700000000) -> bytes:
    return orjson.dumps(
        {
            "id": "cmpl-9f3",
            "object": "text_completion",
            "created": created,
            "model": "m",
            "choices": [
                {"index": 0, "text": f" tok{i}", "logprobs": None, "finish_reason": finish,
                 "stop_reason": None}
            ],
            "usage": None,
        }
    )


def _region(payloads: list[bytes]) -> bytes:
    dec = SSEDecoder()
    region = dec.feed_region(b"".join(b"data: " + p + b"\n\n" for p in payloads))
    assert dec.pending == 0
    return region


def _learnt(payload: bytes) -> TokenTemplate:
    assert interpret_payload(payload) is TOKEN_EVENT
    tpl = TokenTemplate()
    assert tpl.learn(payload)
    return tpl


def test_template_counts_a_vllm_body_in_bulk_and_leaves_the_closing_events() -> None:
    n = 64
    payloads = [_vllm_chunk(i, "length" if i == n - 1 else None) for i in range(n)]
    payloads += [USAGE_CHUNK, b"[DONE]"]
    region = _region(payloads)
    tpl = _learnt(payloads[0])
    k, rest = tpl.scan(region)
    assert k == n - 1  # the last token chunk carries the finish reason: read in full
    tail = [interpret_payload(p) for p in split_region(region[rest:])]
    assert [ev.has_token for ev in tail] == [True, False, False]
    assert tail[1].usage == StreamUsage(6, 100, 64) and tail[2].done
    # From an offset (the first event already read) and with nothing after the tokens.
    first_end = region.index(b"\n\n") + 2
    assert tpl.scan(region, first_end) == (n - 2, rest)
    only_tokens = _region(payloads[:10])
    assert tpl.scan(only_tokens) == (10, len(only_tokens) + 2)


def test_template_matches_only_the_same_shape() -> None:
    tpl = _learnt(_vllm_chunk(0))
    assert tpl.matches(_vllm_chunk(5))
    assert tpl.matches(_vllm_chunk(5).replace(b" tok5", b""))  # empty text is a token
    assert not tpl.matches(_vllm_chunk(5, "stop"))
    assert not tpl.matches(_vllm_chunk(5, created=1700000001))
    assert not tpl.matches(_vllm_chunk(5).replace(b" tok5", b'say \\"hi\\"'))
    assert not tpl.matches(b"[DONE]")
    assert not tpl.matches(USAGE_CHUNK)


@pytest.mark.parametrize("n", [6, 40], ids=["few-events", "many-events"])
def test_scan_refuses_regions_with_an_event_of_another_shape(n: int) -> None:
    tokens = [_vllm_chunk(i) for i in range(n)]
    tpl = _learnt(tokens[0])
    quote = _vllm_chunk(3).replace(b" tok3", b'a \\"quoted\\" word')
    for odd in (USAGE_CHUNK, _vllm_chunk(3, "stop"), _vllm_chunk(3, created=5), quote,
                _completion_chunk(3), b"[DONE]"):
        # In the middle: the region is not counted in bulk at all.
        assert tpl.scan(_region([*tokens[:3], odd, *tokens[3:]])) == (0, 0), odd
        # At the end: at most the token chunks before it are counted (or none, when
        # it looks like a token chunk from outside: then everything is read one by one).
        region = _region([*tokens, odd])
        k, rest = tpl.scan(region)
        assert (k, split_region(region[rest:])) in ((n, [odd]), (0, [*tokens, odd])), odd


@pytest.mark.parametrize(
    "payload",
    [
        orjson.dumps({"choices": [{"index": 0, "delta": {"role": "assistant", "content": "x"}}]}),
        orjson.dumps({"choices": [{"index": 0, "delta": {"content": 'a"b'}}]}),
        orjson.dumps({"choices": [{"index": 0, "text": "a", "x": {"text": "b"}}]}),
    ],
    ids=["role", "quote", "two-text-keys"],
)
def test_template_is_not_learnt_from_ambiguous_chunks(payload: bytes) -> None:
    assert interpret_payload(payload).has_token
    tpl = TokenTemplate()
    assert not tpl.learn(payload)
    assert not tpl.learnt
    assert tpl.scan(_region([payload, payload])) == (0, 0)


def test_chat_template_from_a_content_chunk() -> None:
    def chat(text: str) -> bytes:
        return orjson.dumps({"id": "c", "object": "chat.completion.chunk",
                             "choices": [{"index": 0, "delta": {"content": text},
                                          "logprobs": None, "finish_reason": None}]})

    tpl = _learnt(chat("Hello"))
    assert tpl.matches(chat(" world")) and tpl.matches(chat(""))
    assert tpl.scan(_region([chat(f"w{i}") for i in range(5)]))[0] == 5
