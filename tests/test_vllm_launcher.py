"""The vLLM launcher's mechanics without vLLM: a stand-in "python" that serves /health
like vLLM's OpenAI server does. Free port, readiness, log, restart on the same port,
start failures with the log tail, and teardown that leaves nothing behind."""

from __future__ import annotations

import sys
import tempfile
import uuid
from pathlib import Path

import httpx
import pytest
from process_support import processes_with_env

from pytest_ctxplat.errors import ServerStartError
from pytest_ctxplat.servers.profiles import parse_profile
from pytest_ctxplat.servers.vllm import MARKER_ENV, start_vllm

FAKE_SERVER = r'''
import http.server, os, sys
args = sys.argv[1:]
assert args[:2] == ["-m", "vllm.entrypoints.openai.api_server"], args
if os.environ.get("FAKE_FAIL"):
    print("ValueError: the fake engine refuses to start", flush=True)
    sys.exit(3)
port = int(args[args.index("--port") + 1])
model = args[args.index("--model") + 1]
print("fake vllm", " ".join(args[2:]), "KVCACHE", os.environ.get("VLLM_CPU_KVCACHE_SPACE"),
      flush=True)

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"data": [{"id": "%s"}]}' % model.encode() if self.path == "/v1/models" \
            else b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass

print("Application startup complete.", flush=True)
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
'''


def _fake_python(tmp_path: Path) -> Path:
    script = tmp_path / "fake_vllm.py"
    script.write_text(FAKE_SERVER)
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\nexec {sys.executable} {script} \"$@\"\n")
    python.chmod(0o755)
    return python


def _marked(server_id: str) -> list[int]:
    return processes_with_env(MARKER_ENV, server_id)


def _profile(python: Path, **extra: object) -> object:
    return parse_profile({"launcher": "vllm-cpu", "model": "/models/some-model",
                          "python": str(python), "ready_timeout_s": 20, **extra},
                         name="fake-cpu")


def test_start_restart_close(tmp_path: Path) -> None:
    profile = _profile(_fake_python(tmp_path), engine={"cpu_kvcache_space_gib": 2},
                       env={"SECRET_TOKEN": "hunter2"})
    server = start_vllm(profile, log_dir=tmp_path / "logs")  # type: ignore[arg-type]
    try:
        assert server.alive()
        assert server.url.startswith("http://127.0.0.1:")
        assert httpx.get(server.url + "/health").status_code == 200
        assert server.info.model == "/models/some-model"  # from /v1/models
        assert server.info.profile == "fake-cpu" and server.info.launcher == "vllm-cpu"
        log = (tmp_path / "logs" / "server-fake-cpu.log").read_text()
        assert "fake vllm --model /models/some-model --host 127.0.0.1" in log
        assert "KVCACHE 2" in log
        assert "hunter2" not in log
        assert "SECRET_TOKEN='***'" in log  # profile env: names only
        ids = _marked(server.server_id)
        assert len(ids) >= 2  # watchdog + server
        url, workdir = server.url, server.workdir
        server.restart()
        assert server.url == url and server.workdir == workdir and server.starts == 2
        assert httpx.get(server.url + "/health").status_code == 200
        assert not set(ids) & set(_marked(server.server_id))  # new processes
    finally:
        server.close()
    assert _marked(server.server_id) == []
    assert not server.workdir.exists()


def test_start_failure_names_the_cause_and_cleans_up(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # A TMPDIR of its own: in the shared one, another test's (or another pytest-xdist
    # worker's) live server has its folder too.
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    monkeypatch.setenv("FAKE_FAIL", "1")
    with pytest.raises(ServerStartError) as info:
        start_vllm(_profile(_fake_python(tmp_path)),  # type: ignore[arg-type]
                   log_dir=tmp_path / "logs")
    message = str(info.value)
    assert "vLLM profile 'fake-cpu' did not start" in message
    assert "ValueError: the fake engine refuses to start" in message  # the log tail
    assert list(tmp.iterdir()) == []  # the temporary folder is gone


def test_readiness_deadline(tmp_path: Path) -> None:
    python = tmp_path / "python"
    tag = uuid.uuid4().hex
    python.write_text(f"#!/bin/sh\necho never ready {tag}\nexec sleep 60\n")
    python.chmod(0o755)
    with pytest.raises(ServerStartError, match=rf"(?s)not ready after 1 s.*never ready {tag}"):
        start_vllm(_profile(python, ready_timeout_s=1),  # type: ignore[arg-type]
                   log_dir=tmp_path / "logs")
