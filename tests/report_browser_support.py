"""Open a page in real headless Chromium through the DevTools protocol (loopback only):
collect console errors, exceptions and failed loads, and measure the rendered images."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "",
                             shutil.which("chromium-browser") or "") if p and Path(p).exists()),
                None)

_IMAGES_JS = """JSON.stringify(Array.from(document.images).map(i => {
  const r = i.getBoundingClientRect();
  return {complete: i.complete, w: i.naturalWidth, h: i.naturalHeight,
          shown_w: r.width, shown_h: r.height,
          visible: getComputedStyle(i).visibility !== 'hidden' &&
                   getComputedStyle(i).display !== 'none', alt: i.alt};
}))"""


def render(url: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """Load ``url``; return ``{"errors": [...], "images": [...], "title": str}``."""
    assert CHROMIUM is not None
    # One temporary folder for the profile and Chromium's own temporary files; removed
    # only once every process of the browser has exited (they write into the profile
    # until then: removing it earlier fails with "Directory not empty").
    root = Path(tempfile.mkdtemp(prefix="ctxplat-chromium-"))
    profile, tmp = root / "profile", root / "tmp"
    profile.mkdir()
    tmp.mkdir()
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={profile}", "--remote-debugging-port=0",
         "--remote-debugging-address=127.0.0.1", "--window-size=1200,900", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TMPDIR": str(tmp)}, start_new_session=True)
    try:
        ws_url = _devtools_url(proc, timeout_s)
        return asyncio.run(asyncio.wait_for(_drive(ws_url, url), timeout_s))
    finally:
        try:
            _stop_browser(proc)
        finally:
            if proc.stderr is not None:
                proc.stderr.close()
            shutil.rmtree(root)


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(stat[2]) == pgid and stat[0] != b"Z":
            found.append(int(entry.name))
    return found


def _stop_browser(proc: subprocess.Popen[str], grace_s: float = 10.0) -> None:
    """SIGTERM the browser's process group (Chromium closes its profile on it), wait
    for the browser and every child it started to exit, SIGKILL what is left after
    ``grace_s``, and return only when none remains."""
    pgid = proc.pid  # the browser leads its own session and group
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, grace_s)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        end = time.monotonic() + wait_s
        while time.monotonic() < end:
            if proc.poll() is not None and not _group_members(pgid):
                return
            time.sleep(0.05)
    proc.wait(5)
    left = _group_members(pgid)
    if left:
        raise RuntimeError(f"chromium processes {left} did not exit")


def _devtools_url(proc: subprocess.Popen[str], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode}")
        m = re.search(r"DevTools listening on (ws://\S+)", line)
        if m:
            return m.group(1)
    raise RuntimeError("chromium did not print its DevTools address")


async def _drive(ws_url: str, url: str) -> dict[str, Any]:
    errors: list[str] = []
    loaded = asyncio.Event()
    pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
    seq = 0
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=0) as ws:

        async def reader() -> None:
            async for msg in ws:
                data = json.loads(msg.data)
                if "id" in data and data["id"] in pending:
                    pending.pop(data["id"]).set_result(data)
                    continue
                method, params = data.get("method"), data.get("params", {})
                if method == "Runtime.consoleAPICalled" and params.get("type") in (
                        "error", "assert", "warning"):
                    args = [a.get("value", a.get("description")) for a in params["args"]]
                    errors.append(f"console.{params['type']}: {args}")
                elif method == "Runtime.exceptionThrown":
                    errors.append(f"exception: {params['exceptionDetails'].get('text')}")
                elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                    errors.append(f"log: {params['entry'].get('text')} "
                                  f"{params['entry'].get('url', '')}")
                elif method == "Page.loadEventFired":
                    loaded.set()

        task = asyncio.create_task(reader())

        async def call(method: str, params: dict[str, Any] | None = None,
                       session: str | None = None) -> dict[str, Any]:
            nonlocal seq
            seq += 1
            fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            pending[seq] = fut
            msg: dict[str, Any] = {"id": seq, "method": method, "params": params or {}}
            if session:
                msg["sessionId"] = session
            await ws.send_str(json.dumps(msg))
            reply = await fut
            if "error" in reply:
                raise RuntimeError(f"{method}: {reply['error']}")
            return dict(reply.get("result", {}))

        target = await call("Target.createTarget", {"url": "about:blank"})
        sid = (await call("Target.attachToTarget", {"targetId": target["targetId"],
                                                    "flatten": True}))["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            await call(f"{domain}.enable", session=sid)
        await call("Page.navigate", {"url": url}, session=sid)
        await loaded.wait()
        await asyncio.sleep(0.3)  # late console messages
        res = await call("Runtime.evaluate", {"expression": _IMAGES_JS, "returnByValue": True},
                         session=sid)
        title = await call("Runtime.evaluate", {"expression": "document.title",
                                                "returnByValue": True}, session=sid)
        shot = await call("Page.captureScreenshot", {"format": "png"}, session=sid)
        task.cancel()
    return {"errors": errors, "images": json.loads(res["result"]["value"]),
            "title": title["result"]["value"], "screenshot_b64": shot["data"]}
