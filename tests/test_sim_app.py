"""The simulator over HTTP: OpenAI/vLLM shapes, streaming, errors, metrics, processes."""

from __future__ import annotations

import collections.abc
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

import pytest_ctxplat.sim
from pytest_ctxplat.sim.app import create_app
from pytest_ctxplat.sim.config import SimConfig
from pytest_ctxplat.sim.engine import Engine
from pytest_ctxplat.sim.server import SimServerHandle, serve_in_thread
from pytest_ctxplat.sim.tokenizer import Tokenizer

FAST = SimConfig(speedup=50.0, max_model_len=8192)
PROMPT_2000 = [16 + (i * 7919) % 30000 for i in range(2000)]


@pytest.fixture(scope="module")
def sim() -> collections.abc.Iterator[SimServerHandle]:
    handle = serve_in_thread(FAST)
    try:
        yield handle
    finally:
        handle.close()


@pytest.fixture
def client(sim: SimServerHandle) -> collections.abc.Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, timeout=30) as c:
        assert c.post("/reset_prefix_cache").status_code == 200
        yield c


def _metrics(c: httpx.Client) -> dict[str, float]:
    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out: dict[str, float] = collections.defaultdict(float)
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out[sample.name] += sample.value
    return out


def _sse(c: httpx.Client, path: str, body: dict[str, object]) -> list[bytes]:
    with c.stream("POST", path, json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read()
    assert raw.endswith(b"\n\n")
    events = raw.split(b"\n\n")[:-1]
    assert all(e.startswith(b"data: ") for e in events)
    return [e[len(b"data: ") :] for e in events]


def test_streaming_completion_reports_cached_tokens_and_metrics(client: httpx.Client) -> None:
    body = {"model": "ctxplat-sim", "prompt": PROMPT_2000, "max_tokens": 5, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True,
            "temperature": 0.0, "min_tokens": 5}  # fmt: skip
    before = _metrics(client)
    results = []
    for _ in range(2):
        events = _sse(client, "/v1/completions", body)
        assert events[-1] == b"[DONE]"
        chunks = [orjson.loads(e) for e in events[:-1]]
        token_chunks, usage_chunk = chunks[:-1], chunks[-1]
        assert all(ch["object"] == "text_completion" for ch in chunks)
        assert len({ch["id"] for ch in chunks}) == 1
        assert [ch["choices"][0]["finish_reason"] for ch in token_chunks][-1] == "length"
        assert all(ch["choices"][0]["finish_reason"] is None for ch in token_chunks[:-1])
        assert usage_chunk["choices"] == []
        results.append(("".join(ch["choices"][0]["text"] for ch in token_chunks), usage_chunk))
    (text1, u1), (text2, u2) = results
    assert text1 == text2 and len(text1.split()) == 5 and text1.startswith(" ")
    model_ttft, model_e2e = (u1["usage"].pop(k) for k in ("ctxplat_model_ttft_ms",
                                                           "ctxplat_model_e2e_ms"))
    assert 0 < model_ttft < model_e2e  # the request's model time (docs: simulator)
    assert u1["usage"] == {"prompt_tokens": 2000, "completion_tokens": 5, "total_tokens": 2005,
                           "prompt_tokens_details": {"cached_tokens": 0}}  # fmt: skip
    assert u2["usage"]["prompt_tokens_details"] == {"cached_tokens": 1984}
    after = _metrics(client)
    assert after["vllm:prefix_cache_hits_total"] - before["vllm:prefix_cache_hits_total"] == 1984
    assert after["vllm:prefix_cache_queries_total"] - before["vllm:prefix_cache_queries_total"] == (
        4000
    )
    assert after["vllm:prompt_tokens_cached_total"] - before["vllm:prompt_tokens_cached_total"] == (
        1984
    )
    assert after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"] == 10
    assert after["vllm:request_success_total"] - before["vllm:request_success_total"] == 2


def test_stream_without_usage_and_non_streaming_completion(client: httpx.Client) -> None:
    events = _sse(client, "/v1/completions", {"prompt": "hello big world", "max_tokens": 3,
                                              "stream": True})  # fmt: skip
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert all(ch["choices"] for ch in chunks) and "usage" not in chunks[-1]
    streamed = "".join(ch["choices"][0]["text"] for ch in chunks)

    r = client.post("/v1/completions", json={"prompt": ["hello big world"], "max_tokens": 3})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == "ctxplat-sim"
    assert body["choices"][0]["text"] == streamed
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["prompt_tokens"] == 3 and body["usage"]["completion_tokens"] == 3
    assert "cached_tokens" in body["usage"]["prompt_tokens_details"]
    ids = Tokenizer().encode("hello big world")
    r2 = client.post("/v1/completions", json={"prompt": [ids], "max_tokens": 3})
    assert r2.json()["choices"][0]["text"] == streamed


def test_chat_completions_stream_and_whole(client: httpx.Client) -> None:
    messages = [
        {"role": "system", "content": "you are a tool"},
        {"role": "user", "content": [{"type": "text", "text": "fix"}, {"type": "text",
                                                                        "text": "the bug"}]},
    ]  # fmt: skip
    body = {"model": "x", "messages": messages, "max_tokens": 4, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    events = _sse(client, "/v1/chat/completions", body)
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content_chunks = chunks[1:-1]
    text = "".join(ch["choices"][0]["delta"]["content"] for ch in content_chunks)
    assert len(text.split()) == 4
    assert content_chunks[-1]["choices"][0]["finish_reason"] == "length"
    prompt_len = chunks[-1]["usage"]["prompt_tokens"]
    assert prompt_len == 1 + 4 + 1 + 3 + 1  # role markers, words, generation prompt
    tok = client.post("/tokenize", json={"messages": messages}).json()
    assert tok["count"] == prompt_len and tok["max_model_len"] == 8192
    whole = client.post("/v1/chat/completions", json={**body, "stream": False}).json()
    assert whole["object"] == "chat.completion"
    assert whole["choices"][0]["message"] == {"role": "assistant", "content": text}
    assert whole["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/v1/completions", {"prompt": list(range(16, 8200)), "max_tokens": 16}, "context length"),
        ("/v1/completions", {"prompt": [5, 40000]}, "out of vocabulary"),
        ("/v1/completions", {"prompt": [5, "x"]}, "only integers"),
        ("/v1/completions", {"prompt": []}, "non-empty"),
        ("/v1/completions", {"prompt": ""}, "empty"),
        ("/v1/completions", {"prompt": ["a", "b"]}, "one prompt"),
        ("/v1/completions", {"max_tokens": 3}, "'prompt' is required"),
        ("/v1/completions", {"prompt": "a", "max_tokens": 0}, "max_tokens"),
        ("/v1/completions", {"prompt": "a", "n": 2}, "n=1"),
        ("/v1/chat/completions", {"messages": []}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "a"}]}, "role"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image"}]}]},
         "parts"),
        ("/detokenize", {"tokens": [99999]}, "out of range"),
        ("/tokenize", {"nothing": 1}, "prompt"),
    ],
)  # fmt: skip
def test_bad_input_is_a_400_with_openai_error(
    client: httpx.Client, path: str, body: dict[str, object], needle: str
) -> None:
    r = client.post(path, json=body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert needle in err["message"]
    assert err["type"] == "BadRequestError" and err["code"] == 400


def test_invalid_json_is_a_400(client: httpx.Client) -> None:
    r = client.post("/v1/completions", content=b"{nope", headers={"content-type": "x"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


def test_models_health_tokenize_detokenize(client: httpx.Client) -> None:
    health = client.get("/health")
    assert health.status_code == 200 and health.content == b""
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "ctxplat-sim"
    tok = client.post("/tokenize", json={"prompt": "the quick brown fox"}).json()
    assert tok["count"] == 4 and len(tok["tokens"]) == 4
    words = client.post("/detokenize", json={"tokens": [16, 41, 42, 500]}).json()["prompt"]
    assert words == "a z aa " + Tokenizer().word(500)
    back = client.post("/tokenize", json={"prompt": words}).json()["tokens"]
    assert back == [16, 41, 42, 500]


def test_reset_prefix_cache_endpoint(client: httpx.Client) -> None:
    body = {"prompt": PROMPT_2000[:500], "max_tokens": 1}
    client.post("/v1/completions", json=body)
    warm = client.post("/v1/completions", json=body).json()["usage"]
    assert warm["prompt_tokens_details"]["cached_tokens"] == 496
    assert client.post("/reset_prefix_cache").status_code == 200
    cold = client.post("/v1/completions", json=body).json()["usage"]
    assert cold["prompt_tokens_details"]["cached_tokens"] == 0


def test_metrics_exposition(client: httpx.Client) -> None:
    text = client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("vllm:prefix_cache_queries", "vllm:prefix_cache_hits",
                 "vllm:prompt_tokens_cached", "vllm:prompt_tokens", "vllm:generation_tokens",
                 "vllm:request_success", "vllm:num_preemptions",
                 "ctxplat_sim:kv_evicted_blocks"):  # fmt: skip
        assert families[name].type == "counter", name
        assert families[name].samples[0].name == name + "_total"
        assert families[name].samples[0].labels["model_name"] == "ctxplat-sim"
    for name in ("vllm:kv_cache_usage_perc", "vllm:num_requests_running",
                 "vllm:num_requests_waiting", "vllm:cache_config_info"):  # fmt: skip
        assert families[name].type == "gauge", name
    assert families["vllm:cache_config_info"].samples[0].labels["block_size"] == "16"
    assert families["vllm:time_to_first_token_seconds"].type == "histogram"
    assert families["vllm:e2e_request_latency_seconds"].type == "histogram"
    assert "python_gc" not in text  # a private registry


def test_client_disconnect_aborts_the_request() -> None:
    body = {"prompt": PROMPT_2000[:100], "max_tokens": 8000, "stream": True}
    with (
        serve_in_thread(SimConfig(speedup=1.0)) as slow,
        httpx.Client(base_url=slow.url, timeout=30) as c,
    ):
        with c.stream("POST", "/v1/completions", json=body) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
            assert _metrics(c)["vllm:num_requests_running"] == 1
            assert _metrics(c)["vllm:kv_cache_usage_perc"] > 0
        deadline = time.monotonic() + 5
        while _metrics(c)["vllm:num_requests_running"] != 0:
            assert time.monotonic() < deadline, "request still running after disconnect"
            time.sleep(0.02)
        assert _metrics(c)["vllm:kv_cache_usage_perc"] == 0.0
        assert slow.engine.stats.num_aborted == 1
        assert slow.engine.stats.request_success == 0


def test_disconnect_during_a_non_streaming_request_aborts_it() -> None:
    body = {"prompt": PROMPT_2000[:100], "max_tokens": 8000}
    with serve_in_thread(SimConfig(speedup=1.0)) as slow:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{slow.url}/v1/completions", json=body, timeout=0.3)
        deadline = time.monotonic() + 5
        while slow.engine.num_running:
            assert time.monotonic() < deadline, "request still running after disconnect"
            time.sleep(0.02)
        assert slow.engine.stats.num_aborted == 1


@pytest.mark.asyncio
async def test_app_in_process_over_asgi_transport() -> None:
    engine = Engine(SimConfig(speedup=100.0))
    transport = httpx.ASGITransport(app=create_app(engine))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as ac:
            r = await ac.post("/v1/completions", json={"prompt": [20, 21, 22], "max_tokens": 2})
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
            assert (await ac.get("/v1/nothing")).status_code == 404
            assert (await ac.get("/v1/completions")).status_code == 405
    finally:
        await engine.stop()
    assert engine.num_running == 0


# -- the server process ------------------------------------------------------------------
_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [str(Path(pytest_ctxplat.sim.__file__).resolve().parents[2]),
     os.environ.get("PYTHONPATH", "")])}  # fmt: skip


def _wait_port(ready: Path, proc: subprocess.Popen[bytes], timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while not ready.exists():
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert time.monotonic() < deadline, "simulator did not become ready"
        time.sleep(0.02)
    return int(ready.read_text())


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _sim_cmd(ready: Path, parent: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "pytest_ctxplat.sim", "--port", "0", "--ready-file",
           str(ready), "--speedup", "20"]  # fmt: skip
    return cmd if parent is None else [*cmd, "--parent-pid", str(parent)]


def test_main_rejects_bad_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_ctxplat.sim.server import main

    assert main(["--block-size", "0", "--port", "0"]) == 2
    assert "command line: block_size: must be >= 1, got 0" in capsys.readouterr().err
    bad = tmp_path / "sim.yaml"
    bad.write_text("kv_blocks: 3\n")
    assert main(["--config", str(bad), "--port", "0"]) == 2
    assert "sim.yaml:1: kv_blocks: unknown key; valid: block_size," in capsys.readouterr().err


def test_subprocess_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "port"
    proc = subprocess.Popen(_sim_cmd(ready, os.getpid()), env=_ENV, stderr=subprocess.PIPE)
    try:
        port = _wait_port(ready, proc)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            assert c.get("/health").status_code == 200
            r = c.post("/v1/completions", json={"prompt": "hi there", "max_tokens": 2})
            assert r.json()["usage"]["completion_tokens"] == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


_INTERMEDIATE = """
import os, subprocess, sys, time
proc = subprocess.Popen([*sys.argv[1:], "--parent-pid", str(os.getpid())])
print(proc.pid, flush=True)
time.sleep(600)
"""


def _wait_gone(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not _gone(pid):
        assert time.monotonic() < deadline, "simulator outlived its parent"
        time.sleep(0.05)


def test_simulator_exits_when_its_parent_process_dies(tmp_path: Path) -> None:
    """The real parent dies: PR_SET_PDEATHSIG (Linux) or the pid poll stops the sim."""
    ready = tmp_path / "port"
    cmd = [sys.executable, "-c", _INTERMEDIATE, *_sim_cmd(ready, None)]
    parent = subprocess.Popen(cmd, env=_ENV, stdout=subprocess.PIPE)
    sim_pid = -1
    try:
        assert parent.stdout is not None
        sim_pid = int(parent.stdout.readline())
        port = _wait_port(ready, parent)
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
        parent.kill()
        parent.wait()
        _wait_gone(sim_pid)
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
        if sim_pid > 0 and not _gone(sim_pid):
            os.kill(sim_pid, signal.SIGKILL)


def test_simulator_exits_when_the_watched_pid_dies(tmp_path: Path) -> None:
    """``--parent-pid`` names a process that is not our parent: the 0.5 s poll."""
    ready = tmp_path / "port"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    sim = subprocess.Popen(_sim_cmd(ready, sleeper.pid), env=_ENV)
    try:
        port = _wait_port(ready, sim)
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
        start = time.monotonic()
        sleeper.kill()
        sleeper.wait()
        assert sim.wait(timeout=5) == 0
        assert time.monotonic() - start < 3
    finally:
        for p in (sim, sleeper):
            if p.poll() is None:
                p.kill()
            p.wait()
