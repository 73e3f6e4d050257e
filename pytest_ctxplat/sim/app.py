"""The simulator's OpenAI-compatible HTTP API (a Starlette ASGI app).

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models``,
``GET /health``, ``GET /version``, ``POST /reset_prefix_cache``, ``POST /tokenize``,
``POST /detokenize``, ``GET /metrics``. Streaming follows vLLM: one SSE event per engine
step per request (several tokens when the client lagged), ``finish_reason: "length"`` on
the last token chunk, an optional usage chunk (``stream_options.include_usage``) with
``"choices": []``, then ``data: [DONE]``. ``usage.prompt_tokens_details.cached_tokens``
is always reported, and so is the request's model time (what it would take at speedup 1):
``usage.ctxplat_model_ttft_ms`` and ``usage.ctxplat_model_e2e_ms``, also sent as the
``X-Ctxplat-Model-TTFT-Ms`` / ``X-Ctxplat-Model-E2E-Ms`` headers of a non-streamed
answer. A client that disconnects aborts its engine request.

With several engines (a profile with ``replicas > 1``) the profile's router picks one
per request; the ``session`` router keys on the ``X-Session-ID`` header.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import numpy as np
import numpy.typing as npt
import orjson
from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from pytest_ctxplat.sim.cache import block_hashes, token_array
from pytest_ctxplat.sim.cluster import Router
from pytest_ctxplat.sim.engine import Engine, RequestError
from pytest_ctxplat.sim.metrics import CONTENT_TYPE, SimMetrics
from pytest_ctxplat.sim.protocol import (
    MODEL_E2E_HEADER,
    MODEL_TTFT_HEADER,
    SSE_DONE,
    BadRequest,
    GenParams,
    error_body,
    parse_body,
    parse_chat,
    parse_completion,
    prompt_tokens,
    sse,
    usage,
)
from pytest_ctxplat.sim.request import Request, TokenEvent
from pytest_ctxplat.sim.tokenizer import Tokenizer
from pytest_ctxplat.version import __version__

__all__ = ["create_app"]

_JSON = "application/json"
Handler = Callable[[HttpRequest], Awaitable[Response]]


def _json(obj: object, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type=_JSON)


def _errors(handler: Handler) -> Handler:
    async def wrapped(request: HttpRequest) -> Response:
        try:
            return await handler(request)
        except (BadRequest, RequestError) as exc:
            return Response(error_body(str(exc)), status_code=400, media_type=_JSON)

    return wrapped


class _EventStream(StreamingResponse):
    """An SSE response that aborts its engine request however the response ends."""

    def __init__(self, content: AsyncIterator[bytes], req: Request) -> None:
        super().__init__(content, media_type="text/event-stream")
        self._req = req

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._req.abort()


async def _collect(req: Request, request: HttpRequest) -> list[TokenEvent] | None:
    """All events of ``req``; None if the client disconnected first."""

    async def gather() -> list[TokenEvent]:
        return [event async for event in req]

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    work = asyncio.ensure_future(gather())
    watch = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work, watch):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        req.abort()
    if work.cancelled():
        return None
    return work.result()


class _Api:
    def __init__(self, engine: Engine, router: Router | None = None) -> None:
        self.engine = engine
        self.router = router
        self.engines = router.engines if router is not None else [engine]
        self.model = engine.config.model
        self.tokenizer = Tokenizer(engine.config.vocab_size)
        self.metrics = SimMetrics(engine, self.engines)

    def _pick(self, prompt: list[int] | npt.NDArray[np.int64], request: HttpRequest) -> Engine:
        if self.router is None or len(self.engines) == 1:
            return self.engine
        bs = self.engine.config.block_size
        tokens = token_array(prompt[: max(0, (len(prompt) - 1) // bs) * bs])
        return self.router.pick(block_hashes(tokens, bs), request.headers.get("x-session-id"))

    def _text(self, event: TokenEvent) -> str:
        return "".join(self.tokenizer.token_text(t) for t in event.token_ids)

    def _head(self, p: GenParams, obj: str) -> dict[str, Any]:
        return {"id": p.request_id, "object": obj, "created": p.created, "model": p.model}

    async def completions(self, request: HttpRequest) -> Response:
        p = parse_completion(parse_body(await request.body()), self.tokenizer, self.model)
        return await self._serve(p, request, chat=False)

    async def chat(self, request: HttpRequest) -> Response:
        p = parse_chat(parse_body(await request.body()), self.tokenizer, self.model)
        return await self._serve(p, request, chat=True)

    async def _serve(self, p: GenParams, request: HttpRequest, chat: bool) -> Response:
        req = self._pick(p.prompt_token_ids, request).submit(p.prompt_token_ids, p.max_tokens)
        if p.stream:
            return _EventStream(self._stream(p, req, chat), req)
        events = await _collect(req, request)
        if events is None:
            return Response(status_code=499)
        text = "".join(self._text(e) for e in events)
        last = events[-1]
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": "length",
                "stop_reason": None,
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length",
                      "stop_reason": None}  # fmt: skip
        body = self._head(p, "chat.completion" if chat else "text_completion")
        body["choices"] = [choice]
        model_ms = req.model_times_ms()
        body["usage"] = usage(last.prompt_tokens, last.num_generated, last.cached_tokens,
                              model_ms)
        response = _json(body)
        for header, value in zip((MODEL_TTFT_HEADER, MODEL_E2E_HEADER), model_ms,
                                 strict=True):
            if value is not None:
                response.headers[header] = f"{value:.3f}"
        return response

    async def _stream(self, p: GenParams, req: Request, chat: bool) -> AsyncIterator[bytes]:
        head = self._head(p, "chat.completion.chunk" if chat else "text_completion")
        last: TokenEvent | None = None
        async for event in req:
            finish = "length" if event.finished else None
            if chat:
                if last is None:
                    role = {"index": 0, "delta": {"role": "assistant", "content": ""},
                            "logprobs": None, "finish_reason": None}  # fmt: skip
                    yield sse({**head, "choices": [role]})
                choice: dict[str, Any] = {"index": 0, "delta": {"content": self._text(event)},
                                          "logprobs": None, "finish_reason": finish}  # fmt: skip
            else:
                choice = {"index": 0, "text": self._text(event), "logprobs": None,
                          "finish_reason": finish, "stop_reason": None}  # fmt: skip
            last = event
            yield sse({**head, "choices": [choice]})
        if p.include_usage and last is not None:
            u = usage(last.prompt_tokens, last.num_generated, last.cached_tokens,
                      req.model_times_ms())
            yield sse({**head, "choices": [], "usage": u})
        yield SSE_DONE

    async def models(self, request: HttpRequest) -> Response:
        card = {
            "id": self.model,
            "object": "model",
            "created": 0,
            "owned_by": "vllm",
            "root": self.model,
            "parent": None,
            "max_model_len": self.engine.config.max_model_len,
            "permission": [],
        }
        return _json({"object": "list", "data": [card]})

    async def health(self, request: HttpRequest) -> Response:
        return Response(status_code=200)

    async def version(self, request: HttpRequest) -> Response:
        return _json({"name": "ctxplat-sim", "version": __version__})

    async def reset_prefix_cache(self, request: HttpRequest) -> Response:
        """Reset every engine's cache and lower tiers (vLLM's query parameters
        ``reset_running_requests`` and ``reset_external`` are accepted: every tier is
        always reset); answers ``{"success": bool}`` like vLLM."""
        done = [engine.reset_prefix_cache() for engine in self.engines]
        return _json({"success": all(done)})

    async def tokenize(self, request: HttpRequest) -> Response:
        body = parse_body(await request.body())
        if "messages" in body:
            messages = body["messages"]
            if not isinstance(messages, list):
                raise BadRequest("'messages' must be a list")
            add_gen = bool(body.get("add_generation_prompt", True))
            try:
                ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_gen)
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
        elif isinstance(body.get("prompt"), str):
            ids = self.tokenizer.encode(body["prompt"])
        else:
            raise BadRequest("give 'prompt' (a string) or 'messages'")
        return _json({"count": len(ids), "max_model_len": self.engine.config.max_model_len,
                      "tokens": ids, "token_strs": None})  # fmt: skip

    async def detokenize(self, request: HttpRequest) -> Response:
        ids = prompt_tokens(parse_body(await request.body()).get("tokens"), self.tokenizer)
        try:
            text = self.tokenizer.decode(ids)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        return _json({"prompt": text})

    async def metrics_route(self, request: HttpRequest) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)


def create_app(engine: Engine, router: Router | None = None) -> Starlette:
    """The ASGI app serving ``engine`` (or the engines of ``router``); its lifespan
    starts and stops the engine loops."""
    api = _Api(engine, router)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # a streamed answer runs in an anyio task group, whose backend loads on first
        # use (about 20 ms): load it now, not inside the first request's TTFT
        async with anyio.create_task_group():
            pass
        for e in api.engines:
            e.start()
        try:
            yield
        finally:
            for e in api.engines:
                await e.stop()

    routes = [
        Route("/v1/completions", _errors(api.completions), methods=["POST"]),
        Route("/v1/chat/completions", _errors(api.chat), methods=["POST"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/health", api.health, methods=["GET"]),
        Route("/version", api.version, methods=["GET"]),
        Route("/reset_prefix_cache", api.reset_prefix_cache, methods=["POST"]),
        Route("/tokenize", _errors(api.tokenize), methods=["POST"]),
        Route("/detokenize", _errors(api.detokenize), methods=["POST"]),
        Route("/metrics", api.metrics_route, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.engine = engine
    app.state.metrics = api.metrics
    return app
