"""OpenAIClient against a real loopback HTTP server (tests/openai_stub.py)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from openai_stub import OpenAIStub, Reply, chat_reply, completion_reply

from pasta.openai_client import OpenAIClient, OpenAIError, RetryPolicy, completion_text, message_text

FAST = dict(backoff=0.01, max_backoff=0.05)  # retries without slowing the suite


def test_chat_sends_model_messages_and_passthrough_params():
    with OpenAIStub(lambda req: chat_reply("hi there", logprobs={"content": []})) as stub:
        client = OpenAIClient(stub.base_url, api_key="sk-test", **FAST)
        reply = client.chat([{"role": "user", "content": "hello"}], "m1", temperature=0.0, logprobs=True,
                            top_logprobs=3, max_tokens=None)
        assert message_text(reply) == "hi there"
        assert reply["choices"][0]["logprobs"] == {"content": []}
        (req,) = stub.requests
        assert req.path == "/v1/chat/completions" and req.method == "POST"
        assert req.json == {"model": "m1", "messages": [{"role": "user", "content": "hello"}], "temperature": 0.0,
                            "logprobs": True, "top_logprobs": 3}  # None dropped, the rest passed through
        assert req.headers["authorization"] == "Bearer sk-test"


def test_completions_and_models_and_bare_host_url(monkeypatch):
    monkeypatch.setenv("MY_KEY", "from-env")
    with OpenAIStub() as stub:  # default answers: echo + model list
        client = OpenAIClient(f"http://127.0.0.1:{stub.port}", api_key_env="MY_KEY", **FAST)
        assert client.base_url.endswith("/v1")
        assert completion_text(client.completions("abc", "m", echo=False)) == "echo: abc"
        assert client.models() == ["stub-model"]
        assert stub.requests[0].path == "/v1/completions"
        assert stub.requests[0].json["echo"] is False
        assert stub.requests[0].headers["authorization"] == "Bearer from-env"


def test_no_key_sends_no_authorization(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with OpenAIStub() as stub:
        OpenAIClient(stub.base_url).models()
        assert "authorization" not in stub.requests[0].headers


@pytest.mark.parametrize("failure", [Reply.error(429), Reply.error(500), Reply.error(503), Reply.malformed(),
                                     Reply(drop=True)])
def test_retries_transient_failures_then_succeeds(failure):
    with OpenAIStub([failure, failure, chat_reply("ok")]) as stub:
        client = OpenAIClient(stub.base_url, max_retries=3, **FAST)
        assert message_text(client.chat([], "m")) == "ok"
        assert len(stub.requests) == 3


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_client_errors_are_not_retried(status):
    with OpenAIStub([Reply.error(status, "bad request body"), chat_reply("never")]) as stub:
        client = OpenAIClient(stub.base_url, max_retries=3, **FAST)
        with pytest.raises(OpenAIError) as err:
            client.chat([], "m")
        assert err.value.status == status
        assert "bad request body" in err.value.body
        assert len(stub.requests) == 1


def test_gives_up_after_max_retries_with_status_and_body():
    with OpenAIStub(lambda req: Reply.error(500, "boom")) as stub:
        client = OpenAIClient(stub.base_url, max_retries=2, **FAST)
        with pytest.raises(OpenAIError) as err:
            client.chat([], "m")
        assert err.value.status == 500 and "boom" in err.value.body and err.value.retryable
        assert len(stub.requests) == 3  # first try + 2 retries


def test_connection_refused_is_an_openai_error():
    with OpenAIStub() as stub:
        url = stub.base_url
    client = OpenAIClient(url, max_retries=1, **FAST)  # server is gone
    with pytest.raises(OpenAIError) as err:
        client.models()
    assert err.value.status is None


def test_timeout_then_success():
    with OpenAIStub([Reply(json=chat_reply("late"), delay=1.0), chat_reply("fast")]) as stub:
        client = OpenAIClient(stub.base_url, timeout=0.2, max_retries=2, **FAST)
        assert message_text(client.chat([], "m")) == "fast"


def test_retry_after_header_is_honoured():
    with OpenAIStub([Reply.error(429, headers={"Retry-After": "0.3"}), chat_reply("ok")]) as stub:
        client = OpenAIClient(stub.base_url, max_retries=1, **FAST)
        t0 = time.perf_counter()
        client.chat([], "m")
        assert time.perf_counter() - t0 >= 0.3


def test_async_requests_run_concurrently_and_retry():
    lock = threading.Lock()
    state = {"calls": 0, "inflight": 0, "max_inflight": 0}

    def handler(req):
        with lock:
            state["calls"] += 1
            if state["calls"] == 1:
                return Reply.error(429)
            state["inflight"] += 1
            state["max_inflight"] = max(state["max_inflight"], state["inflight"])
        time.sleep(0.3)  # hold the request so concurrent ones overlap on the server
        with lock:
            state["inflight"] -= 1
        return chat_reply(req.last_user_text.upper())

    with OpenAIStub(handler) as stub:
        client = OpenAIClient(stub.base_url, max_retries=2, **FAST)

        async def main():
            try:
                return await asyncio.gather(*(client.achat([{"role": "user", "content": f"q{i}"}], "m")
                                              for i in range(8)))
            finally:
                await client.aclose()

        replies = asyncio.run(main())
    assert sorted(message_text(r) for r in replies) == sorted(f"Q{i}" for i in range(8))
    assert len(stub.requests) == 9  # one 429 retried
    assert state["max_inflight"] >= 4  # sequential requests would never overlap


def test_async_completions_and_reuse_across_event_loops():
    with OpenAIStub([completion_reply("a"), completion_reply("b")]) as stub:
        client = OpenAIClient(stub.base_url, **FAST)
        assert completion_text(asyncio.run(client.acompletions("x", "m"))) == "a"
        assert completion_text(asyncio.run(client.acompletions("y", "m"))) == "b"  # new loop, new connections


def test_config_validation():
    with pytest.raises(ValueError):
        OpenAIClient("localhost:8000")
    with pytest.raises(ValueError):
        OpenAIClient("http://x", timeout=0)
    with pytest.raises(ValueError):
        RetryPolicy(max_retries=-1)
    assert "sk-secret" not in repr(OpenAIClient("http://x/v1", api_key="sk-secret"))


def test_backoff_grows_and_is_jittered():
    policy = RetryPolicy(backoff=1.0, max_backoff=8.0)
    delays = [policy.delay(k) for k in range(5)]
    for k, d in enumerate(delays):
        base = min(8.0, 2.0**k)
        assert base / 2 <= d <= base
    assert policy.delay(0, retry_after=5.0) >= 5.0
