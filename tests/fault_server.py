"""A misbehaving OpenAI-compatible server for the fault suite.

:class:`FaultServer` runs an aiohttp app on 127.0.0.1 in a background thread. Every
fault is a path prefix: ``{url}/{fault}`` is a server base URL whose ``/v1/completions``
(and ``/v1/chat/completions``) misbehave that way, while ``/v1/models`` and ``/metrics``
answer (unless the fault is ``silent_all``). A fault that should only start after the
capability probe (the probe sends ``max_tokens: 2``) lets requests with ``max_tokens``
of 2 through.

Faults (the outcome class the client must record is in :data:`EXPECTED`):

==========================  =============================================================
``ok``                      a valid stream: tokens, finish chunk, usage, ``[DONE]``
``split``                   the same bytes written in 1-7 byte pieces
``no_usage``                valid, without the usage chunk
``close_mid_stream``        two token chunks, then the connection is cut
``eof_no_done``             two token chunks, then the body ends (no finish, usage, DONE)
``short_with_usage``        4 of the tokens asked, usage, finish "length", no ``[DONE]``
``bad_json``                a token chunk, then ``data: {not json``
``no_data_prefix``          events written without ``data:``
``error_event``             a token chunk, then ``data: {"error": ...}``
``status_500``              HTTP 500 with a JSON error
``throttle_retry_after``    HTTP 429 with ``Retry-After: 1``
``throttle_plain``          HTTP 429 without ``Retry-After``
``unavailable``             HTTP 503
``stall_first_byte``        answers after ``stall_s`` (no headers meanwhile)
``stall_between_tokens``    one token chunk, then silence for ``stall_s``
``silent_post``             accepts the connection, never answers a POST (GETs work)
``silent_all``              never answers anything
``mixed``                   request n (after the probe) gets the fault ``MIXED[n % 6]``
``echo_headers``            HTTP 401 whose body repeats the request headers (the API key)
``echo_in_stream``          a token, then an error event repeating the Authorization header
``echo_always``             ``echo_headers`` for the capability probe too
``chunks``                  writes the request's ``chunks`` as they are (for fuzzing)
==========================  =============================================================
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web
from servers_support import ThreadedApp

__all__ = ["EXPECTED", "MIXED", "FaultServer", "sse_body"]

EXPECTED = {
    "ok": "ok", "split": "ok", "no_usage": "ok", "close_mid_stream": "protocol_error",
    "eof_no_done": "protocol_error", "short_with_usage": "incomplete",
    "bad_json": "protocol_error", "no_data_prefix": "protocol_error",
    "error_event": "protocol_error", "status_500": "http_status",
    "throttle_retry_after": "throttled", "throttle_plain": "throttled",
    "unavailable": "throttled", "stall_first_byte": "timeout",
    "stall_between_tokens": "timeout",
}  # fmt: skip

PROBE_MAX_TOKENS = 2
# one fault of each outcome class a single server can show, in the order ``mixed`` plays
MIXED = ("ok", "status_500", "eof_no_done", "short_with_usage", "throttle_plain",
         "stall_first_byte")


def _event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def sse_body(n: int, *, usage: bool = True, done: bool = True, cached: int = 0,
             finish: str | None = "length") -> bytes:
    """A valid completion stream of ``n`` tokens."""
    out = [_event({"id": "c", "object": "text_completion",
                   "choices": [{"index": 0, "text": f" t{i}", "finish_reason": None}]})
           for i in range(n)]
    if finish is not None:
        out.append(_event({"id": "c", "choices": [{"index": 0, "text": "",
                                                    "finish_reason": finish}]}))
    if usage:
        out.append(_event({"id": "c", "choices": [], "usage": {
            "prompt_tokens": 16, "completion_tokens": n,
            "prompt_tokens_details": {"cached_tokens": cached}}}))
    if done:
        out.append(b"data: [DONE]\n\n")
    return b"".join(out)


class FaultServer(ThreadedApp):
    """The fault app in a thread of its own (see the module docstring)."""

    def __init__(self, stall_s: float = 3.0) -> None:
        super().__init__()
        self.stall_s = stall_s
        self.requests: dict[str, int] = {}
        self.mixed = 0
        self._never = asyncio.Event()

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/{fault}/v1/models", self._models)
        app.router.add_get("/{fault}/metrics", self._metrics)
        app.router.add_post("/{fault}/v1/completions", self._generate)
        app.router.add_post("/{fault}/v1/chat/completions", self._generate)

    # -- routes ----------------------------------------------------------------------
    async def _models(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["fault"] == "silent_all":
            await asyncio.sleep(3600)
        return web.json_response({"data": [{"id": "fault-model"}]})

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["fault"] == "silent_all":
            await asyncio.sleep(3600)
        return web.Response(text="# no metrics\n", content_type="text/plain")

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        fault = request.match_info["fault"]
        self.requests[fault] = self.requests.get(fault, 0) + 1
        body = await request.json()
        if fault == "chunks":
            return await self._chunks(request, body)
        n = int(body.get("max_tokens") or 16)
        if fault in ("silent_post", "silent_all"):
            await asyncio.sleep(3600)
        if fault == "echo_always":  # even the probe: its findings must not carry the key
            return self._echo(request)
        probe = n == PROBE_MAX_TOKENS
        if probe and fault not in ("ok", "split", "no_usage"):
            fault = "ok"  # let the capability probe through: the fault is for the run
        elif fault == "mixed":
            self.mixed += 1
            fault = MIXED[(self.mixed - 1) % len(MIXED)]
        handler = getattr(self, f"_f_{fault}", None)
        if handler is None:
            return web.json_response({"error": f"no fault {fault!r}"}, status=404)
        result: web.StreamResponse = await handler(request, n)
        return result

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        return resp

    async def _chunks(self, request: web.Request, body: dict[str, object]
                      ) -> web.StreamResponse:
        """Writes the body's ``chunks`` (latin-1 strings) one by one, flushing each."""
        resp = await self._sse(request)
        for chunk in body["chunks"]:  # type: ignore[attr-defined]
            await resp.write(str(chunk).encode("latin-1"))
            await asyncio.sleep(0)
        await resp.write_eof()
        return resp

    async def _f_ok(self, request: web.Request, n: int) -> web.StreamResponse:
        resp = await self._sse(request)
        await resp.write(sse_body(n))
        await resp.write_eof()
        return resp

    async def _f_split(self, request: web.Request, n: int) -> web.StreamResponse:
        resp = await self._sse(request)
        data = sse_body(n)
        i, step = 0, 1
        while i < len(data):
            await resp.write(data[i:i + step])
            i += step
            step = step % 7 + 1
        await resp.write_eof()
        return resp

    async def _f_no_usage(self, request: web.Request, n: int) -> web.StreamResponse:
        resp = await self._sse(request)
        await resp.write(sse_body(n, usage=False))
        await resp.write_eof()
        return resp

    async def _f_close_mid_stream(self, request: web.Request, n: int) -> web.StreamResponse:
        resp = await self._sse(request)
        await resp.write(sse_body(2, usage=False, done=False, finish=None))
        await asyncio.sleep(0.01)
        assert request.transport is not None
        request.transport.abort()
        return resp

    async def _f_eof_no_done(self, request: web.Request, n: int) -> web.StreamResponse:
        resp = await self._sse(request)
        await resp.write(sse_body(2, usage=False, done=False, finish=None))
        await resp.write_eof()
        return resp

    async def _f_short_with_usage(self, request: web.Request, n: int) -> web.StreamResponse:
        resp = await self._sse(request)
        await resp.write(sse_body(min(4, n - 1), done=False))
        await resp.write_eof()
        return resp

    async def _f_bad_json(self, request: web.Request, n: int) -> web.StreamResponse:
        resp = await self._sse(request)
        await resp.write(sse_body(1, usage=False, done=False, finish=None)
                         + b"data: {not json\n\n")
        await resp.write_eof()
        return resp

    async def _f_no_data_prefix(self, request: web.Request, n: int) -> web.StreamResponse:
        resp = await self._sse(request)
        await resp.write(sse_body(n).replace(b"data: ", b""))
        await resp.write_eof()
        return resp

    async def _f_error_event(self, request: web.Request, n: int) -> web.StreamResponse:
        resp = await self._sse(request)
        await resp.write(sse_body(1, usage=False, done=False, finish=None)
                         + _event({"error": {"message": "engine died", "code": 500}}))
        await resp.write_eof()
        return resp

    def _echo(self, request: web.Request) -> web.StreamResponse:
        """A careless server: its error repeats the request's headers (the API key)."""
        return web.json_response({"error": {"message": f"refused {dict(request.headers)}"}},
                                 status=401)

    async def _f_echo_headers(self, request: web.Request, n: int) -> web.StreamResponse:
        return self._echo(request)

    async def _f_echo_in_stream(self, request: web.Request, n: int) -> web.StreamResponse:
        resp = await self._sse(request)
        key = request.headers.get("Authorization", "")
        await resp.write(sse_body(1, usage=False, done=False, finish=None)
                         + _event({"error": {"message": f"bad key {key}"}}))
        await resp.write_eof()
        return resp

    async def _f_status_500(self, request: web.Request, n: int) -> web.StreamResponse:
        return web.json_response({"error": {"message": "internal"}}, status=500)

    async def _f_throttle_retry_after(self, request: web.Request, n: int
                                      ) -> web.StreamResponse:
        return web.json_response({"error": "slow down"}, status=429,
                                 headers={"Retry-After": "1"})

    async def _f_throttle_plain(self, request: web.Request, n: int) -> web.StreamResponse:
        return web.json_response({"error": "slow down"}, status=429)

    async def _f_unavailable(self, request: web.Request, n: int) -> web.StreamResponse:
        return web.json_response({"error": "overloaded"}, status=503)

    async def _f_stall_first_byte(self, request: web.Request, n: int) -> web.StreamResponse:
        await asyncio.sleep(self.stall_s)
        return await self._f_ok(request, n)

    async def _f_stall_between_tokens(self, request: web.Request, n: int
                                      ) -> web.StreamResponse:
        resp = await self._sse(request)
        await resp.write(sse_body(1, usage=False, done=False, finish=None))
        await asyncio.sleep(self.stall_s)
        await resp.write(b"data: [DONE]\n\n")
        return resp

    def base(self, fault: str) -> str:
        return f"{self.url}/{fault}"
