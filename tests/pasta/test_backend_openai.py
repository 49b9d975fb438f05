"""The remote backend: the fork/sync protocol over a scripted OpenAI server (real HTTP on loopback), and end to
end against a real `pasta serve --sequential` on loopback."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import httpx
import pytest
from serve_helpers import RunningServer, no_eos_interpreter

sys.path.insert(0, str(Path(__file__).parents[1]))
from openai_stub import OpenAIStub, Reply, StubRequest  # noqa: E402

from pasta.backends.openai import RemoteConfig, RemoteInterpreter  # noqa: E402
from pasta.serve.config import ServeConfig  # noqa: E402

P = "Q: tips?\nA: "
A = 'Intro <promise topic="a" tokens="5"/>'
B = ' and <promise topic="b"/>'
CA = "alpha body, long enough to outlast the main thread"  # so the sync must wait for it


def _completion(text, stop_reason=None, finish="stop"):
    choice = {"index": 0, "text": text, "finish_reason": finish}
    if stop_reason is not False:
        choice["stop_reason"] = stop_reason
    return {"choices": [choice], "usage": {"prompt_tokens": 3, "completion_tokens": max(1, len(text) // 4)}}


def scripted(with_stop_reason: bool, gate: threading.Event | None = None):
    """Main thread: Intro, promise a, promise b, sync, end. Chunks: CA (long), 'beta body'."""
    sr = (lambda s: s) if with_stop_reason else (lambda s: False)
    main = {
        P: ('Intro <promise topic="a" tokens="5"', sr("/>")),
        P + A: (' and <promise topic="b"', sr("/>")),
        P + A + B: (" wait<sync", sr("/>")),
        P + A + f"<async>{CA}</async>" + B + "<async>beta body</async> wait<sync/>": (" the end.", None),
    }
    chunks = {P + A + "<async>": CA, P + A + B + "<async>": "beta body"}

    def handler(req: StubRequest):
        if req.endpoint == "models":
            return {"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "vllm"}]}
        body = req.json
        prompt = body["prompt"]
        assert "pasta" not in body  # no extension fields for a server that is not a Pasta server
        if prompt in chunks:
            assert body["stop"] == ["</async>", "/>"]  # a chunk that writes a promise is closed (chunk_promise)
            if gate is not None and prompt.endswith(A + "<async>"):
                assert gate.wait(10)  # chunk a answers only after the main thread moved on: they overlap
            return _completion(chunks[prompt], sr("</async>"))
        assert body["stop"] == ["/>"], body
        if prompt == P + A + B and gate is not None:
            gate.set()
        if prompt not in main:
            return Reply.error(500, f"unexpected prompt {prompt!r}")
        text, reason = main[prompt]
        return _completion(text, reason)

    return handler


@pytest.mark.parametrize("with_stop_reason", [True, False])
def test_fork_sync_protocol(with_stop_reason):
    gate = threading.Event()
    with OpenAIStub(scripted(with_stop_reason, gate)) as stub:
        remote = RemoteInterpreter(RemoteConfig(base_url=stub.base_url, max_new_tokens=200))
        result = remote.generate(P, chat=False)
        assert result.annotated == (A + f"<async>{CA}</async>" + B + "<async>beta body</async> wait<sync/> the end.")
        assert result.text == f"Intro {CA} and beta body wait the end."
        stats = result.stats
        assert stats.threads == 2 and stats.remote.requests == 6 and stats.remote.peak_concurrency >= 2
        # The interpreter's own RunStats: tokens per thread from each request's usage, and the critical path: main
        # requests in order, each chunk from its fork, the sync waiting for the slower chunk.
        n = lambda text: max(1, len(text) // 4)  # noqa: E731 - the stub's completion_tokens
        intro, second, wait, end = (n('Intro <promise topic="a" tokens="5"'), n(' and <promise topic="b"'),
                                    n(" wait<sync"), n(" the end."))
        alpha, beta = n(CA), n("beta body")
        assert intro + alpha > intro + second + wait  # the sync waits for chunk a: the critical path shows it
        assert stats.tokens_per_thread == [intro + second + wait + end, alpha, beta]
        assert stats.tokens == sum(stats.tokens_per_thread) and stats.mode == "async"
        assert stats.critical_path == stats.steps == max(intro + second + wait, intro + alpha, intro + second + beta) + end
        assert stats.theoretical_speedup == pytest.approx(stats.tokens / stats.steps)
        assert [t.topic for t in stats.timeline[1:]] == ["a", "b"] and stats.timeline[1].predicted_tokens == 5
        assert stats.prompt_tokens == 3 and stats.finish_reason == "eos"
        assert result.to_dict()["stats"]["remote"]["requests"] == 6
        # The main thread's request after promise a does not contain chunk a (it is not joined yet).
        prompts = [r.json["prompt"] for r in stub.requests_to("completions")]
        assert P + A + B in prompts


def test_sequential_mode_and_server_error():
    with OpenAIStub(scripted(True)) as stub:
        result = RemoteInterpreter(RemoteConfig(base_url=stub.base_url)).generate(P, chat=False, mode="sequential")
        assert result.text == f"Intro {CA} and beta body wait the end."
        assert result.stats.remote.peak_concurrency == 1
        assert result.stats.steps == result.stats.tokens  # sequential: every token is a step
    with OpenAIStub(lambda req: Reply.error(400, "bad") if req.endpoint == "completions" else None) as stub:
        with pytest.raises(Exception, match="400"):
            RemoteInterpreter(RemoteConfig(base_url=stub.base_url, model="m")).generate("hi")


def test_end_to_end_against_pasta_serve_sequential():
    with RunningServer(no_eos_interpreter(), ServeConfig(sequential=True, max_tokens_limit=64, default_max_tokens=16)) as server:
        remote = RemoteInterpreter(RemoteConfig(base_url=server.url, max_new_tokens=24))
        result = remote.generate("hello there", chat=False)
        direct = httpx.post(f"{server.url}/v1/completions", json={
            "model": "default", "prompt": "hello there", "max_tokens": 24, "stop": ["/>"],
            "pasta": {"annotated": True}}).json()
        assert direct["pasta"]["mode"] == "sequential"
        assert result.annotated == direct["choices"][0]["text"]  # the backend reads the text as written
        assert result.stats.remote.requests == 1 and result.stats.tokens == 24
        chat = remote.generate([{"role": "user", "content": "hi"}])
        assert chat.stats.tokens == 24 and isinstance(chat.text, str)


def test_remote_config_validates_through_the_interpreters_config_types():
    config = RemoteConfig(base_url="http://unused", max_new_tokens=64, max_thread_tokens=16, max_threads=2,
                          temperature=0.7, top_p=0.9, seed=5)
    assert (config.limits.max_new_tokens, config.limits.max_thread_tokens, config.limits.max_threads) == (64, 16, 2)
    assert (config.sampling.temperature, config.sampling.top_p, config.sampling.seed) == (0.7, 0.9, 5)
    for bad, match in (({"max_threads": 0}, "max_threads"), ({"temperature": -1.0}, "temperature"),
                       ({"top_p": 0.0}, "top_p"), ({"seed": 2**70}, "seed")):
        with pytest.raises(ValueError, match=match):
            RemoteConfig(base_url="http://unused", **bad)


def test_penalties_are_refused_for_the_remote_backend(capsys):
    """A remote server's presence_penalty counts every token of the whole text: ours is per thread, tags exempt.
    Asking for it with --backend openai is a clear error, not a silent no-op."""
    from pasta.cli import main

    assert main(["generate", "hi", "--backend", "openai", "--base-url", "http://unused/v1",
                 "--presence-penalty", "0.5"]) == 2
    assert "--presence-penalty: our penalties apply to local decoding only" in capsys.readouterr().err
