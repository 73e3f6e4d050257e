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
    interpret_payload,
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
