"""No request can wedge `pasta serve`: out-of-range fields are 400s, odd bodies are 4xx (never 500), a failure while
admitting one request fails only that request, a dead or stuck engine shows in /health and answers open requests,
and SIGTERM exits within its bound even while a step hangs."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest
from serve_helpers import RunningServer, no_eos_interpreter, wait_idle

from pasta import sampling
from pasta.serve.config import ServeConfig
from pasta.subprocesses import free_port

MODEL = "tiny-llama"
TESTS = Path(__file__).parent


def chat(text="hello", **kw):
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 8, **kw}


@pytest.fixture(scope="module")
def server():
    with RunningServer(no_eos_interpreter(), ServeConfig(max_batch=4, max_queue=8, max_tokens_limit=64, default_max_tokens=16)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def test_seed_range_is_checked_and_64_bit_seeds_work(client):
    for bad in (2**64, -(2**63) - 1):
        r = client.post("/v1/chat/completions", json=chat(temperature=0.9, seed=bad))
        assert r.status_code == 400 and r.json()["error"]["param"] == "seed", r.text
    answers = {}
    for seed in (2**64 - 1, -(2**63), 7):
        r = client.post("/v1/chat/completions", json=chat(temperature=0.9, seed=seed))
        assert r.status_code == 200, r.text
        answers[seed] = r.json()["choices"][0]["message"]["content"]
    again = client.post("/v1/chat/completions", json=chat(temperature=0.9, seed=2**64 - 1)).json()
    assert again["choices"][0]["message"]["content"] == answers[2**64 - 1]  # still reproducible
    health = wait_idle(client)
    assert health["engine"] == "ok" and client.get("/health").status_code == 200


def test_tiny_temperature_is_greedy_not_a_500(client):
    greedy = client.post("/v1/chat/completions", json=chat(temperature=0)).json()["choices"][0]["message"]["content"]
    for t in (1e-40, 5e-324, 1e-6):
        r = client.post("/v1/chat/completions", json=chat(temperature=t, seed=3))
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == greedy
    assert sampling.SamplingParams(temperature=1e-40).greedy
    assert not sampling.SamplingParams(temperature=sampling.GREEDY_BELOW).greedy


def test_deeply_nested_json_is_400(client):
    depth = 100_000
    body = b'{"model": "tiny-llama", "messages": ' + b"[" * depth + b"]" * depth + b"}"
    r = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json", r.text
    assert "nested too deeply" in r.json()["error"]["message"]


@pytest.mark.parametrize("path,body,param", [
    ("/v1/completions", b'{"model": "tiny-llama", "prompt": "a\\ud800b"}', "prompt"),
    ("/v1/completions", b'{"model": "tiny-llama", "prompt": ["\\udfff"]}', "prompt.0"),
    ("/v1/chat/completions", b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "\\ud800"}]}',
     "messages.0.content"),
])
def test_lone_surrogate_is_400_naming_the_field(client, path, body, param):
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and "surrogate" in error["message"]


def test_non_json_content_type_is_415_and_json_variants_pass(client):
    import json

    body = json.dumps(chat())
    r = client.post("/v1/chat/completions", content=body, headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    assert "application/json" in r.json()["error"]["message"]
    ok = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 200, ok.text


def test_failure_on_admission_fails_only_that_request(client, monkeypatch):
    good = chat("healthy", max_tokens=10)
    expected = client.post("/v1/chat/completions", json=good).json()["choices"][0]["message"]["content"]
    real = sampling.SamplingParams.streams

    def streams(self):
        if self.seed == 13:
            raise OverflowError("injected: cannot seed")
        return real(self)

    monkeypatch.setattr(sampling.SamplingParams, "streams", streams)

    async def main():
        async with httpx.AsyncClient(base_url=client.base_url, timeout=60) as c:
            return await asyncio.gather(
                c.post("/v1/chat/completions", json=good),
                c.post("/v1/chat/completions", json=chat(temperature=0.7, seed=13)),
                c.post("/v1/chat/completions", json={**good, "stream": False}),
            )

    ok1, bad, ok2 = asyncio.run(main())
    assert bad.status_code == 500 and "injected" in bad.json()["error"]["message"]
    for r in (ok1, ok2):
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == expected
    health = wait_idle(client)
    assert health["engine"] == "ok"
    after = client.post("/v1/chat/completions", json=good)  # the engine thread survived
    assert after.status_code == 200 and after.json()["choices"][0]["message"]["content"] == expected


def test_dead_engine_answers_open_requests_and_health_says_so():
    with RunningServer(no_eos_interpreter(), ServeConfig(max_tokens_limit=400, default_max_tokens=16)) as s:
        engine = s.app.state.scheduler.engine
        steps = {"n": 0}
        real_step = engine.step

        def dying_step():
            steps["n"] += 1
            if steps["n"] > 3:
                raise SystemExit("injected: the worker loop itself breaks")  # not an Exception: escapes step()
            return real_step()

        engine.step = dying_step
        with httpx.Client(base_url=s.url, timeout=30) as c:
            t0 = time.monotonic()
            r = c.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 300})
            assert r.status_code == 503 and "engine stopped" in r.json()["error"]["message"], r.text
            assert time.monotonic() - t0 < 20
            health = c.get("/health")
            assert health.status_code == 503 and health.json()["status"] == "dead"
            assert "injected" in health.json()["error"] and health.json()["in_flight"] == 0
            r = c.post("/v1/completions", json={"model": MODEL, "prompt": "y", "max_tokens": 4})
            assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable"


def test_stuck_step_shows_in_health():
    config = ServeConfig(max_tokens_limit=64, default_max_tokens=16, stuck_after_s=0.3)
    with RunningServer(no_eos_interpreter(), config) as s:
        engine = s.app.state.scheduler.engine
        real_step = engine.step
        gate = threading.Event()

        def slow_step():
            gate.wait(timeout=20)  # hangs until the test has looked at /health
            return real_step()

        engine.step = slow_step
        with httpx.Client(base_url=s.url, timeout=30) as c:
            done: dict = {}
            worker = threading.Thread(target=lambda: done.update(
                r=c.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 3})))
            worker.start()
            for _ in range(100):
                health = c.get("/health")
                if health.json()["status"] == "stuck":
                    break
                time.sleep(0.05)
            assert health.status_code == 503 and health.json()["status"] == "stuck", health.text
            gate.set()
            engine.step = real_step
            worker.join(timeout=30)
            assert done["r"].status_code == 200
            assert c.get("/health").json()["status"] == "ok"


SERVER_SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from serve_helpers import no_eos_interpreter
    from pasta.serve.app import create_app
    from pasta.serve.cli import uvicorn_config
    from pasta.serve.config import ServeConfig
    import uvicorn

    config = ServeConfig(port=int(sys.argv[1]), max_tokens_limit=64, default_max_tokens=16, shutdown_timeout_s=1.0)
    app = create_app(no_eos_interpreter(), config)
    app.state.scheduler.engine.step = lambda: time.sleep(600)  # every step hangs
    uvicorn.Server(uvicorn_config(app, config, log_level="error")).run()
""")


def test_sigterm_exits_within_bound_while_a_step_hangs():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, str(port), str(TESTS)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                httpx.get(url + "/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        result: dict = {}

        def request():
            try:
                result["r"] = httpx.post(url + "/v1/completions", timeout=60,
                                         json={"model": MODEL, "prompt": "x", "max_tokens": 8})
            except httpx.TransportError as exc:
                result["r"] = exc

        client = threading.Thread(target=request)
        client.start()
        for _ in range(100):
            if httpx.get(url + "/health", timeout=5).json()["in_flight"] == 1:
                break
            time.sleep(0.05)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        elapsed = time.monotonic() - t0
        client.join(timeout=30)
        # 1 s for open requests, 1 s for the engine, and start-up slack; without the bounds it never exits.
        assert elapsed < 10, elapsed
        r = result["r"]
        assert isinstance(r, httpx.TransportError) or r.status_code >= 500  # never a hang, never a fake answer
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
