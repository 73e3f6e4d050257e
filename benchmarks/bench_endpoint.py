"""The neutral endpoint of the client benchmarks: nginx serving a fixed SSE body.

:class:`NginxEndpoint` writes an nginx configuration (from ``nginx/nginx.conf.in``) and
the two response bodies into a temporary prefix, starts nginx on 127.0.0.1 and stops it.
``POST /v1/completions`` and ``/v1/chat/completions`` answer a fixed vLLM-shaped stream
at once on :attr:`NginxEndpoint.url`, and after a known delay (the echo module's
``echo_sleep``) on :attr:`NginxEndpoint.delay_url`, to measure a client's TTFT error.
Every request is logged with its end time and duration, so the request rate of any
client is read from the server's side.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

N_CHUNKS = 64
PROMPT_TOKENS = 128
CACHED_TOKENS = 96
HERE = Path(__file__).resolve().parent


def _event(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _usage() -> dict[str, object]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": N_CHUNKS,
        "total_tokens": PROMPT_TOKENS + N_CHUNKS,
        "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS},
    }


def completions_body(n: int = N_CHUNKS) -> bytes:
    """What vLLM streams for an ``n``-token completion with ``include_usage``."""
    head = {"id": "cmpl-bench", "object": "text_completion", "created": 1700000000,
            "model": "bench"}
    events = []
    for i in range(n):
        choice = {"index": 0, "text": f" tok{i}", "logprobs": None,
                  "finish_reason": "length" if i == n - 1 else None, "stop_reason": None}
        events.append(_event({**head, "choices": [choice], "usage": None}))
    events.append(_event({**head, "choices": [], "usage": _usage()}))
    events.append(b"data: [DONE]\n\n")
    return b"".join(events)


def chat_body(n: int = N_CHUNKS) -> bytes:
    """What vLLM streams for an ``n``-token chat completion with ``include_usage``."""
    head = {"id": "chatcmpl-bench", "object": "chat.completion.chunk",
            "created": 1700000000, "model": "bench"}
    role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
            "finish_reason": None}
    events = [_event({**head, "choices": [role], "usage": None})]
    for i in range(n):
        choice = {"index": 0, "delta": {"content": f" tok{i}"}, "logprobs": None,
                  "finish_reason": "length" if i == n - 1 else None, "stop_reason": None}
        events.append(_event({**head, "choices": [choice], "usage": None}))
    events.append(_event({**head, "choices": [], "usage": _usage()}))
    events.append(b"data: [DONE]\n\n")
    return b"".join(events)


def _nginx_string(body: bytes) -> str:
    """``body`` as a single-quoted nginx string (no variables: ``$`` must not occur)."""
    text = body.decode()
    if "$" in text:
        raise ValueError("an nginx response body cannot hold '$' (variables)")
    text = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return f"'{text}'"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class LoggedRequest:
    end_s: float  # epoch seconds
    duration_s: float
    status: int
    path: str


class NginxEndpoint:
    """nginx with its own configuration and prefix in a temporary directory."""

    def __init__(self, delay_s: float = 0.25, nginx: str | None = None,
                 log: bool = True, tls: bool = False) -> None:
        self.delay_s = delay_s
        self.log = log  # False: no access log (for callers that measure on their side)
        # tls: the first server also answers https on tls_port, with a certificate for
        # 127.0.0.1 from a test authority whose bundle is ca_file (trustme, dev extras)
        self.tls = tls
        self.tls_port = free_port() if tls else 0
        self.tls_url = f"https://127.0.0.1:{self.tls_port}" if tls else ""
        self.nginx = nginx or shutil.which("nginx") or "/usr/sbin/nginx"
        self.port = free_port()
        self.delay_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.delay_url = f"http://127.0.0.1:{self.delay_port}"  # first byte after delay_s
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_pos = 0

    @property
    def pid(self) -> int:
        """nginx's master process (its worker is a child)."""
        assert self._proc is not None
        return self._proc.pid

    @property
    def prefix(self) -> Path:
        assert self._dir is not None
        return Path(self._dir.name)

    def start(self) -> None:
        if not os.path.exists(self.nginx):
            raise RuntimeError(
                f"nginx not found at {self.nginx}: install it (apt-get install nginx-light)")
        self._dir = tempfile.TemporaryDirectory(prefix="ctxplat-nginx-")
        prefix = self.prefix
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (prefix / sub).mkdir()
        for name, body in (("completions", completions_body()), ("chat", chat_body())):
            # nginx tokens are at most 4 KiB: the body goes in pieces.
            pieces = [body[i : i + 2000] for i in range(0, len(body), 2000)]
            names = [f"$b{i}" for i in range(len(pieces))]
            sets = "".join(
                f"set {n} {_nginx_string(p)};\n" for n, p in zip(names, pieces, strict=True))
            (prefix / f"{name}.sse").write_text(f'{sets}return 200 "{"".join(names)}";\n')
            echoes = "".join(f"echo -n {_nginx_string(p)};\n" for p in pieces)
            (prefix / f"{name}.echo").write_text(echoes)
        conf = (HERE / "nginx" / "nginx.conf.in").read_text()
        conf = (conf.replace("@TLS@", self._tls_lines(prefix))
                .replace("@PREFIX@", str(prefix)).replace("@PORT@", str(self.port))
                .replace("@DELAY_PORT@", str(self.delay_port))
                .replace("@DELAY_S@", f"{self.delay_s:g}"))
        if self.log:
            conf = conf.replace(
                "    access_log off;",
                "    log_format timing '$msec $request_time $status $uri';\n"
                f"    access_log {prefix}/access.log timing;")
        (prefix / "nginx.conf").write_text(conf)
        self._proc = subprocess.Popen(
            [self.nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise RuntimeError(f"nginx exited: {err.strip()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("nginx did not listen within 10 s")

    @property
    def ca_file(self) -> Path:
        """The test authority's bundle that a client must trust for :attr:`tls_url`."""
        return self.prefix / "ca.pem"

    def _tls_lines(self, prefix: Path) -> str:
        if not self.tls:
            return ""
        import trustme

        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(prefix / "ca.pem"))
        cert = ca.issue_cert("127.0.0.1")
        cert.cert_chain_pems[0].write_to_path(str(prefix / "cert.pem"))
        cert.private_key_pem.write_to_path(str(prefix / "key.pem"))
        return (f"        listen 127.0.0.1:{self.tls_port} ssl backlog=4096;\n"
                f"        ssl_certificate {prefix}/cert.pem;\n"
                f"        ssl_certificate_key {prefix}/key.pem;\n")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # fast shutdown
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> NginxEndpoint:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def mark(self) -> None:
        """Start a new window of logged requests."""
        log = self.prefix / "access.log"
        self._log_pos = log.stat().st_size if log.exists() else 0

    def requests_since_mark(self) -> list[LoggedRequest]:
        log = self.prefix / "access.log"
        if not log.exists():
            return []
        with open(log, "rb") as fh:
            fh.seek(self._log_pos)
            data = fh.read()
        out = []
        for line in data.decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 4:
                out.append(LoggedRequest(float(parts[0]), float(parts[1]), int(parts[2]),
                                         parts[3]))
        return out
