"""Test helpers for server tests: small aiohttp servers on 127.0.0.1 in a thread.

:class:`ThreadedApp` is the lifecycle (a context manager; ``url`` is set on entry).
:class:`LimitedServer` is a deliberately limited OpenAI-compatible server. It
demands a bearer key, refuses token-id prompts on ``/v1/completions``, streams chat
answers without ``usage``, and has no ``/metrics`` or ``/reset_prefix_cache``: the kind
of endpoint the capability probe must degrade gracefully against.
"""

from __future__ import annotations

import asyncio
import json
import threading
from types import TracebackType
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from typing import Self

__all__ = ["LimitedServer", "ThreadedApp"]


class ThreadedApp:
    """An aiohttp app served on 127.0.0.1 (a free port) by an event loop in a daemon
    thread. Subclasses add their routes in :meth:`routes`; on exit, handlers still
    running (sleeping faults) are cancelled."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.url = ""

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def _start(self) -> str:
        app = web.Application()
        self.routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    def __enter__(self) -> Self:
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        asyncio.run_coroutine_threadsafe(self._cancel_rest(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _cancel_rest(self) -> None:
        me = asyncio.current_task()
        rest = [t for t in asyncio.all_tasks() if t is not me]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)


class LimitedServer(ThreadedApp):
    def __init__(self, api_key: str) -> None:
        super().__init__()
        self.api_key = api_key
        self.requests: list[str] = []
        self.unauthorized = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)

    def _auth(self, request: web.Request) -> bool:
        ok = request.headers.get("Authorization") == f"Bearer {self.api_key}"
        if not ok:
            self.unauthorized += 1
        return ok

    async def _models(self, request: web.Request) -> web.Response:
        if not self._auth(request):
            return web.json_response({"error": "bad key"}, status=401)
        return web.json_response({"data": [{"id": "limited-model"}]})

    async def _completions(self, request: web.Request) -> web.Response:
        self.requests.append("completions")
        if not self._auth(request):
            return web.json_response({"error": "bad key"}, status=401)
        body = await request.json()
        if not isinstance(body.get("prompt"), str):
            return web.json_response({"error": "prompt must be a string"}, status=400)
        return web.json_response({"error": "use chat"}, status=400)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.requests.append("chat")
        if not self._auth(request):
            return web.json_response({"error": "bad key"}, status=401)
        body = await request.json()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(int(body.get("max_tokens") or 4)):
            chunk = {"choices": [{"index": 0, "delta": {"content": f" w{i}"}}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
