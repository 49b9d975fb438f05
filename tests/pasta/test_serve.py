"""`pasta serve` end to end over HTTP on loopback: every route, streaming and not, every bad input, 429,
disconnect mid-stream, a failing request among healthy ones, and isolation under concurrency."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from serve_helpers import RunningServer, no_eos_interpreter, wait_idle

from pasta.serve.config import ServeConfig

MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def interp():
    return no_eos_interpreter()


@pytest.fixture(scope="module")
def server(interp):
    with RunningServer(interp, ServeConfig(max_batch=4, max_queue=8, max_tokens_limit=400, default_max_tokens=16)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def sse_events(lines) -> list:
    """Parse an SSE body: every event is `data: ...` followed by a blank line; the last is [DONE]."""
    events = []
    for line in lines:
        if not line:
            continue
        assert line.startswith("data: "), line
        data = line[len("data: "):]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def stream(client, path, body) -> list:
    with client.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    assert raw.endswith("data: [DONE]\n\n")
    return sse_events(raw.split("\n"))


def chat_body(text="hello", **kw):
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 12, **kw}


# -- routes -------------------------------------------------------------------------------------------------------
def test_health_and_models(client):
    r = client.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == MODEL and models["data"][0]["owned_by"] == "pasta"


def test_chat_completion_and_default_model_name(client):
    r = client.post("/v1/chat/completions", json=chat_body())
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "chat.completion" and out["model"] == MODEL
    choice = out["choices"][0]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] == "length"
    usage = out["usage"]
    assert usage["completion_tokens"] == 12 and usage["total_tokens"] == usage["prompt_tokens"] + 12
    assert out["pasta"]["mode"] == "async" and out["pasta"]["steps"] >= 12
    again = client.post("/v1/chat/completions", json={**chat_body(), "model": "default"}).json()
    assert again["choices"][0]["message"]["content"] == choice["message"]["content"]  # greedy: same text


def test_chat_stream_matches_non_stream(client):
    whole = client.post("/v1/chat/completions", json=chat_body("stream me", max_tokens=20)).json()
    events = stream(client, "/v1/chat/completions", chat_body("stream me", max_tokens=20))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == whole["choices"][0]["message"]["content"]
    assert len([c for c in chunks if c["choices"][0]["delta"].get("content")]) > 1  # streamed in pieces
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] == "length"
    assert last["usage"] == whole["usage"] and last["pasta"]["threads"] == 0


def test_completions_stream_and_not(client):
    body = {"model": MODEL, "prompt": "Once upon", "max_tokens": 10}
    out = client.post("/v1/completions", json=body).json()
    assert out["object"] == "text_completion" and out["usage"]["completion_tokens"] == 10
    events = stream(client, "/v1/completions", body)
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == out["choices"][0]["text"]
    ids = client.post("/v1/completions", json={**body, "prompt": [256, 79, 110]}).json()  # token ids
    assert ids["usage"]["prompt_tokens"] == 3


def test_stop_strings_stream_and_not(client):
    body = {"model": MODEL, "prompt": "stop test", "max_tokens": 30}
    full = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    stop = full[6:9]
    expected = full[: full.find(stop)]
    out = client.post("/v1/completions", json={**body, "stop": [stop, "\x00never"]}).json()
    assert out["choices"][0]["text"] == expected and out["choices"][0]["finish_reason"] == "stop"
    events = stream(client, "/v1/completions", {**body, "stop": stop})
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == expected


def test_sequential_field_and_annotated(client):
    out = client.post("/v1/chat/completions", json=chat_body(pasta={"mode": "sequential", "annotated": True})).json()
    assert out["pasta"]["mode"] == "sequential"
    assert out["choices"][0]["message"]["content"] == out["pasta"]["annotated"]


def test_penalties_reach_the_decoder(client, interp, monkeypatch):
    """A request's presence/frequency_penalty become its DecodeLimits (unset: None, the model's recorded value)."""
    started = []
    start = interp.start
    monkeypatch.setattr(interp, "start", lambda *a, **kw: started.append(start(*a, **kw)) or started[-1])
    body = chat_body("hello", presence_penalty=1.5, frequency_penalty=-0.5)
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    assert client.post("/v1/chat/completions", json=chat_body("hello")).status_code == 200
    assert [(d.limits.presence_penalty, d.limits.frequency_penalty) for d in started] == [(1.5, -0.5), (0.0, 0.0)]


# -- bad input ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path,body,param", [
    ("/v1/chat/completions", b'{"model": "tiny-llama", "messages": [', None),  # malformed JSON
    ("/v1/chat/completions", b'[1, 2]', None),  # not an object
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "bogus": 1}, "bogus"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"},
     "max_tokens"),
    ("/v1/chat/completions", {"model": MODEL, "messages": "hi"}, "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": []}, "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, "model"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 401},
     "max_tokens"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
     "max_tokens"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": -1},
     "temperature"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "presence_penalty": 2.5},
     "presence_penalty"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": "yes"},
     "stream"),
    ("/v1/completions", {"model": MODEL, "prompt": 42}, "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": [999999]}, "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "stop": ""}, "stop"),
])
def test_bad_input_is_400_with_openai_error(client, path, body, param):
    if isinstance(body, bytes):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] == param


def test_unknown_model_and_route(client):
    r = client.post("/v1/chat/completions", json={**chat_body(), "model": "gpt-9"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()


# -- load, faults, isolation --------------------------------------------------------------------------------------
def test_queue_bound_gives_429():
    with RunningServer(no_eos_interpreter(), ServeConfig(max_batch=1, max_queue=1, max_tokens_limit=400)) as s:
        async def main():
            async with httpx.AsyncClient(base_url=s.url, timeout=60) as c:
                body = {"model": MODEL, "prompt": "busy", "max_tokens": 300}
                return await asyncio.gather(*[c.post("/v1/completions", json=body) for _ in range(5)])

        responses = asyncio.run(main())
        codes = sorted(r.status_code for r in responses)
        assert codes.count(200) >= 1 and codes.count(429) >= 1 and set(codes) <= {200, 429}, codes
        limited = next(r for r in responses if r.status_code == 429)
        assert limited.json()["error"]["code"] == "rate_limit_exceeded" and limited.headers["retry-after"]


def test_disconnect_mid_stream_cancels_and_frees(client, server):
    before = wait_idle(client)
    with httpx.Client(base_url=server.url, timeout=60) as c:
        with c.stream("POST", "/v1/completions", json={"model": MODEL, "prompt": "long", "max_tokens": 400,
                                                       "stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
                    break  # got real text: now hang up
    health = wait_idle(client)
    assert health["cancelled"] == before["cancelled"] + 1
    assert health["completed"] == before["completed"]


def test_failing_request_does_not_disturb_others(client, interp, monkeypatch):
    original = interp.start

    def start(ids, **kw):
        decoding = original(ids, **kw)
        if bytes(t for t in ids if t < 256).find(b"FAIL") >= 0:
            def broken(sampled):
                raise RuntimeError("injected fault")
            decoding.advance = broken
        return decoding

    good = chat_body("healthy", max_tokens=15)
    expected = client.post("/v1/chat/completions", json=good).json()["choices"][0]["message"]["content"]
    monkeypatch.setattr(interp, "start", start)

    async def main():
        async with httpx.AsyncClient(base_url=client.base_url, timeout=60) as c:
            return await asyncio.gather(
                c.post("/v1/chat/completions", json=good),
                c.post("/v1/chat/completions", json=chat_body("FAIL now")),
                c.post("/v1/chat/completions", json=good),
            )

    ok1, bad, ok2 = asyncio.run(main())
    assert bad.status_code == 500 and "injected fault" in bad.json()["error"]["message"]
    for r in (ok1, ok2):
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == expected
    wait_idle(client)


def test_isolation_alone_vs_concurrent(client):
    bodies = [chat_body(f"question number {i} " * (i + 1), max_tokens=10 + 3 * i) for i in range(5)]
    bodies.append(chat_body("sampled", max_tokens=20, temperature=0.9, top_p=0.95, seed=11))
    bodies.append({"model": MODEL, "prompt": "raw completion", "max_tokens": 14})
    paths = ["/v1/chat/completions"] * 6 + ["/v1/completions"]

    def text(out):
        choice = out["choices"][0]
        return choice["message"]["content"] if "message" in choice else choice["text"]

    alone = [text(client.post(p, json=b).json()) for p, b in zip(paths, bodies)]

    async def main():
        async with httpx.AsyncClient(base_url=client.base_url, timeout=60) as c:
            # 7 at a time: within the server's bound (4 running + 8 queued), so none is refused.
            plain = await asyncio.gather(*[c.post(p, json=b) for p, b in zip(paths, bodies)])
            streamed = await asyncio.gather(*[_astream(c, p, b) for p, b in zip(paths, bodies)])
            return plain, streamed

    plain, streamed = asyncio.run(main())
    assert [text(r.json()) for r in plain] == alone
    assert streamed == alone


async def _astream(c, path, body) -> str:
    out = []
    async with c.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                choice = json.loads(line[6:])["choices"][0]
                out.append(choice["delta"].get("content") or "" if "delta" in choice else choice["text"])
    return "".join(out)
