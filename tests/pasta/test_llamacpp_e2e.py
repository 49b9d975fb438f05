"""The remote backend and the LLM annotator against llama.cpp's own OpenAI-compatible server (llama-cpp-python,
built from source by `scripts/setup.sh` into `.venv-llamacpp`), serving the embedded SmolLM2 GGUF. An engine no one
here wrote: its stop handling, usage fields, chat template and error bodies are whatever llama.cpp does.

Slow (a server start, a few hundred tokens on the CPU); CI runs it. Set PASTA_SKIP_LLAMACPP=1 to skip it where
llama-cpp-python cannot be built."""

from __future__ import annotations

import json
import os

import pytest

from pasta.backends.llamacpp import llama_server, llamacpp_python
from pasta.backends.openai import RemoteConfig, RemoteInterpreter
from pasta.models import embedded_gguf_path

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("PASTA_SKIP_LLAMACPP") == "1", reason="PASTA_SKIP_LLAMACPP=1"),
]


@pytest.fixture(scope="module")
def llama_server_url(tmp_path_factory):
    python = llamacpp_python()
    assert python.is_file(), (f"{python} is missing: `bash scripts/setup.sh --llamacpp` builds llama-cpp-python[server] into "
                              ".venv-llamacpp (or set PASTA_SKIP_LLAMACPP=1)")
    with llama_server(embedded_gguf_path(), alias="smollm2", log=tmp_path_factory.mktemp("llama") / "server.log") as url:
        yield url


def test_remote_backend_answers_through_llama_cpp(llama_server_url):
    remote = RemoteInterpreter(RemoteConfig(base_url=llama_server_url, max_new_tokens=48, max_thread_tokens=32))
    result = remote.generate("Give three tips for staying healthy.")
    assert result.text.strip() and result.stats.remote.requests >= 1
    assert 0 < result.stats.tokens <= 48 and result.stats.prompt_tokens > 0  # llama.cpp's usage was read
    again = RemoteInterpreter(RemoteConfig(base_url=llama_server_url, max_new_tokens=48)).generate(
        "Give three tips for staying healthy.", mode="sequential")
    assert again.text == result.text  # greedy, and the base model writes no tags: the same single request
    assert any("chat template" in w for w in result.stats.warnings)  # no tokenizer: said, not silently wrong
    from pasta.models import resolve_model_path

    templated = RemoteInterpreter(RemoteConfig(base_url=llama_server_url, max_new_tokens=8,
                                               tokenizer=str(resolve_model_path(None)[1]))).generate("Hi")
    assert templated.text.strip() and not any("chat template" in w for w in templated.stats.warnings)


def test_remote_backend_forks_on_a_real_server(llama_server_url):
    """A raw prompt that ends inside a Pasta program, so the real model's continuation is forced through the
    promise/async/sync protocol: the backend must stop at "/>", start a chunk request at "<async>" and splice it."""
    remote = RemoteInterpreter(RemoteConfig(base_url=llama_server_url, max_new_tokens=64, max_thread_tokens=24))
    prompt = ('Here are two tips:\n1. <promise topic="sleep" tokens="10"/><async>Sleep eight hours.</async>\n'
              '2. <promise topic="water" tokens="10"/><async>Drink water.</async>\n<sync/>\nAnd two more:\n'
              '1. <promise topic="walk" tokens="10"/>')
    result = remote.generate(prompt, chat=False)
    stats = result.stats
    assert stats.remote.requests >= 2, stats  # the main thread stopped at "/>" and went on; a chunk or more was asked for
    assert "<" not in result.text.replace("<br>", "")  # the plain answer carries no tag
    assert not any("cancel" in w for w in stats.warnings)


def test_llm_annotator_runs_against_llama_cpp(llama_server_url, tmp_path):
    from pasta.cli import main

    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps({"id": f"r{i}", "prompt": p, "response": r}) + "\n" for i, (p, r) in enumerate([
        ("Give two tips for sleeping well.", "1. Keep a regular schedule.\n2. Avoid screens before bed."),
        ("Name two colours.", "Red and blue."),
    ])))
    out = tmp_path / "annotated.jsonl"
    code = main(["annotate", "--annotator", "openai", "--base-url", llama_server_url, "--model", "smollm2",
                 "--source", str(source), "--out", str(out), "--concurrency", "2", "--max-tokens", "256",
                 "--no-progress"])
    rejects = tmp_path / "annotated.rejects.jsonl"
    done = [json.loads(line) for f in (out, rejects) if f.exists() for line in f.read_text().splitlines()]
    assert len(done) == 2  # every row answered: accepted, or rejected with a reason (a 135M annotator is weak)
    assert all(row.get("reason") or row.get("annotated") for row in done)
    assert not [r for r in done if r.get("reason") == "api_error"], done  # the protocol itself worked
    assert code in (0, 2)  # 2 only when nothing was accepted, which the CLI then says
